//! The compiled policy. Compiled once from a bundle; each evaluation is independent, so one
//! [`PolicyEngine`] is shared (it is `Send + Sync`) by every request.

use regorus::{CompiledPolicy, PolicyModule, Value};

use crate::bundle::Bundle;
use crate::decision::Decision;
use crate::{PolicyError, PolicyInput};

/// The rule every bundle must define: an object `{verdict, risk, reasons}`.
pub const ENTRY_POINT: &str = "data.ztee.main.decision";

pub struct PolicyEngine {
    compiled: CompiledPolicy,
    description: String,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("bundle", &self.description)
            .finish()
    }
}

impl PolicyEngine {
    /// Compiles the bundle's policy files (tests excluded) with `decision` as the entry point.
    /// Syntax errors, unknown rules and a missing entry point are reported here, not per request.
    pub fn compile(bundle: &Bundle) -> Result<Self, PolicyError> {
        let modules: Vec<PolicyModule> = bundle
            .files
            .iter()
            .filter(|f| !f.is_test())
            .map(|f| PolicyModule {
                id: f.name.as_str().into(),
                content: f.text.as_str().into(),
            })
            .collect();
        let data = match &bundle.data {
            Some(data) => Value::from(data.clone()),
            None => Value::new_object(),
        };
        let compiled = regorus::compile_policy_with_entrypoint(data, &modules, ENTRY_POINT.into())
            .map_err(|e| PolicyError::Compile {
                bundle: bundle.describe(),
                reason: e.to_string(),
            })?;
        Ok(PolicyEngine {
            compiled,
            description: bundle.describe(),
        })
    }

    /// The built-in default bundle, compiled.
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::compile(&Bundle::builtin()?)
    }

    pub fn bundle(&self) -> &str {
        &self.description
    }

    /// Decides on `input`. Never fails: a policy that errors, returns nothing or returns a
    /// malformed decision yields a deny with rule id `policy.error`.
    pub fn evaluate(&self, input: &PolicyInput) -> Decision {
        match serde_json::to_value(input) {
            Ok(json) => self.evaluate_json(json),
            Err(e) => Decision::deny_on_error(format!("encoding the policy input failed: {e}")),
        }
    }

    /// [`PolicyEngine::evaluate`] for an input that is already JSON (used by `ztee policy eval`
    /// after it has checked the input against [`PolicyInput`]).
    pub fn evaluate_json(&self, input: serde_json::Value) -> Decision {
        let result = match self.compiled.eval_with_input(Value::from(input)) {
            Ok(value) => value,
            Err(e) => {
                let reason = mask_digit_runs(&e.to_string());
                tracing::warn!(%reason, "policy evaluation failed; denying");
                return Decision::deny_on_error(format!("policy evaluation failed: {reason}"));
            }
        };
        if result == Value::Undefined {
            return Decision::deny_on_error(format!(
                "the policy did not define {ENTRY_POINT} for this input"
            ));
        }
        let json = match serde_json::to_value(&result) {
            Ok(json) => json,
            Err(e) => {
                return Decision::deny_on_error(format!("the policy result is not JSON: {e}"))
            }
        };
        Decision::from_policy_value(json).unwrap_or_else(|reason| {
            tracing::warn!(%reason, "malformed policy decision; denying");
            Decision::deny_on_error(reason)
        })
    }
}

/// Replaces runs of 12 or more digits (possibly a card number echoed from the input in an
/// evaluation error) so they never reach logs or responses.
fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= 12 {
            // Keep the separators that trailed the digits (`1111 at` -> `[digits masked] at`).
            let digits_end = run.trim_end_matches([' ', '-']).len();
            out.push_str("[digits masked]");
            out.push_str(&run[digits_end..]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || (!run.is_empty() && (c == ' ' || c == '-')) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_digit_runs_are_masked() {
        assert_eq!(
            mask_digit_runs("value 4111 1111 1111 1111 at line 12"),
            "value [digits masked] at line 12"
        );
        assert_eq!(mask_digit_runs("line 42:7"), "line 42:7");
    }
}
