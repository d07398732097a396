//! The secrets stage: policy (`secret.use`), lease from the broker, exact-value DLP registration,
//! injection into the guest, and the end of all of it with the sandbox.
//!
//! ```text
//! request.secrets ["NAME" | "NAME=ENVVAR"]
//!   -> policy: action secret.use, request.secrets = names      (deny -> 403, audited)
//!   -> broker.lease (built-in store / Vault KV / Vault dynamic) (failure -> 4xx/503, audited)
//!   -> DLP: every value registered for exact redaction (raw, base64, hex, URL forms)
//!   -> guest: /run/secrets/NAME (0400, tmpfs, sandbox user) and ENVVAR of the commands
//!   -> sandbox ends: InjectedSecrets dropped -> DLP registrations removed, dynamic leases revoked
//! ```
//! Secret values are added to a command's environment only after inbound DLP and policy have
//! run, so they never appear in policy input, findings or the audit digest of the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ztee_audit::{EventType, Outcome};
use ztee_secrets::{Lease, SecretBroker, SecretError, SecretRequest};

use crate::audit;
use crate::auth::Caller;
use crate::dlp::DlpEngine;
use crate::error::ApiError;
use crate::exec::{ExecError, SandboxHandle};
use crate::policy::DecisionKind;
use crate::state::AppState;

/// Most secrets one sandbox may ask for.
pub const MAX_SECRETS_PER_SANDBOX: usize = 16;

/// Checks the shape of a request's `secrets` list: unique names, unique variables, a bound.
pub fn check_requests(requests: &[SecretRequest]) -> Result<(), ApiError> {
    if requests.len() > MAX_SECRETS_PER_SANDBOX {
        return Err(ApiError::bad_request(format!(
            "secrets: at most {MAX_SECRETS_PER_SANDBOX} per sandbox, {} given",
            requests.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut vars = std::collections::BTreeSet::new();
    for r in requests {
        if !names.insert(r.name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "secrets: {} is requested twice",
                r.name
            )));
        }
        if let Some(env) = &r.env {
            if !vars.insert(env.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "secrets: two secrets are given the environment variable {env}"
                )));
            }
        }
    }
    Ok(())
}

/// Secrets injected into one sandbox. Dropping it removes the values from DLP and ends the
/// backend lease (dynamic secrets are revoked), so it must live exactly as long as the sandbox
/// and every output stream of it.
pub struct InjectedSecrets {
    inner: Option<Inner>,
}

struct Inner {
    broker: Arc<SecretBroker>,
    dlp: Arc<dyn DlpEngine>,
    lease: Lease,
    dlp_ids: Vec<String>,
}

