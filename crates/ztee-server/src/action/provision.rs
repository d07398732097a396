//! Provisioning, the stage between the decisions and the execution, for every door that boots a
//! VM (`POST /v1/run`, `POST /v1/sandboxes`): the tenant's quota is reserved, the VM is created
//! from exactly the admitted image, the granted egress is enabled and the leased secrets are
//! written. A failure at any step undoes the steps before it (the VM destroyed, the quota
//! released) and is one `Failure` record of the action, always of the same shape: the admission
//! denial as its decision when the image was refused, else the policy decision, and the digest
//! of what the caller sent.

use std::sync::Arc;

use ztee_audit::Outcome;
use ztee_egress::Allowlist;

use super::sandbox::{release, reserve};
use crate::audit;
use crate::error::ActionError;
use crate::exec::{CreateSpec, ExecError, SandboxHandle};
use crate::pipeline::{create_failure_decision, exec_error, ActionContext, Admitted};
use crate::secrets::InjectedSecrets;
use crate::state::AppState;
use crate::store::SandboxRecord;

/// What to boot for one admitted action.
pub struct Provision<'a> {
    /// The sandbox as the quota and the state database know it.
    pub record: &'a SandboxRecord,
    pub spec: CreateSpec,
    /// The egress the policy allowed; empty for none.
    pub egress: Allowlist,
    pub secrets: Option<&'a InjectedSecrets>,
}

/// Boots the sandbox of `ctx`'s action, or undoes everything and records the failure.
pub async fn provision(
    state: &AppState,
    ctx: &ActionContext<'_>,
    admitted: &Admitted,
    provision: Provision<'_>,
) -> Result<Arc<dyn SandboxHandle>, ActionError> {
    let id = provision.record.id.clone();
    reserve(state, provision.record).await?;
    match boot(state, ctx, provision).await {
        Ok(handle) => Ok(handle),
        Err(e) => {
            release(state, &id).await;
            let event = state
                .pipeline
                .event(ctx, Outcome::Failure)
                .with_decision(create_failure_decision(
                    &e,
                    &audit::decision_record(&admitted.decision),
                ))
                .with_code(&admitted.input_digest);
            state.pipeline.record(event).await?;
            Err(exec_error(e))
        }
    }
}

/// Creates the VM and makes it ready; a VM that cannot be made ready is destroyed.
async fn boot(
    state: &AppState,
    ctx: &ActionContext<'_>,
    provision: Provision<'_>,
) -> Result<Arc<dyn SandboxHandle>, ExecError> {
    let handle: Arc<dyn SandboxHandle> =
        Arc::from(state.pipeline.executor.create(provision.spec).await?);
    let ready = async {
        crate::egress::grant(
            &state.pipeline,
            ctx.caller,
            handle.as_ref(),
            provision.egress,
        )
        .await?;
        if let Some(secrets) = provision.secrets {
            secrets.write_files(handle.as_ref()).await?;
        }
        Ok::<(), ExecError>(())
    }
    .await;
    if let Err(e) = ready {
        if let Err(d) = handle.destroy().await {
            tracing::warn!(sandbox = %provision.record.id, error = %d, "destroying a VM that could not be made ready");
        }
        return Err(e);
    }
    Ok(handle)
}
