//! [`PolicyEngine`] on top of `ztee-policy`'s Rego bundle.
//!
//! The Rego verdict is authoritative. When it allows a request in which inbound DLP found
//! something it did not itself act on, the configured `[dlp] inbound` action still applies, so
//! card data never reaches a VM unnoticed whatever the bundle says.

use ztee_policy::{
    Action, DlpSummary, PolicyInput as RegoInput, PolicyPrincipal, PolicyRequest, Risk, Verdict,
};

use crate::dlp::InboundAction;
use crate::policy::{inbound_decision, Decision, DecisionKind, PolicyEngine, PolicyInput};

/// Entity types that are sensitive authentication data (PCI DSS 3.3): never to be processed.
const SAD: &[&str] = &[
    "CARD_TRACK_DATA",
    "CARD_VERIFICATION_CODE",
    "CARD_PIN_BLOCK",
];

pub struct RegoPolicy {
    engine: ztee_policy::PolicyEngine,
    inbound: InboundAction,
}

impl RegoPolicy {
    pub fn new(engine: ztee_policy::PolicyEngine, inbound: InboundAction) -> Self {
        Self { engine, inbound }
    }

    pub fn describe(&self) -> &str {
        self.engine.bundle()
    }
}

/// The bundle's action for a gateway action name. `None` for a name the bundle has no action for:
/// such a request is denied (deny by default), like an action the bundle has no allow rule for.
fn action(name: &str) -> Option<Action> {
    Some(match name {
        "sandbox.create" => Action::SandboxCreate,
        "sandbox.exec" => Action::SandboxExec,
        "sandbox.delete" => Action::SandboxDelete,
        "file.write" => Action::FileWrite,
        "file.read" => Action::FileRead,
        "run" => Action::Run,
        "secret.use" => Action::SecretUse,
        "image.admit" => Action::ImageAdmit,
        _ => return None,
    })
}

impl PolicyEngine for RegoPolicy {
    fn decide_egress(
        &self,
        input: &PolicyInput,
        targets: &[ztee_policy::EgressTarget],
    ) -> Decision {
        let rego_input = RegoInput {
            principal: PolicyPrincipal {
                subject: input.subject.clone(),
                tenant: input.tenant.clone(),
                roles: input.roles.clone(),
                tier: "standard".into(),
            },
            action: Action::Egress,
            request: PolicyRequest {
                image: input.image.clone(),
                egress: targets.to_vec(),
                ..Default::default()
            },
            dlp: DlpSummary::default(),
            injection: Default::default(),
        };
        gateway_decision(&self.engine.evaluate(&rego_input))
    }

    fn rego(&self) -> Option<&ztee_policy::PolicyEngine> {
        Some(&self.engine)
    }

    fn decide(&self, input: &PolicyInput) -> Decision {
        let Some(rego_action) = action(input.action) else {
            return Decision {
                kind: DecisionKind::Deny,
                reasons: vec!["policy.no_allow_rule".into()],
                messages: vec!["no allow rule of the policy covers this action".into()],
                risk: "HIGH",
                redact_inbound: false,
            };
        };
        let mut dlp = DlpSummary::default();
        for d in &input.findings {
            *dlp.counts.entry(d.entity.clone()).or_default() += 1;
            dlp.raw_pan |= d.entity == "CREDIT_CARD";
            dlp.sad |= SAD.contains(&d.entity.as_str());
        }
        let rego_input = RegoInput {
            principal: PolicyPrincipal {
                subject: input.subject.clone(),
                tenant: input.tenant.clone(),
                roles: input.roles.clone(),
                tier: "standard".into(),
            },
            action: rego_action,
            request: PolicyRequest {
                cmd: input.cmd.clone(),
                image: input.image.clone(),
                secrets: input.secrets.clone(),
                ..Default::default()
            },
            dlp,
            injection: Default::default(),
        };
        let d = self.engine.evaluate(&rego_input);
        let decision = gateway_decision(&d);
        if decision.kind == DecisionKind::Allow && !input.findings.is_empty() {
            let mut reasons: Vec<String> = d.reasons.iter().map(|r| r.rule.clone()).collect();
            reasons.extend(
                input
                    .findings
                    .iter()
                    .map(|f| format!("dlp.inbound.{}:{}", f.entity, f.field)),
            );
            reasons.dedup();
            return inbound_decision(self.inbound, reasons);
        }
        decision
    }
}

