//! The authentication stage: `Authorization: Bearer <token>` -> [`Principal`], then the
//! per-principal rate limit. Handlers take a [`Caller`] argument, so a handler that forgets
//! authentication does not compile into the API by accident.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::apikey;
use crate::audit::AuditSink;
use crate::error::ActionError;
use crate::principal::{Permission, Principal};
use crate::request_id::RequestId;
use crate::state::AppState;

/// An authenticated, rate-checked caller, with what the audit trail needs about the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: RequestId,
    pub origin_ip: Option<IpAddr>,
    /// When the credential stops being valid (an OIDC token's `exp`, seconds since the Unix
    /// epoch); `None` for API keys, which are valid until revoked. A request held for approval
    /// never outlives it.
    pub credential_expires_at: Option<u64>,
    /// Where a refused permission is recorded (PCI DSS 10.2.1.4, invalid access attempts).
    denials: Option<DenialTrail>,
}

/// The audit sink a caller's refused permissions go to.
#[derive(Clone)]
struct DenialTrail(Arc<dyn AuditSink>);

impl std::fmt::Debug for DenialTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DenialTrail")
    }
}

impl Caller {
    /// A caller whose principal was established another way than the `Authorization` header
    /// (the named approver of a signed approval link, looked up in the key store).
    pub fn resolved(
        principal: Principal,
        extensions: &Extensions,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        let (request_id, origin_ip) = request_context(extensions);
        Self {
            principal,
            request_id,
            origin_ip,
            credential_expires_at: None,
            denials: Some(DenialTrail(audit)),
        }
    }

    /// The requester of a held request parked by an earlier process, as it was then (its
    /// credential is checked again before the request runs).
    pub fn restored(
        principal: Principal,
        request_id: &str,
        origin_ip: Option<IpAddr>,
        credential_expires_at: Option<u64>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            principal,
            request_id: RequestId::from_caller(request_id).unwrap_or_else(RequestId::generate),
            origin_ip,
            credential_expires_at,
            denials: Some(DenialTrail(audit)),
        }
    }

    /// The operator at a terminal: no network peer, a fresh request id, no expiring credential.
    pub fn local(principal: Principal) -> Self {
        Self {
            principal,
            request_id: RequestId::generate(),
            origin_ip: None,
            credential_expires_at: None,
            denials: None,
        }
    }

    /// This caller with another principal (the requester looked up again), same request.
    pub fn with_principal(&self, principal: Principal) -> Self {
        Self {
            principal,
            ..self.clone()
        }
    }

    /// Fails with 403 naming the missing permission, and records the refusal as an
    /// `authz.denied` event (the permission as its resource; never request content). The record
    /// is written in the background: the caller is refused whether or not it lands, and the
    /// per-principal rate limit bounds how many a caller can cause.
    pub fn require(&self, permission: Permission) -> Result<(), ActionError> {
        let refused = self.principal.require(permission);
        if refused.is_err() {
            self.record_denial(permission);
        }
        refused
    }

    fn record_denial(&self, permission: Permission) {
        let Some(DenialTrail(sink)) = &self.denials else {
            return;
        };
        let event = crate::audit::event(
            ztee_audit::EventType::AuthzDenied,
            ztee_audit::Outcome::Denied,
            crate::audit::audit_principal(&self.principal),
            self.request_id.as_str(),
            self.origin_ip,
            Some(&format!("permission/{permission}")),
        );
        let sink = sink.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = sink.append(event).await {
                    tracing::error!(error = %e, "recording a refused permission");
                }
            });
        }
    }
}

/// The request id the request-id layer assigned and the peer address.
fn request_context(extensions: &Extensions) -> (RequestId, Option<IpAddr>) {
    let request_id = extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let origin_ip = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    (request_id, origin_ip)
}

/// A refusal of authentication: 401 with a `WWW-Authenticate` challenge (RFC 6750).
pub struct AuthRejection(pub(crate) ActionError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let unauthenticated = self.0.kind == crate::error::ErrorKind::Unauthenticated;
        let mut response = self.0.into_response();
        if unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ztee\""),
            );
        }
        response
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts);
        authenticate(parts, state, token).await
    }
}

