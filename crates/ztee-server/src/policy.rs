//! The policy stage: allow, deny or require approval, with reasons.
//!
//! [`BuiltinPolicy`] is the gateway's own rule set (resource ceilings, inbound DLP handling). The
//! Rego engine plugs in through the same [`PolicyEngine`] trait.

use serde::Serialize;
pub use ztee_state::config::TenantTiers;

use crate::dlp::{Detection, InboundAction};

/// What the policy sees about a request.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInput {
    /// `sandbox.create`, `sandbox.exec`, `sandbox.delete`, `run`, `file.write`, `file.read`,
    /// `secret.use`. The Rego policy denies a name it has no action for.
    pub action: &'static str,
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub image: Option<String>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
    pub timeout_s: Option<u64>,
    /// What inbound DLP found (entity and field, never the text).
    pub findings: Vec<Detection>,
    /// The argument vector about to run, for policies that inspect commands. Evaluated in
    /// process and never recorded.
    #[serde(skip)]
    pub cmd: Vec<String>,
    /// Names of the secrets the action asks to have injected (never their values).
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    RequireApproval,
}

/// The one mapping of a bundle's verdict to the gateway's decision kind.
impl From<ztee_policy::Verdict> for DecisionKind {
    fn from(verdict: ztee_policy::Verdict) -> Self {
        match verdict {
            ztee_policy::Verdict::Allow => DecisionKind::Allow,
            ztee_policy::Verdict::Deny => DecisionKind::Deny,
            ztee_policy::Verdict::RequireApproval => DecisionKind::RequireApproval,
        }
    }
}

/// The one mapping of a decision kind to the audit trail's.
impl From<DecisionKind> for ztee_audit::DecisionKind {
    fn from(kind: DecisionKind) -> Self {
        match kind {
            DecisionKind::Allow => ztee_audit::DecisionKind::Allow,
            DecisionKind::Deny => ztee_audit::DecisionKind::Deny,
            DecisionKind::RequireApproval => ztee_audit::DecisionKind::RequireApproval,
        }
    }
}

