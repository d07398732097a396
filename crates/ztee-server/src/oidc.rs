//! OIDC bearer-token validation against the issuer's published keys.
//!
//! Keys come from the issuer's discovery document (`/.well-known/openid-configuration` ->
//! `jwks_uri`), are cached, and are fetched again when a token names a key id the cache does not
//! hold (key rotation), at most once per `min_refresh_interval` so forged key ids cannot turn the
//! gateway into a load generator against the issuer. A failed fetch counts too: while the issuer
//! is down, one request a `min_refresh_interval` waits on it (at most `FETCH_TIMEOUT`), and every
//! other request is refused at once with that failure instead of queueing behind a fetch of its
//! own. Only asymmetric algorithms from the
//! configured allowlist are accepted: never `none`, never an HMAC algorithm (whose "secret" would
//! be the public key).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use ztee_state::config::OidcConfig;

use crate::principal::{validate_tenant, AuthMethod, Principal};

#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    #[error("oidc.algorithms: {0:?} is not an accepted algorithm; use asymmetric ones (RS*, PS*, ES256, ES384, EdDSA)")]
    Algorithm(String),
    #[error("oidc.algorithms is empty; list at least one algorithm, e.g. [\"RS256\"]")]
    NoAlgorithms,
    #[error("oidc.issuer {0:?} must be an https:// URL (http:// only for loopback addresses)")]
    Issuer(String),
    #[error("oidc.audience must not be empty")]
    Audience,
    #[error("OIDC HTTP client: {0}")]
    Client(String),
}

/// Why a token was refused. Callers get a generic 401; this goes to the audit trail and metrics.
#[derive(Debug, thiserror::Error)]
pub enum TokenRejection {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0} is not allowed")]
    Algorithm(String),
    #[error("token names no key the issuer publishes")]
    UnknownKey,
    #[error("token failed validation: {0}")]
    Invalid(String),
    #[error("token has no usable tenant claim `{0}`")]
    NoTenant(String),
    #[error("token has no subject")]
    NoSubject,
    #[error("token does not show multi-factor authentication (no accepted `amr` value)")]
    NoMfa,
    #[error("issuer keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl TokenRejection {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed_token",
            Self::Algorithm(_) => "token_algorithm_not_allowed",
            Self::UnknownKey => "unknown_token_key",
            Self::Invalid(_) => "invalid_token",
            Self::NoTenant(_) => "token_without_tenant",
            Self::NoSubject => "token_without_subject",
            Self::NoMfa => "token_without_mfa",
            Self::KeysUnavailable(_) => "issuer_keys_unavailable",
        }
    }
}

struct KeyCache {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    /// The last fetch that failed, and why: refused requests are answered from it until
    /// `min_refresh_interval` has passed.
    failed: Option<(Instant, String)>,
}

/// Longest wait for the issuer's discovery document or key set, each.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connection to the issuer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

struct CachedKey {
    key: DecodingKey,
    /// The algorithm the issuer pinned to this key, if it did.
    alg: Option<Algorithm>,
    family: jsonwebtoken::AlgorithmFamily,
}

pub struct OidcValidator {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// Serialises fetches so a burst of unknown kids causes one fetch, not many.
    fetch_lock: Mutex<()>,
}

