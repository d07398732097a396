//! The secrets stage: policy (`secret.use`), lease from the broker, exact-value DLP registration,
//! injection into the guest, and the end of all of it with the sandbox.
//!
//! ```text
//! request.secrets ["NAME" | "NAME=ENVVAR"]
//!   -> policy: action secret.use, request.secrets = names      (deny -> 403, audited)
//!   -> broker.lease (built-in store / Vault KV / Vault dynamic) (failure -> 4xx/503, audited)
//!   -> DLP: the values become the sandbox's SecretScope (raw, base64, hex, URL forms), which
//!      masks that sandbox's output only: the DLP API, inbound scans and every other sandbox
//!      never consult it, so nobody can test a guess against a live secret
//!   -> guest: /run/secrets/NAME (0400, tmpfs, sandbox user) and ENVVAR of the commands
//!   -> every later exec, file read or write: only the sandbox's owner, decided by policy with
//!      the secret names (see `api/sandboxes.rs`)
//!   -> sandbox ends: InjectedSecrets dropped -> scope wiped, dynamic leases revoked
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
use crate::dlp::SecretScope;
use crate::error::ActionError;
use crate::exec::{ExecError, SandboxHandle};
use crate::policy::DecisionKind;
use crate::state::AppState;

/// Most secrets one sandbox may ask for.
pub const MAX_SECRETS_PER_SANDBOX: usize = 16;

/// Checks the shape of a request's `secrets` list: unique names, unique variables, a bound.
pub fn check_requests(requests: &[SecretRequest]) -> Result<(), ActionError> {
    if requests.len() > MAX_SECRETS_PER_SANDBOX {
        return Err(ActionError::bad_request(format!(
            "secrets: at most {MAX_SECRETS_PER_SANDBOX} per sandbox, {} given",
            requests.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut vars = std::collections::BTreeSet::new();
    for r in requests {
        if !names.insert(r.name.as_str()) {
            return Err(ActionError::bad_request(format!(
                "secrets: {} is requested twice",
                r.name
            )));
        }
        if let Some(env) = &r.env {
            if !vars.insert(env.as_str()) {
                return Err(ActionError::bad_request(format!(
                    "secrets: two secrets are given the environment variable {env}"
                )));
            }
        }
    }
    Ok(())
}

/// Secrets injected into one sandbox. Dropping it ends the backend lease (dynamic secrets are
/// revoked) and its hold on the DLP scope (wiped once no output stream holds it either), so it
/// must live exactly as long as the sandbox and every output stream of it.
pub struct InjectedSecrets {
    inner: Option<Inner>,
}

struct Inner {
    broker: Arc<SecretBroker>,
    lease: Lease,
    /// The values as the DLP engine masks them in this sandbox's output.
    scope: SecretScope,
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

    /// The scope that masks these values in the sandbox's output, and nowhere else.
    pub fn scope(&self) -> Option<SecretScope> {
        self.inner.as_ref().map(|inner| inner.scope.clone())
    }

    /// Names of the injected secrets, never values (for policy input).
    pub fn names(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.name.to_string())
            .collect()
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
    async fn finish(self) {
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
) -> Result<Option<InjectedSecrets>, ActionError> {
    if requests.is_empty() {
        return Ok(None);
    }
    check_requests(requests)?;
    let Some(broker) = state.secrets.clone() else {
        return Err(ActionError::new(
            crate::error::ErrorKind::BadRequest,
            "secrets_unavailable",
            "this gateway has no secrets backend; configure [secrets] (see docs/secrets.md)",
        ));
    };
    let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
    let mut input = crate::action::policy_input(target.caller, "secret.use");
    input.image = target.image.map(str::to_owned);
    input.secrets = names.clone();
    let pipeline = &state.pipeline;
    let decision = pipeline.policy.decide(&input);
    let record = audit::decision_record(&decision);
    let names = &names;
    let audit_as = |outcome: Outcome, record: ztee_audit::DecisionRecord| async move {
        for name in names {
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
        Ok::<(), ActionError>(())
    };
    let audit_all = |outcome: Outcome| audit_as(outcome, record.clone());
    match decision.kind {
        DecisionKind::Allow => {}
        DecisionKind::RequireApproval if target.approved => {}
        DecisionKind::Deny => {
            audit_all(Outcome::Denied).await?;
            return Err(ActionError::policy_denied(format!(
                "policy does not let this caller give these secrets to this sandbox: {}",
                decision.reasons.join(", ")
            )));
        }
        DecisionKind::RequireApproval if pipeline.holds == crate::pipeline::HoldPolicy::Refuse => {
            audit_as(Outcome::Denied, crate::pipeline::unapprovable(&decision)).await?;
            return Err(crate::pipeline::approval_unavailable(&decision));
        }
        DecisionKind::RequireApproval => {
            audit_all(Outcome::PendingApproval).await?;
            return Err(ActionError::new(
            crate::error::ErrorKind::Forbidden,
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
    // Checked before anything is kept: a value that cannot be an environment variable, or that
    // cannot be masked, is not injected at all. Errors name the secret, never its value.
    for s in &lease.secrets {
        if s.request.env.is_some() && s.value.expose_str().is_none() {
            let name = s.request.name.to_string();
            release_now(&broker, lease).await;
            audit_all(Outcome::Failure).await?;
            return Err(ActionError::bad_request(format!(
                "secret {name} is not UTF-8 text and cannot be an environment variable; \
                 request it without =ENVVAR to get it as /run/secrets/{name}"
            )));
        }
    }
    let ids: Vec<String> = (0..lease.secrets.len())
        .map(|i| format!("sandbox/{i}"))
        .collect();
    let values: Vec<(&str, &[u8])> = ids
        .iter()
        .zip(&lease.secrets)
        .map(|(id, s)| (id.as_str(), s.value.expose()))
        .collect();
    let scope = pipeline.dlp.secret_scope(&values);
    drop(values);
    let scope = match scope {
        Ok(scope) => scope,
        Err(why) => {
            // Which secret: the first one the engine would not take on its own.
            let name = lease
                .secrets
                .iter()
                .find(|s| {
                    pipeline
                        .dlp
                        .secret_scope(&[("sandbox/0", s.value.expose())])
                        .is_err()
                })
                .map_or_else(
                    || "of this request".to_owned(),
                    |s| s.request.name.to_string(),
                );
            release_now(&broker, lease).await;
            audit_all(Outcome::Failure).await?;
            return Err(ActionError::bad_request(format!(
                "secret {name} cannot be redacted from outputs, so it is not injected: {why}"
            )));
        }
    };
    let injected = InjectedSecrets {
        inner: Some(Inner {
            broker,
            lease,
            scope,
        }),
    };
    audit_all(Outcome::Success).await?;
    Ok(Some(injected))
}

/// Ends a lease that is not used (its dynamic credentials are revoked).
async fn release_now(broker: &Arc<SecretBroker>, lease: Lease) {
    if lease.backend_leases() > 0 {
        broker.release(lease).await;
    }
}

fn lease_error(e: SecretError) -> ActionError {
    match e {
        SecretError::NotFound(_) | SecretError::Unavailable(_) => ActionError::new(
            crate::error::ErrorKind::BadRequest,
            "unknown_secret",
            e.to_string(),
        ),
        other => {
            tracing::error!(error = %other, "secrets backend failure");
            ActionError::unavailable("the secrets backend failed; see the gateway log")
        }
    }
}
