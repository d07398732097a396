//! The typed result of a policy evaluation, and the strict parsing of what the bundle returned.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the gateway must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    RequireApproval,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::RequireApproval => "require_approval",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Risk routing level: LOW executes, MEDIUM executes and is logged prominently, HIGH needs a
/// human approver (or is denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "LOW",
            Risk::Medium => "MEDIUM",
            Risk::High => "HIGH",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One machine-readable reason: the rule id (stable, for dashboards and approvals) and a message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub rule: String,
    pub message: String,
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub verdict: Verdict,
    pub risk: Risk,
    #[serde(default)]
    pub reasons: Vec<Reason>,
}

/// Rule id used when the policy itself failed; the request is denied.
pub const POLICY_ERROR_RULE: &str = "policy.error";

impl Decision {
    /// Deny-by-default: what every failure of the policy machinery turns into.
    pub fn deny_on_error(message: impl Into<String>) -> Self {
        Decision {
            verdict: Verdict::Deny,
            risk: Risk::High,
            reasons: vec![Reason {
                rule: POLICY_ERROR_RULE.to_string(),
                message: message.into(),
            }],
        }
    }

    pub fn rule_ids(&self) -> Vec<&str> {
        self.reasons.iter().map(|r| r.rule.as_str()).collect()
    }

    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// Parses what the bundle's `decision` rule returned. Anything that is not exactly a
    /// decision (missing fields, unknown verdict, extra fields, a deny or approval without
    /// reasons) is an error, which the engine turns into a deny.
    pub(crate) fn from_policy_value(value: serde_json::Value) -> Result<Self, String> {
        let decision: Decision = serde_json::from_value(value)
            .map_err(|e| format!("the policy returned a malformed decision: {e}"))?;
        if decision.verdict != Verdict::Allow && decision.reasons.is_empty() {
            return Err(format!(
                "the policy returned {} without a reason",
                decision.verdict
            ));
        }
        if decision.reasons.iter().any(|r| r.rule.trim().is_empty()) {
            return Err("the policy returned a reason with an empty rule id".to_string());
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_well_formed_decision_parses() {
        let d = Decision::from_policy_value(json!({
            "verdict": "require_approval", "risk": "HIGH",
            "reasons": [{"rule": "risk.egress", "message": "egress requested"}]
        }));
        assert_eq!(d.map(|d| d.verdict), Ok(Verdict::RequireApproval));
    }

    #[test]
    fn malformed_decisions_are_rejected() {
        for bad in [
            json!(true),
            json!({"verdict": "maybe", "risk": "LOW", "reasons": []}),
            json!({"verdict": "allow", "risk": "low", "reasons": []}),
            json!({"verdict": "deny", "risk": "HIGH", "reasons": []}),
            json!({"verdict": "allow", "risk": "LOW", "reasons": [], "extra": 1}),
            json!({"verdict": "deny", "risk": "HIGH", "reasons": [{"rule": "", "message": "x"}]}),
        ] {
            assert!(Decision::from_policy_value(bad.clone()).is_err(), "{bad}");
        }
    }
}
