//! OPA-style policy unit tests: every rule named `test_*` in any file of the bundle is a test; it
//! passes when it evaluates to `true`, fails when it is `false` or undefined, and errors when
//! evaluation fails. Tests usually set the input with `with input as {...}`.

use std::time::{Duration, Instant};

use regorus::{Engine, Value};
use serde::Serialize;

use crate::bundle::Bundle;
use crate::PolicyError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TestStatus {
    Pass,
    Fail,
    Error { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>`
    pub name: String,
    /// The file that defines it, relative to the bundle.
    pub file: String,
    #[serde(flatten)]
    pub status: TestStatus,
    #[serde(serialize_with = "micros")]
    pub duration: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A rule head found in a file: the package and the rule name.
fn test_rules(text: &str) -> (Option<String>, Vec<String>) {
    let mut package = None;
    let mut rules = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim().to_string());
            continue;
        }
        // Rule heads start in column 0; bodies are indented.
        if line.starts_with("test_") {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !rules.contains(&name) {
                rules.push(name);
            }
        }
    }
    (package, rules)
}

/// Loads the whole bundle (tests included) and runs every `test_` rule.
pub fn run_tests(bundle: &Bundle) -> Result<Vec<TestResult>, PolicyError> {
    let mut engine = Engine::new();
    for file in &bundle.files {
        engine
            .add_policy(file.name.clone(), file.text.clone())
            .map_err(|e| PolicyError::Compile {
                bundle: bundle.describe(),
                reason: e.to_string(),
            })?;
    }
    if let Some(data) = &bundle.data {
        engine
            .add_data(Value::from(data.clone()))
            .map_err(|e| PolicyError::Compile {
                bundle: bundle.describe(),
                reason: format!("data.json: {e}"),
            })?;
    }
    let mut results = Vec::new();
    for file in &bundle.files {
        let (package, rules) = test_rules(&file.text);
        let Some(package) = package else { continue };
        for rule in rules {
            let name = format!("data.{package}.{rule}");
            let started = Instant::now();
            let status = match engine.eval_rule(name.clone()) {
                Ok(Value::Bool(true)) => TestStatus::Pass,
                Ok(_) => TestStatus::Fail,
                Err(e) => TestStatus::Error {
                    reason: e.to_string(),
                },
            };
            results.push(TestResult {
                name,
                file: file.name.clone(),
                status,
                duration: started.elapsed(),
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_rule_heads_only() {
        let (package, rules) = test_rules(
            "package a.b\nimport rego.v1\ntest_one if {\n  test_not_a_head\n}\ntest_two := true\nhelper := 1\ntest_one if { false }\n",
        );
        assert_eq!(package.as_deref(), Some("a.b"));
        assert_eq!(rules, vec!["test_one".to_string(), "test_two".to_string()]);
    }
}
