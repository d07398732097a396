// A real OpenID Provider (npm `oidc-provider`) on loopback, for ztee-server's integration tests.
// Clients use the client credentials grant; access tokens are RS256 JWTs for the resource
// (audience) they ask for, carrying `tenant` and `realm_access.roles` claims.
//
// Environment: PORT (0 = any), KEY_FILE (a private RSA JWK; generated when absent, so two
// providers can share a signing key). Prints `READY <issuer>` on stdout when listening.
import { createPrivateKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const keyFile = process.env.KEY_FILE;
let jwk;
if (keyFile && existsSync(keyFile)) {
  jwk = JSON.parse(readFileSync(keyFile, 'utf8'));
} else {
  // The key leaves the generator as PEM and is re-imported before the JWK export: Node 20 can
  // deadlock when a garbage collection during `export({ format: 'jwk' })` of a freshly generated
  // key object destroys the generator job, which takes the same key's lock.
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const exported = createPrivateKey(privateKey).export({ format: 'jwk' });
  jwk = { ...exported, kid: randomUUID(), alg: 'RS256', use: 'sig' };
  if (keyFile) writeFileSync(keyFile, JSON.stringify(jwk), { mode: 0o600 });
}

// Client id -> identity it represents.
const identities = {
  'agent-acme': { tenant: 'acme', roles: ['agent'] },
  'agent-globex': { tenant: 'globex', roles: ['agent'] },
  'auditor-acme': { tenant: 'acme', roles: ['auditor'] },
  'short-lived': { tenant: 'acme', roles: ['agent'] },
  'no-tenant': { roles: ['agent'] },
  // Stands for a person who signed in with a password and a one-time code (RFC 8176 `amr`).
  'person-mfa': { tenant: 'acme', roles: ['agent'], amr: ['pwd', 'otp'] },
  'person-password-only': { tenant: 'acme', roles: ['agent'], amr: ['pwd'] },
};

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: Object.keys(identities).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  features: {
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:ztee',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'api',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: ctx.oidc.client?.clientId === 'short-lived' ? 2 : 600,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => {
    const who = identities[token.clientId] || {};
    const claims = { realm_access: { roles: who.roles || [] } };
    if (who.tenant) claims.tenant = who.tenant;
    if (who.amr) claims.amr = who.amr;
    return claims;
  },
});
server.on('request', provider.callback());
console.log(`READY ${issuer}`);
