//! The MCP guard's actions: a tool call, decided and recorded by the core before the guard
//! (`mcp/guard.rs`) relays it; and a tool set an upstream offers, pinned once a person approved
//! it, so a definition that changes later (the "rug pull") is held again.

use std::sync::Arc;

use ztee_audit::{EventType, Outcome as AuditOutcome};
use ztee_policy::{PolicyRequest, Verdict};

use super::{ActionError, Approved, HeldAction, McpToolCall, McpToolSet, Outcome};
use crate::auth::Caller;
use crate::mcp::pins::{self, Pin};
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
    let tool = safe_name(&call.tool);
    let ctx = ActionContext {
        caller,
        event_type: EventType::ToolCall,
        resource: Some(format!("mcp/{}/{tool}", call.upstream)),
        policy: super::policy_input(caller, "tool.call"),
        approval: None,
    };
    // Only tools of the pinned set: one the model never saw approved, or one withheld as
    // poisoned, is not called.
    let upstream = call.upstream.clone();
    let pin = state
        .store
        .run(move |s| pins::get(s, &upstream))
        .await
        .map_err(ActionError::internal)?;
    let (rule, why) = match &pin {
        Some(p) if !p.current() => (
            "mcp.tools_changed",
            "the upstream's tool definitions changed since they were approved; its tools are not called until a person approves the new set",
        ),
        Some(p) if p.tools.contains(&call.tool) => ("", ""),
        _ => (
            "mcp.tool_not_pinned",
            "the tool is not among the upstream's approved tool definitions (list its tools to have a new or changed set reviewed)",
        ),
    };
    if !rule.is_empty() {
        let refusal = crate::audit::decision_record(&crate::policy::Decision {
            kind: crate::policy::DecisionKind::Deny,
            reasons: vec![rule.into()],
            messages: vec![why.into()],
            risk: "HIGH",
            redact_inbound: false,
        });
        state
            .pipeline
            .record(
                state
                    .pipeline
                    .event(&ctx, AuditOutcome::Denied)
                    .with_decision(refusal),
            )
            .await?;
        return Err(ActionError::policy_denied(format!(
            "ztee policy: the call to tool {tool:?} of MCP upstream {:?} was refused: {why} ({rule})",
            call.upstream
        )));
    }
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
        trace: state.tool_traces.steps(&caller.principal),
    };
    let step_dlp = input.dlp.clone();
    let decision = state.llm.decide(&input);
    let gateway_decision = crate::policy::Decision::from(&decision);
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
        state.tool_traces.push(
            &caller.principal,
            ztee_policy::TraceStep {
                kind: ztee_policy::TraceKind::ToolCall,
                tool: call.tool,
                dlp: step_dlp,
                injection: Default::default(),
            },
        );
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

/// Pins `set` to its upstream when a person approved it (`approved`) or, for an upstream with
/// no pin yet, when it is trusted on first use; otherwise holds it for approval (one approval per
/// upstream and set, however many lists asked). A set equal to the pin is simply done.
pub(super) async fn pin_tools(
    state: &Arc<AppState>,
    caller: &Caller,
    set: McpToolSet,
    approved: Option<Approved<'_>>,
) -> Result<Outcome, ActionError> {
    let (upstream, digest) = (set.upstream.clone(), set.digest.clone());
    let current = state
        .store
        .run(move |s| {
            pins::saw(s, &upstream, &digest)?;
            pins::get(s, &upstream)
        })
        .await
        .map_err(ActionError::internal)?;
    if current.as_ref().is_some_and(|p| p.digest == set.digest) {
        return Ok(Outcome::ToolsPinned(set));
    }
    let first_use = current.is_none() && set.trust_first_use;
    if approved.is_some() || first_use {
        let pin = Pin {
            digest: set.digest.clone(),
            tools: set.tools.clone(),
            approval: approved.map(|a| a.id.to_owned()),
            seen: Some(set.digest.clone()),
        };
        let upstream = set.upstream.clone();
        state
            .store
            .run(move |s| pins::put(s, &upstream, &pin))
            .await
            .map_err(ActionError::internal)?;
        let ctx = ActionContext {
            caller,
            event_type: EventType::ToolPin,
            resource: Some(format!("mcp/{}", set.upstream)),
            policy: super::policy_input(caller, "tool.pin"),
            approval: approved.map(Approved::grant),
        };
        let rule = if approved.is_some() {
            "mcp.tools_approved"
        } else {
            "mcp.tools_first_use"
        };
        let record = crate::audit::decision_record(&crate::policy::Decision {
            kind: crate::policy::DecisionKind::Allow,
            reasons: vec![rule.into()],
            messages: vec![format!("pinned to {}", set.digest)],
            risk: "MEDIUM",
            redact_inbound: false,
        });
        state
            .pipeline
            .record(
                state
                    .pipeline
                    .event(&ctx, AuditOutcome::Success)
                    .with_decision(record),
            )
            .await?;
        return Ok(Outcome::ToolsPinned(set));
    }
    let matching = |action: &super::Action| {
        matches!(action, super::Action::PinMcpTools(s)
            if s.upstream == set.upstream && s.digest == set.digest)
    };
    if let Some(ticket) = crate::approvals::pending_ticket(state, &matching).await? {
        return Ok(Outcome::Held(ticket));
    }
    let (rule, message) = match &current {
        None => (
            "mcp.tools_new",
            format!(
                "the tool definitions of MCP upstream {:?} have not been approved yet",
                set.upstream
            ),
        ),
        Some(pin) => (
            "mcp.tools_changed",
            format!(
                "the tool definitions of MCP upstream {:?} changed since they were approved ({} -> {})",
                set.upstream, pin.digest, set.digest
            ),
        ),
    };
    let decision = crate::policy::Decision {
        kind: crate::policy::DecisionKind::RequireApproval,
        reasons: vec![rule.into()],
        messages: vec![message],
        risk: "HIGH",
        redact_inbound: false,
    };
    let mut set = set;
    set.previous = current.map(|p| p.digest);
    let held = HeldAction {
        action: super::Action::PinMcpTools(set),
        bound: Vec::new(),
    };
    let ticket = crate::approvals::park(state, caller, held, &decision).await?;
    Ok(Outcome::Held(ticket))
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