impl OidcValidator {
    pub fn new(config: OidcConfig) -> Result<Self, OidcConfigError> {
        if config.algorithms.is_empty() {
            return Err(OidcConfigError::NoAlgorithms);
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|name| parse_allowed_algorithm(name))
            .collect::<Result<Vec<_>, _>>()?;
        if !issuer_url_ok(&config.issuer) {
            return Err(OidcConfigError::Issuer(config.issuer.clone()));
        }
        if config.audience.trim().is_empty() {
            return Err(OidcConfigError::Audience);
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcConfigError::Client(e.to_string()))?;
        Ok(Self {
            config,
            algorithms,
            http,
            cache: RwLock::new(KeyCache {
                keys: HashMap::new(),
                fetched_at: None,
                failed: None,
            }),
            fetch_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Fetches the issuer's keys now (at start-up, so a misconfigured issuer shows immediately).
    pub async fn prefetch(&self) -> Result<usize, TokenRejection> {
        self.refresh(true).await
    }

    /// Validates `token` and maps its claims to a principal.
    pub async fn validate(&self, token: &str) -> Result<Principal, TokenRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenRejection::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let claims = match self.try_decode(token, &kid, header.alg).await? {
            Some(claims) => claims,
            None => {
                self.refresh(false).await?;
                self.try_decode(token, &kid, header.alg)
                    .await?
                    .ok_or(TokenRejection::UnknownKey)?
            }
        };
        self.principal_from_claims(&claims)
    }

    /// `Ok(None)` when the key id is not in the cache.
    async fn try_decode(
        &self,
        token: &str,
        kid: &str,
        alg: Algorithm,
    ) -> Result<Option<serde_json::Value>, TokenRejection> {
        let cache = self.cache.read().await;
        let expired = cache
            .fetched_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(self.config.jwks_ttl_s));
        if expired {
            return Ok(None);
        }
        let Some(cached) = cache.keys.get(kid) else {
            return Ok(None);
        };
        if cached.alg.is_some_and(|pinned| pinned != alg) || alg.family() != cached.family {
            return Err(TokenRejection::Algorithm(format!(
                "{alg:?} (does not match the key's algorithm)"
            )));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.config.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &cached.key, &validation)
            .map_err(|e| TokenRejection::Invalid(describe(e.kind())))?;
        Ok(Some(data.claims))
    }

    /// Fetches discovery and JWKS. Without `force`, skips when the last attempt is too recent:
    /// after a success it answers from the cache, after a failure with that failure.
    async fn refresh(&self, force: bool) -> Result<usize, TokenRejection> {
        let _guard = self.fetch_lock.lock().await;
        {
            let cache = self.cache.read().await;
            let min = Duration::from_secs(self.config.min_refresh_interval_s);
            if !force {
                if let Some((at, why)) = &cache.failed {
                    if at.elapsed() < min {
                        return Err(TokenRejection::KeysUnavailable(why.clone()));
                    }
                }
                if cache.fetched_at.is_some_and(|t| t.elapsed() < min) {
                    return Ok(cache.keys.len());
                }
            }
        }
        let fetched = self.fetch_keys().await;
        let mut cache = self.cache.write().await;
        match fetched {
            Ok(keys) => {
                let count = keys.len();
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                cache.failed = None;
                tracing::info!(issuer = %self.config.issuer, keys = count, "fetched issuer signing keys");
                Ok(count)
            }
            Err(err) => {
                tracing::warn!(issuer = %self.config.issuer, error = %err, "cannot fetch issuer signing keys");
                let why = match &err {
                    TokenRejection::KeysUnavailable(why) => why.clone(),
                    other => other.to_string(),
                };
                cache.failed = Some((Instant::now(), why));
                Err(err)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, CachedKey>, TokenRejection> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            TokenRejection::KeysUnavailable(format!("{what}: {e}"))
        };
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .http
            .get(&discovery_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(&discovery_url, &e))?
            .json()
            .await
            .map_err(|e| unavailable(&discovery_url, &e))?;
        // OIDC Discovery 1.0 section 4.3: the document must name the issuer it was fetched for.
        if discovery.issuer != self.config.issuer {
            return Err(TokenRejection::KeysUnavailable(format!(
                "discovery document names issuer {:?}, expected {:?}",
                discovery.issuer, self.config.issuer
            )));
        }
        if !issuer_url_ok(&discovery.jwks_uri) {
            return Err(TokenRejection::KeysUnavailable(format!(
                "jwks_uri {:?} is not https",
                discovery.jwks_uri
            )));
        }
        let set: JwkSet = self
            .http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(&discovery.jwks_uri, &e))?
            .json()
            .await
            .map_err(|e| unavailable(&discovery.jwks_uri, &e))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => jsonwebtoken::AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => jsonwebtoken::AlgorithmFamily::Ed,
                // Symmetric keys have no place in a public key set; skip rather than trust.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "skipping an issuer key that does not parse");
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(key_algorithm_to_algorithm);
            keys.insert(
                jwk.common.key_id.clone().unwrap_or_default(),
                CachedKey { key, alg, family },
            );
        }
        Ok(keys)
    }