/// The caller holding `token` (an API key or an OIDC token), as every door establishes it: a
/// refused credential is counted, recorded per address and answered 401; an accepted one is
/// held to the principal's rate limit. `token` is the door's reading of its credential header,
/// or the refusal of that header.
pub(crate) async fn authenticate(
    parts: &Parts,
    state: &Arc<AppState>,
    token: Result<&str, (&'static str, ActionError)>,
) -> Result<Caller, AuthRejection> {
    let authenticated = match token {
        Ok(token) => principal_of(state, token).await,
        Err(refusal) => Err(refusal),
    };
    let (principal, credential_expires_at) = match authenticated {
        Ok(authenticated) => authenticated,
        Err((reason, err)) => {
            let (request_id, origin_ip) = request_context(&parts.extensions);
            state.metrics.auth_failure(reason);
            // The route template, never the raw path (which may hold anything, card numbers
            // included); recorded per address, reason and interval, not per request.
            let route = parts
                .extensions
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            crate::source_guard::auth_failed(state, &request_id, origin_ip, reason, route).await;
            return Err(AuthRejection(err));
        }
    };
    caller_for(parts, state, principal, credential_expires_at)
}

/// The caller for a principal a door established itself (a sandbox access token), held to the
/// principal's rate limit like any other.
pub(crate) fn caller_for(
    parts: &Parts,
    state: &AppState,
    principal: Principal,
    credential_expires_at: Option<u64>,
) -> Result<Caller, AuthRejection> {
    let (request_id, origin_ip) = request_context(&parts.extensions);
    if let Err(retry_after) = state.limiter.check(&principal.subject) {
        state.metrics.rate_limited();
        return Err(AuthRejection(ActionError::too_many_requests(
            format!(
                "request rate limit of {}/s (burst {}) for this principal exceeded",
                state.config.quotas.requests_per_second, state.config.quotas.burst
            ),
            retry_after,
        )));
    }
    Ok(Caller {
        principal,
        request_id,
        origin_ip,
        credential_expires_at,
        denials: Some(DenialTrail(state.pipeline.audit.clone())),
    })
}

/// The token of `Authorization: Bearer <token>`, or why there is none.
fn bearer_token(parts: &Parts) -> Result<&str, (&'static str, ActionError)> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err((
            "missing_credentials",
            ActionError::unauthenticated(
                "missing Authorization header; send `Authorization: Bearer <OIDC token or API key>`",
            ),
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            (
                "malformed_authorization",
                ActionError::unauthenticated("Authorization header must be `Bearer <token>`"),
            )
        })
}

/// Returns the principal and when its credential expires, or a metrics reason and the error to
/// answer with. The error message does not say which check failed beyond the broad category:
/// that detail helps attackers more than callers, and it is in the audit trail and metrics.
async fn principal_of(
    state: &AppState,
    token: &str,
) -> Result<(Principal, Option<u64>), (&'static str, ActionError)> {
    if apikey::looks_like_api_key(token) {
        let store = state.store.clone();
        let token = token.to_owned();
        let verdict = store
            .run(move |s| apikey::authenticate(s, &token))
            .await
            .map_err(|e| ("store_error", ActionError::internal(e)))?;
        return verdict.map(|p| (p, None)).map_err(|rejection| {
            (
                rejection.as_str(),
                ActionError::unauthenticated("API key not accepted (unknown, revoked or wrong)"),
            )
        });
    }
    let Some(oidc) = &state.oidc else {
        return Err((
            "oidc_not_configured",
            ActionError::unauthenticated(
                "bearer token is not an API key and this server has no OIDC issuer configured",
            ),
        ));
    };
    let principal = oidc.validate(token).await.map_err(|rejection| {
        let reason = rejection.as_str();
        tracing::info!(reason, detail = %rejection, "token refused");
        let err = match rejection {
            crate::oidc::TokenRejection::KeysUnavailable(_) => {
                ActionError::unavailable("the identity provider's signing keys cannot be fetched")
            }
            other => ActionError::unauthenticated(format!("bearer token not accepted: {other}")),
        };
        (reason, err)
    })?;
    // The validator required and checked `exp`; reading it again from the validated token is
    // safe. A token whose `exp` cannot be read here is refused rather than held without limit.
    let expires_at = token_expiry(token).ok_or_else(|| {
        (
            "no_expiry",
            ActionError::unauthenticated(
                "bearer token not accepted: its exp claim is not readable",
            ),
        )
    })?;
    Ok((principal, Some(expires_at)))
}

/// The `exp` claim of a JWT whose signature and claims were already validated.
fn token_expiry(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("exp")? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine as _;

    fn jwt(claims: &serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn the_expiry_of_a_validated_token_is_read_from_its_exp_claim() {
        let exp = |c| super::token_expiry(&jwt(&c));
        assert_eq!(
            exp(serde_json::json!({"exp": 1_800_000_000u64})),
            Some(1_800_000_000)
        );
        assert_eq!(
            exp(serde_json::json!({"exp": 1_800_000_000.5})),
            Some(1_800_000_000)
        );
        assert_eq!(exp(serde_json::json!({"exp": "soon"})), None);
        assert_eq!(exp(serde_json::json!({"sub": "x"})), None);
        assert_eq!(super::token_expiry("not-a-jwt"), None);
    }
}
