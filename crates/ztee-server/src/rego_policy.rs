//! [`PolicyEngine`] on top of `ztee-policy`'s Rego bundle.
//!
//! The Rego verdict is authoritative. When it allows a request in which inbound DLP found
//! something it did not itself act on, the configured `[dlp] inbound` action still applies, so
//! card data never reaches a VM unnoticed whatever the bundle says.

use ztee_policy::{Action, DlpSummary, PolicyInput as RegoInput, PolicyPrincipal, PolicyRequest};

use crate::dlp::InboundAction;
use crate::policy::{
    dlp_summary, inbound_decision, Decision, DecisionKind, PolicyEngine, PolicyInput, TenantTiers,
};

pub struct RegoPolicy {
    engine: ztee_policy::PolicyEngine,
    inbound: InboundAction,
    tiers: TenantTiers,
}

impl RegoPolicy {
    /// Every tenant is in the tier `standard` until [`RegoPolicy::with_tenant_tiers`].
    pub fn new(engine: ztee_policy::PolicyEngine, inbound: InboundAction) -> Self {
        Self {
            engine,
            inbound,
            tiers: TenantTiers::default(),
        }
    }

    /// Decides with each caller's tier from `tiers` (the gateway's `[llm]` tiers), the same
    /// tier the LLM proxy and the MCP guard use.
    pub fn with_tenant_tiers(mut self, tiers: TenantTiers) -> Self {
        self.tiers = tiers;
        self
    }

    fn principal(&self, input: &PolicyInput) -> PolicyPrincipal {
        PolicyPrincipal {
            subject: input.subject.clone(),
            tenant: input.tenant.clone(),
            roles: input.roles.clone(),
            tier: self.tiers.tier_of(&input.tenant).to_owned(),
        }
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
        "sandbox.input" => Action::SandboxInput,
        "file.stat" => Action::FileStat,
        "file.list" => Action::FileList,
        "file.watch" => Action::FileWatch,
        "file.mkdir" => Action::FileMkdir,
        "file.move" => Action::FileMove,
        "file.remove" => Action::FileRemove,
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
            principal: self.principal(input),
            action: Action::Egress,
            request: PolicyRequest {
                image: input.image.clone(),
                egress: targets.to_vec(),
                ..Default::default()
            },
            dlp: DlpSummary::default(),
            injection: Default::default(),
            trace: Vec::new(),
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
        let dlp = dlp_summary(input.findings.iter().map(|d| d.entity.as_str()));
        let rego_input = RegoInput {
            principal: self.principal(input),
            action: rego_action,
            request: PolicyRequest {
                cmd: input.cmd.clone(),
                image: input.image.clone(),
                secrets: input.secrets.clone(),
                ..Default::default()
            },
            dlp,
            injection: Default::default(),
            trace: Vec::new(),
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

fn gateway_decision(d: &ztee_policy::Decision) -> Decision {
    Decision::from(d)
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

    #[test]
    fn sandbox_actions_are_decided_with_the_tenants_tier() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ztee")).unwrap();
        std::fs::write(
            dir.path().join("ztee/main.rego"),
            r#"package ztee.main
import rego.v1
default decision := {"verdict": "allow", "risk": "LOW", "reasons": []}
decision := {"verdict": "deny", "risk": "HIGH", "reasons": [{"rule": "tier.is_pci", "message": "pci tier"}]} if {
	input.principal.tier == "pci"
}
"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("data.json"), "{}").unwrap();
        let bundle = ztee_policy::Bundle::from_dir(dir.path()).unwrap();
        let p = RegoPolicy::new(
            ztee_policy::PolicyEngine::compile(&bundle).unwrap(),
            InboundAction::Redact,
        )
        .with_tenant_tiers(TenantTiers::new(
            "standard".into(),
            [("acme".to_string(), "pci".to_string())].into(),
        ));
        for action in ["sandbox.create", "sandbox.exec", "run", "file.read"] {
            let d = p.decide(&input(action, &[]));
            assert_eq!(d.kind, DecisionKind::Deny, "{action}");
            assert_eq!(d.reasons, vec!["tier.is_pci".to_string()], "{action}");
        }
        let mut other = input("run", &[]);
        other.tenant = "globex".into();
        assert_eq!(p.decide(&other).kind, DecisionKind::Allow);
    }
}