    fn principal_from_claims(
        &self,
        claims: &serde_json::Value,
    ) -> Result<Principal, TokenRejection> {
        let subject = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .or_else(|| claims.get("client_id").and_then(|v| v.as_str()))
            .filter(|s| !s.is_empty())
            .ok_or(TokenRejection::NoSubject)?;
        if !self.config.required_amr.is_empty() {
            let shown = claims
                .get("amr")
                .and_then(|v| v.as_array())
                .is_some_and(|methods| {
                    methods
                        .iter()
                        .filter_map(|m| m.as_str())
                        .any(|m| self.config.required_amr.iter().any(|r| r == m))
                });
            if !shown {
                return Err(TokenRejection::NoMfa);
            }
        }
        let tenant = claim_at(claims, &self.config.tenant_claim)
            .and_then(|v| v.as_str())
            .filter(|t| validate_tenant(t).is_ok())
            .ok_or_else(|| TokenRejection::NoTenant(self.config.tenant_claim.clone()))?;
        let roles = match claim_at(claims, &self.config.roles_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut principal = Principal::new(
            format!("oidc:{subject}"),
            tenant.to_owned(),
            roles,
            AuthMethod::Oidc,
        );
        let platform_admin = self
            .config
            .platform_admin_claim
            .as_deref()
            .and_then(|path| claim_at(claims, path))
            .is_some_and(|v| *v == serde_json::Value::Bool(true));
        if platform_admin {
            principal.grant_platform_admin();
        }
        Ok(principal)
    }
}

/// Walks a dot-separated path through nested JSON objects.
pub fn claim_at<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.')
        .try_fold(claims, |value, segment| value.get(segment))
}

fn parse_allowed_algorithm(name: &str) -> Result<Algorithm, OidcConfigError> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| OidcConfigError::Algorithm(name.to_owned()))?;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(OidcConfigError::Algorithm(name.to_owned()));
    }
    Ok(alg)
}

