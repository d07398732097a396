//! A tool call through the MCP guard: the core decides it and records it; the guard
//! (`mcp/guard.rs`) relays only what the core allowed.

use std::sync::Arc;

use ztee_audit::{EventType, Outcome as AuditOutcome};
use ztee_policy::{PolicyRequest, Verdict};

use super::{ActionError, McpToolCall, Outcome};
use crate::auth::Caller;
use crate::pipeline::ActionContext;
use crate::state::AppState;

/// Decides `tool.call` on the arguments as the caller sent them (a raw card number there is the
/// policy's to refuse, `pci.raw_pan_in_tool_call`, not the mask's to hide), with the DLP summary
/// every action uses, and writes the one record. Allowed: [`Outcome::Done`]. Denied, or held
/// for an approval the relay cannot wait for: a refusal naming the rules.
pub(super) async fn tool_call(
    state: &Arc<AppState>,
    caller: &Caller,
    call: McpToolCall,
) -> Result<Outcome, ActionError> {
    let findings = state.llm.scanner().scan(&call.arguments.to_string());
    let input = ztee_policy::PolicyInput {
        principal: super::policy_principal(state, caller),
        action: ztee_policy::Action::ToolCall,
        request: PolicyRequest {
            tool: Some(ztee_policy::ToolCall {
                name: call.tool.clone(),
                args: call.arguments,
            }),
            ..Default::default()
        },
        dlp: crate::policy::dlp_summary(findings.iter().map(|f| f.entity_type.as_str())),
        // Arguments are the model's own output; injections arrive in results, scored there.
        injection: Default::default(),
    };
    let decision = state.llm.decide(&input);
    let gateway_decision = crate::policy::Decision::from(&decision);
    let tool = safe_name(&call.tool);
    let ctx = ActionContext {
        caller,
        event_type: EventType::ToolCall,
        resource: Some(format!("mcp/{}/{tool}", call.upstream)),
        policy: super::policy_input(caller, "tool.call"),
        approval: None,
    };
    let (outcome, record) = match decision.verdict {
        Verdict::Allow => (
            AuditOutcome::Success,
            crate::audit::decision_record(&gateway_decision),
        ),
        Verdict::Deny => (
            AuditOutcome::Denied,
            crate::audit::decision_record(&gateway_decision),
        ),
        // Nobody can approve while the relay waits: recorded and answered as a denial.
        Verdict::RequireApproval => (
            AuditOutcome::Denied,
            crate::pipeline::unapprovable(&gateway_decision),
        ),
    };
    state
        .pipeline
        .record(state.pipeline.event(&ctx, outcome).with_decision(record))
        .await?;
    if decision.verdict == Verdict::Allow {
        return Ok(Outcome::Done);
    }
    let what = if decision.verdict == Verdict::RequireApproval {
        "needs a human approval, which this relay cannot hold"
    } else {
        "was denied"
    };
    Err(ActionError::policy_denied(format!(
        "ztee policy: the call to tool {tool:?} {what}: {}",
        decision
            .reasons
            .iter()
            .map(|r| format!("{} ({})", r.message, r.rule))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// A tool name as it may appear in the audit trail and in messages: a few safe characters, and
/// never something that reads as a card number.
pub(crate) fn safe_name(tool: &str) -> String {
    let name: String = tool
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if crate::llm::walk::card_like_run(&name).is_some() {
        "(withheld: the name holds a card number)".into()
    } else {
        name
    }
}
