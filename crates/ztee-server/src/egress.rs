//! Egress for sandboxes created through the gateway: the request's `egress` field, the policy
//! decision for action `egress`, and the audit events of every relayed connection.
//!
//! ```text
//! egress: ["pypi.org:443", "*.pythonhosted.org:443"]
//!   -> parse (400 on a bad rule)
//!   -> policy, action `egress`, input.request.egress = [{host, port}]  (audited; deny -> 403)
//!   -> VM created -> Sandbox::enable_egress (guest proxy on 127.0.0.1:3128)
//!   -> each connection: ztee-egress proxy decides
//!        -> allowed: `egress` event, phase `opened`, written before any byte is relayed
//!           (cannot be written -> the connection is refused)
//!        -> when it ends (or is refused): `egress` event with the byte counts
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use ztee_audit::{
    AuditEvent, ConnectionPhase, DecisionKind as AuditDecisionKind, DecisionRecord, EventType,
    NetworkRecord, Outcome, Principal as AuditPrincipal,
};
use ztee_egress::{
    Allowlist, AuditUnavailable, Decision as ProxyDecision, EgressAudit, EgressRecord, HostPattern,
    OpeningWrite,
};
use ztee_policy::EgressTarget;

use crate::audit::{self, AuditSink};
use crate::auth::Caller;
use crate::error::ActionError;
use crate::exec::{ExecError, SandboxHandle};
use crate::pipeline::{ActionContext, Gate, Holds, Pipeline, Work};
use crate::policy::{Decision, DecisionKind};

/// Most egress rules one request may ask for.
const MAX_RULES: usize = 32;

/// Parses the `egress` field of a request. Empty: no egress (the VM has no network).
pub fn parse(rules: &[String]) -> Result<Allowlist, ActionError> {
    if rules.len() > MAX_RULES {
        return Err(ActionError::bad_request(format!(
            "egress: at most {MAX_RULES} HOST:PORT entries"
        )));
    }
    let mut parsed = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        parsed.push(
            rule.parse()
                .map_err(|e| ActionError::bad_request(format!("egress[{i}]: {e}")))?,
        );
    }
    Ok(Allowlist::new(parsed))
}

/// What policy sees: one `{host, port}` per rule, wildcards as `*.domain`.
pub fn targets(allowlist: &Allowlist) -> Vec<EgressTarget> {
    allowlist
        .rules()
        .iter()
        .map(|rule| EgressTarget {
            host: match &rule.host {
                HostPattern::Exact(host) => host.to_string(),
                HostPattern::Subdomains(domain) => format!("*.{domain}"),
            },
            port: rule.port,
        })
        .collect()
}

/// The egress decision as the request handler acts on it.
pub enum EgressGate {
    Allowed,
    /// Policy wants a human to approve this egress first; nothing has run.
    Held(Decision),
}

/// Asks policy whether the sandbox of `ctx` may have this egress, and records the answer as an
/// `egress` event. A denial is the error the caller sees; a hold for approval is returned for
/// the caller to park (or, with `approved`, goes ahead: a human approved exactly this request).
pub async fn authorize(
    pipeline: &Pipeline,
    ctx: &ActionContext<'_>,
    allowlist: &Allowlist,
    approved: bool,
) -> Result<EgressGate, ActionError> {
    let holds = pipeline.holds_for(approved);
    let mut input = ctx.policy.clone();
    input.action = "egress";
    input.findings = Vec::new();
    let decision = pipeline.policy.decide_egress(&input, &targets(allowlist));
    let (outcome, record) = match (decision.kind, holds) {
        (DecisionKind::Allow, _) => (Outcome::Success, audit::decision_record(&decision)),
        (DecisionKind::Deny, _) => (Outcome::Denied, audit::decision_record(&decision)),
        (DecisionKind::RequireApproval, Holds::Approved) => {
            (Outcome::Success, audit::decision_record(&decision))
        }
        (DecisionKind::RequireApproval, Holds::Park) => {
            (Outcome::PendingApproval, audit::decision_record(&decision))
        }
        (DecisionKind::RequireApproval, Holds::Refuse) => {
            (Outcome::Denied, crate::pipeline::unapprovable(&decision))
        }
    };
    let egress_ctx = ActionContext {
        caller: ctx.caller,
        event_type: EventType::Egress,
        resource: ctx.resource.clone(),
        policy: input,
        approval: ctx.approval.clone(),
    };
    let event = pipeline.event(&egress_ctx, outcome).with_decision(record);
    pipeline.record(event).await?;
    let approved = holds == Holds::Approved;
    match decision.kind {
        DecisionKind::Allow => Ok(EgressGate::Allowed),
        DecisionKind::RequireApproval if approved => Ok(EgressGate::Allowed),
        DecisionKind::Deny => Err(ActionError::policy_denied(format!(
            "policy denied the requested egress: {}",
            decision.reasons.join(", ")
        ))),
        DecisionKind::RequireApproval if holds == Holds::Refuse => {
            Err(crate::pipeline::approval_unavailable(&decision))
        }
        DecisionKind::RequireApproval => Ok(EgressGate::Held(decision)),
    }
}