/// A Rego decision in the gateway's terms: verdict, rule ids as reasons, their messages, risk.
fn gateway_decision(d: &ztee_policy::Decision) -> Decision {
    Decision {
        kind: match d.verdict {
            Verdict::Allow => DecisionKind::Allow,
            Verdict::Deny => DecisionKind::Deny,
            Verdict::RequireApproval => DecisionKind::RequireApproval,
        },
        reasons: d.reasons.iter().map(|r| r.rule.clone()).collect(),
        messages: d.reasons.iter().map(|r| r.message.clone()).collect(),
        risk: match d.risk {
            Risk::Low => "LOW",
            Risk::Medium => "MEDIUM",
            Risk::High => "HIGH",
        },
        redact_inbound: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dlp::Detection;

    fn input(action: &'static str, entities: &[&str]) -> PolicyInput {
        PolicyInput {
            action,
            subject: "apikey:1".into(),
            tenant: "acme".into(),
            roles: vec!["agent".into()],
            image: None,
            memory_mib: Some(128),
            vcpus: Some(1),
            timeout_s: Some(10),
            findings: entities
                .iter()
                .map(|e| Detection {
                    entity: (*e).into(),
                    field: "code".into(),
                })
                .collect(),
            cmd: vec!["python3".into()],
            secrets: Vec::new(),
        }
    }

    #[test]
    fn the_default_bundle_routes_card_data() {
        let p = RegoPolicy::new(
            ztee_policy::PolicyEngine::builtin().unwrap(),
            InboundAction::Redact,
        );
        let d = p.decide(&input("run", &[]));
        assert_eq!(d.kind, DecisionKind::Allow);
        assert_eq!(d.risk, "MEDIUM");
        assert!(d.reasons.contains(&"risk.code_execution".to_string()));
        // Raw PAN in code: the bundle holds it for approval, whatever the inbound action.
        let d = p.decide(&input("run", &["CREDIT_CARD"]));
        assert_eq!(d.kind, DecisionKind::RequireApproval);
        assert!(
            d.reasons.contains(&"pci.raw_pan_in_code".to_string()),
            "{:?}",
            d.reasons
        );
        // SAD: denied.
        let d = p.decide(&input("sandbox.exec", &["CARD_VERIFICATION_CODE"]));
        assert_eq!(d.kind, DecisionKind::Deny);
        // A finding the bundle lets through still gets the configured inbound action.
        let d = p.decide(&input("run", &["EMAIL_ADDRESS"]));
        assert_eq!(d.kind, DecisionKind::Allow);
        assert!(d.redact_inbound);
    }

    #[test]
    fn file_transfers_are_their_own_actions_and_unknown_actions_are_denied() {
        let p = RegoPolicy::new(
            ztee_policy::PolicyEngine::builtin().unwrap(),
            InboundAction::Redact,
        );
        for name in ["file.write", "file.read"] {
            let d = p.decide(&input(name, &[]));
            assert_eq!(d.kind, DecisionKind::Allow, "{name}");
            assert_eq!(d.reasons, vec!["risk.file_transfer".to_string()], "{name}");
            // The card-data checks of sandbox.exec apply.
            let d = p.decide(&input(name, &["CREDIT_CARD"]));
            assert_eq!(d.kind, DecisionKind::RequireApproval, "{name}");
            let d = p.decide(&input(name, &["CARD_VERIFICATION_CODE"]));
            assert_eq!(d.kind, DecisionKind::Deny, "{name}");
        }
        let d = p.decide(&input("sandbox.delete", &[]));
        assert_eq!(d.kind, DecisionKind::Allow);
        let d = p.decide(&input("frobnicate", &[]));
        assert_eq!(d.kind, DecisionKind::Deny);
        assert_eq!(d.reasons, vec!["policy.no_allow_rule".to_string()]);
    }
}
