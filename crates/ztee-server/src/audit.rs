//! The audit stage: every decision the gateway makes becomes an event in the hash-chained log.
//!
//! The gateway fails closed: when an event cannot be made durable, the request fails (503) rather
//! than run unrecorded. Content (code, commands, output) enters events only as SHA-256 digests.

use std::net::IpAddr;

use async_trait::async_trait;
use ztee_audit::{
    AuditEvent, DecisionKind as AuditDecisionKind, DecisionRecord, EventType, Outcome,
    Principal as AuditPrincipal, PrincipalKind,
};

use crate::policy::{Decision, DecisionKind};
use crate::principal::{AuthMethod, Principal};

#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Returns once the event is durable.
    async fn append(&self, event: AuditEvent) -> Result<(), String>;
}

#[async_trait]
impl AuditSink for ztee_audit::AuditLog {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        ztee_audit::AuditLog::append(self, event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The audit trail's principal for an authenticated caller.
pub fn audit_principal(principal: &Principal) -> AuditPrincipal {
    let kind = match principal.method {
        AuthMethod::Oidc => PrincipalKind::User,
        AuthMethod::ApiKey => PrincipalKind::ServiceAccount,
    };
    AuditPrincipal::new(kind, principal.subject.clone(), principal.tenant.clone())
        .unwrap_or_else(|_| AuditPrincipal::system())
}

/// For failed authentication: nobody is known.
pub fn anonymous() -> AuditPrincipal {
    AuditPrincipal::new(PrincipalKind::Anonymous, "anonymous", "unknown")
        .unwrap_or_else(|_| AuditPrincipal::system())
}

pub fn decision_record(decision: &Decision) -> DecisionRecord {
    DecisionRecord {
        decision: match decision.kind {
            DecisionKind::Allow => AuditDecisionKind::Allow,
            DecisionKind::Deny => AuditDecisionKind::Deny,
            DecisionKind::RequireApproval => AuditDecisionKind::RequireApproval,
        },
        risk: decision.risk.to_owned(),
        rule_ids: decision.reasons.clone(),
        reasons: decision.messages.clone(),
    }
}

/// Builds an event with the fields every gateway event has.
pub fn event(
    event_type: EventType,
    outcome: Outcome,
    principal: AuditPrincipal,
    request_id: &str,
    origin_ip: Option<IpAddr>,
    resource: Option<&str>,
) -> AuditEvent {
    let mut event = AuditEvent::new(event_type, outcome, principal);
    if let Some(ip) = origin_ip {
        event = event.with_origin_ip(ip);
    }
    // Request ids and resource names are validated at the edge; a value the log refuses would be
    // a bug, and the event is still worth keeping without it.
    if let Ok(e) = event.clone().with_request_id(request_id) {
        event = e;
    }
    if let Some(resource) = resource {
        if let Ok(e) = event.clone().with_resource(resource) {
            event = e;
        }
    }
    event
}
