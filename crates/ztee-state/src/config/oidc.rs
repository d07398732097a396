//! `[oidc]`: the identity provider whose bearer tokens the gateway accepts.

use serde::Deserialize;

/// How tokens are checked and mapped to principals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL exactly as it appears in the `iss` claim, e.g. `https://idp.example.com/realms/ztee`.
    pub issuer: String,
    /// The audience ztee expects in `aud`.
    pub audience: String,
    /// Dot-separated path of the roles claim (an array of strings or a space-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Dot-separated path of the claim naming the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerated clock difference with the issuer, in seconds, for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// Cached keys are fetched again after this long even without an unknown `kid`.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_s: u64,
    /// Lower bound between two key fetches triggered by unknown key ids.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval_s: u64,
    /// Authentication methods (RFC 8176 `amr` values) of which a token must carry at least one,
    /// e.g. `["mfa", "otp", "hwk"]`: the evidence that the IdP enforced multi-factor
    /// authentication (PCI DSS 8.4.2). Empty (the default) accepts tokens without `amr`.
    #[serde(default)]
    pub required_amr: Vec<String>,
    /// Dot-separated path of a claim that makes the caller a platform admin (every tenant, the
    /// global secret store, metrics) when its value is the JSON boolean `true`, e.g.
    /// `ztee_platform_admin`. Unset (the default), no OIDC token is a platform admin, whatever
    /// its roles claim says: platform admins then use API keys with role `platform-admin`.
    #[serde(default)]
    pub platform_admin_claim: Option<String>,
}

fn default_roles_claim() -> String {
    "realm_access.roles".into()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_min_refresh() -> u64 {
    10
}