fn key_algorithm_to_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// https, or http to a loopback host (a local identity provider in development and tests).
fn issuer_url_ok(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "algorithm mismatch".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        toml::from_str("issuer = \"https://idp.example\"\naudience = \"ztee\"").unwrap()
    }

    #[test]
    fn hmac_and_none_are_refused_in_config() {
        for bad in ["HS256", "HS512", "none", "XY1"] {
            let mut c = config();
            c.algorithms = vec![bad.into()];
            assert!(
                matches!(OidcValidator::new(c), Err(OidcConfigError::Algorithm(_))),
                "{bad}"
            );
        }
        assert!(OidcValidator::new(config()).is_ok());
    }

    #[test]
    fn plain_http_issuers_only_on_loopback() {
        assert!(issuer_url_ok("http://127.0.0.1:8080/realms/x"));
        assert!(issuer_url_ok("http://localhost"));
        assert!(!issuer_url_ok("http://idp.example.com"));
        assert!(!issuer_url_ok("http://127.0.0.1.evil.example:80/"));
        assert!(!issuer_url_ok("ftp://127.0.0.1"));
    }

    #[test]
    fn claims_are_found_by_path() {
        let claims = serde_json::json!({"realm_access": {"roles": ["agent"]}, "t": "acme"});
        assert_eq!(claim_at(&claims, "realm_access.roles").unwrap()[0], "agent");
        assert!(claim_at(&claims, "realm_access.missing").is_none());
    }

    /// Review #12: a roles claim saying `admin` makes a tenant admin, one saying `platform-admin`
    /// grants nothing; only the operator's dedicated claim, when configured and `true`, makes a
    /// platform admin.
    #[test]
    fn platform_admin_comes_only_from_the_configured_claim() {
        use crate::principal::Permission;
        let claims = |roles: &[&str], flag: serde_json::Value| {
            serde_json::json!({
                "sub": "u", "tenant": "acme", "realm_access": {"roles": roles},
                "ztee_platform_admin": flag,
            })
        };
        let v = OidcValidator::new(config()).unwrap();
        let admin = v
            .principal_from_claims(&claims(&["admin"], serde_json::json!(true)))
            .unwrap();
        assert!(admin.has(Permission::Admin));
        assert!(admin.has(Permission::AuditRead));
        assert!(!admin.has(Permission::PlatformAdmin), "no claim configured");
        let claimed = v
            .principal_from_claims(&claims(
                &["platform-admin", "metrics"],
                serde_json::json!(true),
            ))
            .unwrap();
        assert!(claimed.permissions.is_empty(), "{:?}", claimed.permissions);

        let mut c = config();
        c.platform_admin_claim = Some("ztee_platform_admin".into());
        let v = OidcValidator::new(c).unwrap();
        let operator = v
            .principal_from_claims(&claims(&["agent"], serde_json::json!(true)))
            .unwrap();
        assert!(operator.has(Permission::PlatformAdmin));
        assert!(operator.has(Permission::MetricsRead));
        for not_true in [
            serde_json::json!(false),
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::Value::Null,
        ] {
            let p = v
                .principal_from_claims(&claims(&["admin"], not_true.clone()))
                .unwrap();
            assert!(!p.has(Permission::PlatformAdmin), "{not_true}");
        }
    }

    #[tokio::test]
    async fn a_token_signed_with_hs256_is_refused_before_any_key_lookup() {
        let v = OidcValidator::new(config()).unwrap();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(b"public key text"),
        )
        .unwrap();
        assert!(matches!(
            v.validate(&token).await,
            Err(TokenRejection::Algorithm(_))
        ));
        // An unsigned token: header {"alg":"none"} does not even parse as an allowed algorithm.
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert!(v.validate(none).await.is_err());
    }

    /// While the issuer does not answer, requests with an unknown key id do not queue behind one
    /// 10-second fetch each: one waits on the issuer, the others get its failure at once.
    #[tokio::test]
    async fn an_issuer_that_does_not_answer_costs_one_fetch_not_one_per_request() {
        // Accepts connections (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", silent.local_addr().unwrap());
        let config: OidcConfig = toml::from_str(&format!(
            "issuer = \"{issuer}\"\naudience = \"ztee\"\nmin_refresh_interval_s = 60"
        ))
        .unwrap();
        let validator = std::sync::Arc::new(OidcValidator::new(config).unwrap());
        // Well-formed RS256 tokens naming a key id the cache has never seen.
        let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6InVua25vd24ifQ.eyJzdWIiOiJ4In0.c2ln";
        let started = Instant::now();
        let requests: Vec<_> = (0..6)
            .map(|_| {
                let validator = validator.clone();
                tokio::spawn(async move { validator.validate(token).await })
            })
            .collect();
        for request in requests {
            let result = request.await.unwrap();
            assert!(
                matches!(result, Err(TokenRejection::KeysUnavailable(_))),
                "{result:?}"
            );
        }
        let waited = started.elapsed();
        assert!(
            waited < FETCH_TIMEOUT * 2,
            "six requests took {waited:?}: they queued behind a fetch each"
        );
        // Within the interval, the next request does not wait at all.
        let again = Instant::now();
        assert!(validator.validate(token).await.is_err());
        assert!(
            again.elapsed() < Duration::from_secs(1),
            "{:?}",
            again.elapsed()
        );
    }
}