/// The policy gate of a request that may ask for egress: the request itself, then (when it
/// lists destinations) its egress. Either may hold it for an approver; an approval covers the
/// request exactly as sent, so with `approved` neither hold applies again. A denial of either is
/// the caller's 403.
pub async fn admit_with_egress(
    pipeline: &Pipeline,
    ctx: &mut ActionContext<'_>,
    work: Work,
    allowlist: &Allowlist,
    approved: bool,
) -> Result<Gate, ActionError> {
    match pipeline.admit_or_hold(ctx, work, approved).await? {
        Gate::Admitted(admitted) if !allowlist.is_empty() => {
            match authorize(pipeline, ctx, allowlist, approved).await? {
                EgressGate::Allowed => Ok(Gate::Admitted(admitted)),
                EgressGate::Held(decision) => Ok(Gate::Held(decision)),
            }
        }
        gate => Ok(gate),
    }
}

/// Grants an authorized `allowlist` to a created sandbox (nothing when it is empty); its
/// connections are audited under `caller`.
pub async fn grant(
    pipeline: &Pipeline,
    caller: &Caller,
    sandbox: &dyn SandboxHandle,
    allowlist: Allowlist,
) -> Result<(), ExecError> {
    if allowlist.is_empty() {
        return Ok(());
    }
    let audit = GatewayEgressAudit::new(pipeline, caller);
    sandbox.enable_egress(allowlist, audit).await
}

/// Writes the `egress` audit events of relayed connections (one when an allowed connection
/// opens, one when any connection ends), under the principal and request that created the
/// sandbox.
pub struct GatewayEgressAudit {
    sink: Arc<dyn AuditSink>,
    principal: AuditPrincipal,
    request_id: String,
    origin_ip: Option<IpAddr>,
}

impl GatewayEgressAudit {
    pub fn new(pipeline: &Pipeline, caller: &Caller) -> Arc<Self> {
        Arc::new(Self {
            sink: pipeline.audit.clone(),
            principal: audit::audit_principal(&caller.principal),
            request_id: caller.request_id.as_str().to_owned(),
            origin_ip: caller.origin_ip,
        })
    }
}

impl GatewayEgressAudit {
    fn event(&self, record: &EgressRecord, phase: ConnectionPhase) -> AuditEvent {
        let (outcome, decision) = match record.decision {
            ProxyDecision::Allowed => (Outcome::Success, AuditDecisionKind::Allow),
            ProxyDecision::Denied => (Outcome::Denied, AuditDecisionKind::Deny),
        };
        let rule = record
            .rule
            .clone()
            .unwrap_or_else(|| "egress.proxy".to_owned());
        let resource = format!("sandbox/{}", record.sandbox);
        let event = audit::event(
            EventType::Egress,
            outcome,
            self.principal.clone(),
            &self.request_id,
            self.origin_ip,
            Some(&resource),
        )
        .with_decision(DecisionRecord {
            decision,
            risk: "HIGH".to_owned(),
            rule_ids: vec![rule],
            reasons: vec![record.reason.clone()],
        });
        let network = NetworkRecord {
            method: (!record.method.is_empty()).then(|| record.method.clone()),
            host: if record.host.is_empty() {
                "-".to_owned()
            } else {
                record.host.clone()
            },
            port: record.port,
            address: record.resolved,
            bytes_up: record.bytes_up,
            bytes_down: record.bytes_down,
            phase,
        };
        event.clone().with_network(network).unwrap_or(event)
    }
}

impl EgressAudit for GatewayEgressAudit {
    fn opened<'a>(&'a self, record: &'a EgressRecord) -> OpeningWrite<'a> {
        let event = self.event(record, ConnectionPhase::Opened);
        Box::pin(async move {
            self.sink.append(event).await.map_err(|err| {
                tracing::error!(error = %err, "cannot write an egress audit event; refusing the connection");
                AuditUnavailable(err.to_string())
            })
        })
    }

    fn record(&self, record: &EgressRecord) {
        ztee_egress::audit::log_record(record);
        let event = self.event(record, ConnectionPhase::Closed);
        let sink = self.sink.clone();
        // The connection is over (its opening is already on record); the closing record cannot
        // stop it any more, so it is written in the background and a failure is logged loudly.
        tokio::spawn(async move {
            if let Err(err) = sink.append(event).await {
                tracing::error!(error = %err, "cannot write an egress audit event");
            }
        });
    }
}
