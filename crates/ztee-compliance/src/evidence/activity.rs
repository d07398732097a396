//! What the audit trail says happened in the window: the figures 10.4.1 review and an assessor
//! ask for (failed logins, refusals, redactions by entity type, approvals, egress, secrets).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use ztee_audit::{
    read_records, AuditEvent, DecisionKind, EventType, Outcome, Payload, PrincipalKind, Query,
};

use crate::Window;

/// Counts over the window's events. Nothing here holds content: only types, outcomes, counts
/// and the identifiers the trail itself stores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    /// Why the figures stop early: a record that cannot be read (a tampered or damaged trail
    /// is counted only up to it; the audit-trail evidence says exactly where).
    pub incomplete: Option<String>,
    pub events: u64,
    pub by_type: BTreeMap<String, u64>,
    pub by_outcome: BTreeMap<String, u64>,
    pub logins: u64,
    pub failed_logins: u64,
    /// Failed logins per client address (`unknown` when the gateway had none).
    pub failed_logins_by_origin: BTreeMap<String, u64>,
    /// Authenticated callers refused for lack of a role.
    pub authorization_denials: u64,
    /// Actions the policy denied.
    pub policy_denials: u64,
    /// Top rule ids behind denials and approval routing.
    pub decisions_by_rule: BTreeMap<String, u64>,
    /// Values DLP masked, by entity type.
    pub redactions: BTreeMap<String, u64>,
    pub sandboxes_started: u64,
    pub approvals: ApprovalStats,
    /// Connections the egress proxy relayed / refused.
    pub egress_allowed: u64,
    pub egress_denied: u64,
    /// Requests for egress that policy granted / refused (before any VM ran).
    pub egress_grants: u64,
    pub egress_grants_refused: u64,
    pub secrets_injected: u64,
    pub secrets_refused: u64,
    pub images_admitted: u64,
    pub images_refused: u64,
    /// Reads, searches and verifications of the trail itself (10.2.1.3).
    pub audit_accesses: u64,
    pub policy_changes: u64,
    /// Policy bundles the gateway loaded in the period (`policy/sha256:…`), with how often.
    pub policy_bundles: BTreeMap<String, u64>,
    pub api_key_changes: u64,
    pub service_starts: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApprovalStats {
    /// Actions policy routed to a human.
    pub requested: u64,
    pub granted: u64,
    pub rejected: u64,
    /// Ended without a decision (expired, or lost to a gateway restart).
    pub expired: u64,
    /// Requested in the window and not (yet) decided in it.
    pub undecided: u64,
    /// Median time from request to decision, in seconds.
    pub median_decision_s: Option<u64>,
}

pub fn gather(audit_dir: &Path, window: &Window) -> Activity {
    let mut activity = Activity::default();
    if !audit_dir.is_dir() {
        return activity;
    }
    let query = Query {
        since: window.since,
        ..Query::default()
    };
    let mut approvals = ApprovalTracker::default();
    let read = read_records(audit_dir, &query, |record| {
        if let Payload::Event(event) = record.payload {
            if window.contains(event.time) {
                activity.count(&event);
                approvals.observe(&event);
            }
        }
    });
    if let Err(e) = read {
        activity.incomplete = Some(e.to_string());
    }
    activity.approvals = approvals.finish();
    activity
}