/// A Rego decision in the gateway's terms: verdict, rule ids as reasons, their messages, risk.
impl From<&ztee_policy::Decision> for Decision {
    fn from(d: &ztee_policy::Decision) -> Self {
        Decision {
            kind: d.verdict.into(),
            reasons: d.reasons.iter().map(|r| r.rule.clone()).collect(),
            messages: d.reasons.iter().map(|r| r.message.clone()).collect(),
            risk: match d.risk {
                ztee_policy::Risk::Low => "LOW",
                ztee_policy::Risk::Medium => "MEDIUM",
                ztee_policy::Risk::High => "HIGH",
            },
            redact_inbound: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub kind: DecisionKind,
    /// Machine-readable reasons (rule ids), e.g. `dlp.inbound.CREDIT_CARD:cmd[1]`.
    pub reasons: Vec<String>,
    /// Human-readable text per reason; never quotes request content.
    pub messages: Vec<String>,
    /// `LOW`, `MEDIUM` or `HIGH`.
    pub risk: &'static str,
    /// Allowed on condition that inbound findings are masked before they reach the VM.
    pub redact_inbound: bool,
}

impl Decision {
    pub fn allow() -> Self {
        Self {
            kind: DecisionKind::Allow,
            reasons: Vec::new(),
            messages: Vec::new(),
            risk: "LOW",
            redact_inbound: false,
        }
    }
}

pub trait PolicyEngine: Send + Sync + 'static {
    fn decide(&self, input: &PolicyInput) -> Decision;

    /// Action `egress`: may the sandbox reach `targets`? Engines without egress rules refuse:
    /// network access is never granted by default.
    fn decide_egress(
        &self,
        input: &PolicyInput,
        targets: &[ztee_policy::EgressTarget],
    ) -> Decision {
        let _ = (input, targets);
        Decision {
            kind: DecisionKind::Deny,
            reasons: vec!["egress.no_policy".into()],
            messages: vec![
                "egress needs a Rego policy bundle that allows it (ztee serve --policy-dir)".into(),
            ],
            risk: "HIGH",
            redact_inbound: false,
        }
    }

    /// The Rego engine behind this policy, for decisions the gateway makes in Rego terms
    /// (`llm.chat`, `tool.call`). `None` for the built-in rules.
    fn rego(&self) -> Option<&ztee_policy::PolicyEngine> {
        None
    }
}

/// The built-in rules: what to do with inbound card data, per configuration.
pub struct BuiltinPolicy {
    pub inbound: InboundAction,
}

impl PolicyEngine for BuiltinPolicy {
    fn decide(&self, input: &PolicyInput) -> Decision {
        if input.action == "secret.use" {
            // Grants need a policy that names principals and secrets: the Rego bundle.
            return Decision {
                kind: DecisionKind::Deny,
                reasons: vec!["secret.no_grants".into()],
                messages: vec!["the built-in policy grants no secrets; use a Rego policy bundle with secret_grants".into()],
                risk: "HIGH",
                redact_inbound: false,
            };
        }
        if input.findings.is_empty() {
            return Decision::allow();
        }
        let mut reasons: Vec<String> = input
            .findings
            .iter()
            .map(|d| format!("dlp.inbound.{}:{}", d.entity, d.field))
            .collect();
        reasons.dedup();
        inbound_decision(self.inbound, reasons)
    }
}

/// What the configured inbound action makes of DLP findings (`reasons` names them).
pub fn inbound_decision(action: InboundAction, reasons: Vec<String>) -> Decision {
    let messages = vec!["sensitive data found in the request".to_owned()];
    match action {
        InboundAction::Block => Decision {
            kind: DecisionKind::Deny,
            reasons,
            messages,
            risk: "HIGH",
            redact_inbound: false,
        },
        InboundAction::Redact => Decision {
            kind: DecisionKind::Allow,
            reasons,
            messages,
            risk: "MEDIUM",
            redact_inbound: true,
        },
        InboundAction::RequireApproval => Decision {
            kind: DecisionKind::RequireApproval,
            reasons,
            messages,
            risk: "HIGH",
            redact_inbound: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(findings: Vec<Detection>) -> PolicyInput {
        PolicyInput {
            action: "run",
            subject: "apikey:1".into(),
            tenant: "t".into(),
            roles: vec!["agent".into()],
            image: None,
            memory_mib: Some(128),
            vcpus: Some(1),
            timeout_s: Some(10),
            findings,
            cmd: Vec::new(),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn inbound_findings_follow_the_configured_action() {
        let card = vec![Detection {
            entity: "CREDIT_CARD".into(),
            field: "code".into(),
        }];
        let block = BuiltinPolicy {
            inbound: InboundAction::Block,
        };
        assert_eq!(block.decide(&input(vec![])).kind, DecisionKind::Allow);
        let d = block.decide(&input(card.clone()));
        assert_eq!(d.kind, DecisionKind::Deny);
        assert_eq!(d.reasons, vec!["dlp.inbound.CREDIT_CARD:code"]);
        let redact = BuiltinPolicy {
            inbound: InboundAction::Redact,
        };
        let d = redact.decide(&input(card.clone()));
        assert_eq!(d.kind, DecisionKind::Allow);
        assert!(d.redact_inbound);
        let approve = BuiltinPolicy {
            inbound: InboundAction::RequireApproval,
        };
        assert_eq!(
            approve.decide(&input(card)).kind,
            DecisionKind::RequireApproval
        );
    }
}

/// The policy input's DLP summary of what inbound DLP found, built the same way for every
/// action: counts per entity type, whether a raw card number is present, and whether sensitive
/// authentication data is ([`ztee_dlp::Entity::is_sensitive_authentication_data`], the one
/// definition). Names that are no entity type are counted and flag nothing.
pub fn dlp_summary<'a>(entities: impl IntoIterator<Item = &'a str>) -> ztee_policy::DlpSummary {
    let mut dlp = ztee_policy::DlpSummary::default();
    for name in entities {
        *dlp.counts.entry(name.to_owned()).or_default() += 1;
        if let Ok(entity) = name.parse::<ztee_dlp::Entity>() {
            dlp.raw_pan |= entity == ztee_dlp::Entity::CreditCard;
            dlp.sad |= entity.is_sensitive_authentication_data();
        }
    }
    dlp
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn one_summary_for_every_action() {
        let dlp = dlp_summary([
            "CREDIT_CARD",
            "CARD_EXPIRY",
            "EMAIL_ADDRESS",
            "NOT_AN_ENTITY",
        ]);
        assert!(dlp.raw_pan);
        assert!(
            !dlp.sad,
            "card number and expiry are cardholder data, not SAD"
        );
        assert_eq!(dlp.counts.len(), 4);
        for sad in [
            "CARD_VERIFICATION_CODE",
            "CARD_TRACK_DATA",
            "CARD_PIN_BLOCK",
        ] {
            assert!(dlp_summary([sad]).sad, "{sad}");
        }
    }
}
