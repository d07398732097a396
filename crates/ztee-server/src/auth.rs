//! The authentication stage: `Authorization: Bearer <token>` -> [`Principal`], then the
//! per-principal rate limit. Handlers take a [`Caller`] argument, so a handler that forgets
//! authentication does not compile into the API by accident.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use ztee_audit::{EventType, Outcome};

use crate::apikey;
use crate::audit;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::request_id::RequestId;
use crate::state::AppState;

/// An authenticated, rate-checked caller, with what the audit trail needs about the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: RequestId,
    pub origin_ip: Option<IpAddr>,
}

/// A refusal of authentication: 401 with a `WWW-Authenticate` challenge (RFC 6750).
pub struct AuthRejection(ApiError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let unauthenticated = self.0.status == axum::http::StatusCode::UNAUTHORIZED;
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
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let origin_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let principal = match authenticate(parts, state).await {
            Ok(principal) => principal,
            Err((reason, err)) => {
                state.metrics.auth_failure(reason);
                let event = audit::event(
                    EventType::AuthFailure,
                    Outcome::Denied,
                    audit::anonymous(),
                    request_id.as_str(),
                    origin_ip,
                    Some(parts.uri.path()),
                );
                // A failed login that cannot be recorded is still refused; the refusal is the
                // safe outcome, so the audit error is logged rather than turned into a 503.
                if let Err(e) = state.pipeline.audit.append(event).await {
                    tracing::error!(error = %e, "could not record an authentication failure");
                }
                return Err(AuthRejection(err));
            }
        };
        if let Err(retry_after) = state.limiter.check(&principal.subject) {
            state.metrics.rate_limited();
            return Err(AuthRejection(ApiError::too_many_requests(
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
        })
    }
}

/// Returns the principal, or a metrics reason and the error to answer with. The error message
/// does not say which check failed beyond the broad category: that detail helps attackers more
/// than callers, and it is in the audit trail and metrics.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<Principal, (&'static str, ApiError)> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err((
            "missing_credentials",
            ApiError::unauthenticated(
                "missing Authorization header; send `Authorization: Bearer <OIDC token or API key>`",
            ),
        ));
    };
    let token = value
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
                ApiError::unauthenticated("Authorization header must be `Bearer <token>`"),
            )
        })?;
    if apikey::looks_like_api_key(token) {
        let store = state.store.clone();
        let token = token.to_owned();
        let verdict = store
            .run(move |s| apikey::authenticate(s, &token))
            .await
            .map_err(|e| ("store_error", ApiError::internal(e)))?;
        return verdict.map_err(|rejection| {
            (
                rejection.as_str(),
                ApiError::unauthenticated("API key not accepted (unknown, revoked or wrong)"),
            )
        });
    }
    let Some(oidc) = &state.oidc else {
        return Err((
            "oidc_not_configured",
            ApiError::unauthenticated(
                "bearer token is not an API key and this server has no OIDC issuer configured",
            ),
        ));
    };
    oidc.validate(token).await.map_err(|rejection| {
        let reason = rejection.as_str();
        tracing::info!(reason, detail = %rejection, "token refused");
        let err = match rejection {
            crate::oidc::TokenRejection::KeysUnavailable(_) => {
                ApiError::unavailable("the identity provider's signing keys cannot be fetched")
            }
            other => ApiError::unauthenticated(format!("bearer token not accepted: {other}")),
        };
        (reason, err)
    })
}