impl Activity {
    fn count(&mut self, event: &AuditEvent) {
        self.events += 1;
        *self
            .by_type
            .entry(event.event_type.as_str().to_string())
            .or_insert(0) += 1;
        *self
            .by_outcome
            .entry(event.outcome.as_str().to_string())
            .or_insert(0) += 1;
        for (entity, n) in &event.redactions {
            *self.redactions.entry(entity.clone()).or_insert(0) += n;
        }
        if let Some(decision) = &event.decision {
            if decision.decision != DecisionKind::Allow {
                for rule in &decision.rule_ids {
                    *self.decisions_by_rule.entry(rule.clone()).or_insert(0) += 1;
                }
            }
        }
        let denied = event.outcome == Outcome::Denied;
        let succeeded = event.outcome == Outcome::Success;
        match event.event_type {
            EventType::AuthLogin => self.logins += 1,
            EventType::AuthFailure => {
                self.failed_logins += 1;
                let origin = event
                    .origin_ip
                    .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                *self.failed_logins_by_origin.entry(origin).or_insert(0) += 1;
            }
            EventType::AuthzDenied => self.authorization_denials += 1,
            EventType::SandboxCreate | EventType::Run if succeeded => self.sandboxes_started += 1,
            // An allowed connection also has a record from when it opened; count its close.
            EventType::Egress if event.network.as_ref().is_some_and(|n| !n.phase.is_closed()) => {}
            EventType::Egress if event.network.is_some() && succeeded => self.egress_allowed += 1,
            EventType::Egress if event.network.is_some() && denied => self.egress_denied += 1,
            EventType::Egress if succeeded => self.egress_grants += 1,
            EventType::Egress if denied => self.egress_grants_refused += 1,
            EventType::SecretUse if succeeded => self.secrets_injected += 1,
            EventType::SecretUse if denied => self.secrets_refused += 1,
            EventType::ImageAdmit if succeeded => self.images_admitted += 1,
            EventType::ImageAdmit if denied => self.images_refused += 1,
            EventType::AuditAccess => self.audit_accesses += 1,
            EventType::PolicyChange => {
                self.policy_changes += 1;
                if let Some(bundle) = &event.resource {
                    *self.policy_bundles.entry(bundle.clone()).or_insert(0) += 1;
                }
            }
            EventType::ApiKeyCreate | EventType::ApiKeyRevoke => self.api_key_changes += 1,
            EventType::ServiceStart => self.service_starts += 1,
            _ => {}
        }
        let policy_denied = denied
            && event.principal.kind != PrincipalKind::Anonymous
            && event
                .decision
                .as_ref()
                .is_some_and(|d| d.decision == DecisionKind::Deny);
        if policy_denied {
            self.policy_denials += 1;
        }
    }
}

/// Pairs approval requests with their decisions. An approval is identified by the resource
/// the trail names for it (`approval/<id>`), else by the request id that parked the action.
#[derive(Default)]
struct ApprovalTracker {
    requested_at: HashMap<String, SystemTime>,
    decided: HashMap<String, SystemTime>,
    granted: u64,
    rejected: u64,
    expired: u64,
    requested: u64,
}

impl ApprovalTracker {
    fn key(event: &AuditEvent) -> Option<String> {
        event
            .resource
            .as_ref()
            .filter(|r| r.starts_with("approval/"))
            .or(event.request_id.as_ref())
            .cloned()
    }

    fn observe(&mut self, event: &AuditEvent) {
        let is_request = event.event_type == EventType::ApprovalRequest;
        let is_grant = event.event_type == EventType::ApprovalGrant;
        let is_reject = event.event_type == EventType::ApprovalReject;
        if !(is_request || is_grant || is_reject) {
            return;
        }
        let Some(key) = Self::key(event) else {
            return;
        };
        if is_request {
            self.requested += 1;
            self.requested_at.entry(key).or_insert(event.time);
            return;
        }
        // Only a final decision counts; a first approval under a two-person rule is recorded
        // as a grant with outcome `pending_approval`.
        if event.outcome == Outcome::PendingApproval {
            return;
        }
        if is_grant {
            self.granted += 1;
        } else if event.outcome == Outcome::Failure {
            // The gateway records an expiry as a rejection that failed: nobody decided.
            self.expired += 1;
            self.requested_at.remove(&key);
            return;
        } else {
            self.rejected += 1;
        }
        self.decided.entry(key).or_insert(event.time);
    }

    fn finish(self) -> ApprovalStats {
        let mut waits: Vec<u64> = self
            .requested_at
            .iter()
            .filter_map(|(key, asked)| {
                let decided = self.decided.get(key)?;
                Some(decided.duration_since(*asked).map_or(0, |d| d.as_secs()))
            })
            .collect();
        waits.sort_unstable();
        let undecided = self
            .requested_at
            .keys()
            .filter(|k| !self.decided.contains_key(*k))
            .count() as u64;
        ApprovalStats {
            requested: self.requested,
            granted: self.granted,
            rejected: self.rejected,
            expired: self.expired,
            undecided,
            median_decision_s: waits.get(waits.len() / 2).copied(),
        }
    }
}
