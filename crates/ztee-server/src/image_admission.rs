//! The image-admission stage of a sandbox creation or a one-shot run.
//!
//! It runs after the request's own policy decision and before anything is leased or booted:
//! first the bundle's `image.admit` rules (for example `image.not_pinned`), then the engine's
//! supply-chain admission (signatures, attestations, scan results). Both outcomes are one
//! `image.admit` audit record: denied with the rule that refused, or admitted with the digest
//! that will boot. A secret is never leased for an image that is then refused.

use ztee_audit::{EventType, Outcome};

use crate::audit;
use crate::error::ActionError;
use crate::exec::{AdmittedImage, ExecError};
use crate::pipeline::{exec_error, ActionContext, Gate, Work};
use crate::policy::Decision;
use crate::state::AppState;

/// What the stage decided for one request's image.
pub enum ImageGate {
    /// Boot this image; `None` is the node's default image, which this stage does not verify.
    Admitted(Option<AdmittedImage>),
    /// The bundle wants a human to approve this image; the request is parked as a whole.
    Held(Decision),
}

/// The stage alone, for a door that boots the VM elsewhere (the command line's sandbox
/// supervisor, which boots exactly the digest admitted here): the admitted image, or why not,
/// recorded as at the gateway. A hold is refused: such a door has nobody to approve it.
pub async fn admit_unattended(
    state: &AppState,
    request_ctx: &ActionContext<'_>,
    image: Option<&str>,
) -> Result<Option<AdmittedImage>, ActionError> {
    match admit(state, request_ctx, image, false).await? {
        ImageGate::Admitted(image) => Ok(image),
        ImageGate::Held(decision) => Err(crate::pipeline::approval_unavailable(&decision)),
    }
}

/// Admits the image `request` names for the action in `request_ctx`. `approved` is true when a
/// human approved exactly this request: a hold is then passed, a denial never is.
pub async fn admit(
    state: &AppState,
    request_ctx: &ActionContext<'_>,
    image: Option<&str>,
    approved: bool,
) -> Result<ImageGate, ActionError> {
    let Some(image) = image.filter(|i| *i != "default") else {
        return Ok(ImageGate::Admitted(None));
    };
    let mut policy = crate::action::policy_input(request_ctx.caller, "image.admit");
    policy.image = Some(image.to_owned());
    let mut ctx = ActionContext {
        caller: request_ctx.caller,
        event_type: EventType::ImageAdmit,
        resource: Some(format!("image/{image}")),
        policy,
        approval: request_ctx.approval.clone(),
    };
    // A denial is recorded as an `image.admit` event by the policy stage itself.
    let allowed = match state
        .pipeline
        .admit_or_hold(&mut ctx, Work::default(), approved)
        .await?
    {
        Gate::Admitted(allowed) => allowed,
        Gate::Held(decision) => return Ok(ImageGate::Held(decision)),
    };
    let policy_decision = audit::decision_record(&allowed.decision);
    match state.pipeline.executor.admit(image).await {
        Ok(admitted) => {
            ctx.resource = Some(if image.contains('@') {
                format!("image/{image}")
            } else {
                format!("image/{image}@{}", admitted.digest())
            });
            let event = state
                .pipeline
                .event(&ctx, Outcome::Success)
                .with_decision(policy_decision);
            state.pipeline.record(event).await?;
            Ok(ImageGate::Admitted(Some(admitted)))
        }
        Err(e) => {
            let outcome = match e {
                ExecError::Refused { .. } | ExecError::Guest(_) => Outcome::Denied,
                ExecError::NotFound(_) | ExecError::Engine(_) => Outcome::Failure,
            };
            let event = state.pipeline.event(&ctx, outcome).with_decision(
                crate::pipeline::create_failure_decision(&e, &policy_decision),
            );
            state.pipeline.record(event).await?;
            Err(exec_error(e))
        }
    }
}