impl InjectedSecrets {
    /// Environment variables for the commands that asked for them (name -> value).
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(inner) = &self.inner {
            for s in &inner.lease.secrets {
                if let (Some(var), Some(value)) = (&s.request.env, s.value.expose_str()) {
                    env.insert(var.to_string(), value.to_owned());
                }
            }
        }
        env
    }

    /// What was injected: names and environment variables, never values.
    pub fn requests(&self) -> Vec<SecretRequest> {
        self.inner
            .as_ref()
            .map(|inner| {
                inner
                    .lease
                    .secrets
                    .iter()
                    .map(|s| s.request.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes every secret to `/run/secrets/NAME`, mode 0400, owned by the sandbox user.
    pub async fn write_files(&self, sandbox: &dyn SandboxHandle) -> Result<(), ExecError> {
        if let Some(inner) = &self.inner {
            for s in &inner.lease.secrets {
                sandbox
                    .write_file(
                        &s.request.guest_path(),
                        Bytes::copy_from_slice(s.value.expose()),
                        0o400,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends the lease now and waits for the backend revocations.
    pub async fn end(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish().await;
        }
    }
}

impl Inner {
    fn unregister(&self) {
        for id in &self.dlp_ids {
            self.dlp.unregister_secret(id);
        }
    }

    async fn finish(self) {
        self.unregister();
        let Inner { broker, lease, .. } = self;
        if lease.backend_leases() > 0 {
            broker.release(lease).await;
        }
    }
}

impl Drop for InjectedSecrets {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        inner.unregister();
        if inner.lease.backend_leases() == 0 {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(inner.finish());
            }
            Err(_) => tracing::warn!(
                "a dynamic secret lease could not be revoked (no runtime); its TTL ends it"
            ),
        }
    }
}

/// Everything the stage needs to know about the sandbox the secrets are for.
pub struct Target<'a> {
    pub caller: &'a Caller,
    pub image: Option<&'a str>,
    /// `run/<id>` or `sandbox/<id>`.
    pub resource: &'a str,
    /// The request was approved by a human who saw these secret names: a grant that asks for
    /// approval is satisfied.
    pub approved: bool,
}

/// Policy, lease and DLP registration for `requests`; `None` when nothing was asked for.
/// Every outcome is audited as `secret.use`, one event per secret, never with its value.
pub async fn checkout(
    state: &AppState,
    target: &Target<'_>,
    requests: &[SecretRequest],
) -> Result<Option<InjectedSecrets>, ApiError> {
    if requests.is_empty() {
        return Ok(None);
    }
    check_requests(requests)?;
    let Some(broker) = state.secrets.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "secrets_unavailable",
            "this gateway has no secrets backend; configure [secrets] (see docs/secrets.md)",
        ));
    };
    let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
    let mut input = crate::api::policy_input_for(target.caller, "secret.use");
    input.image = target.image.map(str::to_owned);
    input.secrets = names.clone();
    let pipeline = &state.pipeline;
    let decision = pipeline.policy.decide(&input);
    let record = audit::decision_record(&decision);
    let audit_all = |outcome: Outcome| {
        let record = record.clone();
        async move {
            for name in &names {
                let event = audit::event(
                    EventType::SecretUse,
                    outcome,
                    audit::audit_principal(&target.caller.principal),
                    target.caller.request_id.as_str(),
                    target.caller.origin_ip,
                    Some(&format!("secret/{name}@{}", target.resource)),
                )
                .with_decision(record.clone());
                pipeline.record(event).await?;
            }
            Ok::<(), ApiError>(())
        }
    };
    match decision.kind {
        DecisionKind::Allow => {}
        DecisionKind::RequireApproval if target.approved => {}
        DecisionKind::Deny => {
            audit_all(Outcome::Denied).await?;
            return Err(ApiError::policy_denied(format!(
                "policy does not let this caller give these secrets to this sandbox: {}",
                decision.reasons.join(", ")
            )));
        }
        DecisionKind::RequireApproval => {
            audit_all(Outcome::PendingApproval).await?;
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "approval_required",
                format!(
                    "policy requires a human approval to use these secrets; nothing was injected ({})",
                    decision.reasons.join(", ")
                ),
            ));
        }
    }
    let lease = match broker.lease(requests).await {
        Ok(lease) => lease,
        Err(e) => {
            audit_all(Outcome::Failure).await?;
            return Err(lease_error(e));
        }
    };
    let mut injected = InjectedSecrets {
        inner: Some(Inner {
            broker,
            dlp: pipeline.dlp.clone(),
            lease,
            dlp_ids: Vec::new(),
        }),
    };
    let registration = uuid::Uuid::new_v4().simple().to_string();
    if let Some(inner) = injected.inner.as_mut() {
        for (i, s) in inner.lease.secrets.iter().enumerate() {
            if s.request.env.is_some() && s.value.expose_str().is_none() {
                let name = s.request.name.to_string();
                drop(injected);
                audit_all(Outcome::Failure).await?;
                return Err(ApiError::bad_request(format!(
                    "secret {name} is not UTF-8 text and cannot be an environment variable; \
                     request it without =ENVVAR to get it as /run/secrets/{name}"
                )));
            }
            let id = format!("lease/{}/{i}", &registration[..16]);
            if let Err(why) = pipeline.dlp.register_secret(&id, s.value.expose()) {
                let name = s.request.name.to_string();
                drop(injected);
                audit_all(Outcome::Failure).await?;
                return Err(ApiError::bad_request(format!(
                    "secret {name} cannot be redacted from outputs, so it is not injected: {why}"
                )));
            }
            inner.dlp_ids.push(id);
        }
    }
    audit_all(Outcome::Success).await?;
    Ok(Some(injected))
}

fn lease_error(e: SecretError) -> ApiError {
    match e {
        SecretError::NotFound(_) | SecretError::Unavailable(_) => ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "unknown_secret",
            e.to_string(),
        ),
        other => {
            tracing::error!(error = %other, "secrets backend failure");
            ApiError::unavailable("the secrets backend failed; see the gateway log")
        }
    }
}
