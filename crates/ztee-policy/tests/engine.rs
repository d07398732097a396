//! The engine against the real default bundle and against deliberately broken bundles.

use std::path::Path;
use std::sync::Arc;

use ztee_policy::{
    run_tests, Action, Bundle, DlpSummary, PolicyEngine, PolicyError, PolicyInput, PolicyPrincipal,
    PolicyRequest, Risk, TestStatus, Verdict, POLICY_ERROR_RULE,
};

fn repo_policies() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn input(action: Action, request: PolicyRequest) -> PolicyInput {
    PolicyInput {
        principal: PolicyPrincipal {
            subject: "agent-7".into(),
            tenant: "acme".into(),
            roles: vec!["sandbox:run".into()],
            tier: "standard".into(),
        },
        action,
        request,
        dlp: DlpSummary::default(),
        injection: Default::default(),
        trace: Vec::new(),
    }
}

fn bundle_of(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

#[test]
fn every_default_bundle_test_passes() {
    let bundle = Bundle::from_dir(&repo_policies()).unwrap_or_else(|e| panic!("{e}"));
    let results = run_tests(&bundle).unwrap_or_else(|e| panic!("{e}"));
    assert!(results.len() >= 20, "only {} tests found", results.len());
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.status != TestStatus::Pass)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn the_builtin_bundle_is_the_repository_bundle() {
    let builtin = Bundle::builtin().unwrap_or_else(|e| panic!("{e}"));
    let repo = Bundle::from_dir(&repo_policies()).unwrap_or_else(|e| panic!("{e}"));
    let names = |b: &Bundle| {
        b.files
            .iter()
            .map(|f| (f.name.clone(), f.text.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&builtin),
        names(&repo),
        "update BUILTIN_FILES in bundle.rs"
    );
    assert_eq!(builtin.data, repo.data);
}

#[test]
fn raw_card_data_in_code_needs_approval() {
    let engine = PolicyEngine::builtin().unwrap_or_else(|e| panic!("{e}"));
    let mut request = input(
        Action::Run,
        PolicyRequest {
            code: Some("charge(card)".into()),
            ..Default::default()
        },
    );
    assert_eq!(engine.evaluate(&request).verdict, Verdict::Allow);
    request.dlp.raw_pan = true;
    request.dlp.counts.insert("CREDIT_CARD".into(), 1);
    let decision = engine.evaluate(&request);
    assert_eq!(decision.verdict, Verdict::RequireApproval);
    assert_eq!(decision.risk, Risk::High);
    assert!(decision.rule_ids().contains(&"pci.raw_pan_in_code"));
}

#[test]
fn a_policy_that_errors_denies() {
    let dir = bundle_of(&[(
        "p.rego",
        "package ztee.main\nimport rego.v1\ndecision := {\"verdict\": \"allow\", \"risk\": \"LOW\", \"reasons\": [], \"n\": 1 / input.request.zero}\n",
    )]);
    let engine =
        PolicyEngine::compile(&Bundle::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = serde_json::to_value(input(Action::Run, PolicyRequest::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    raw["request"]["zero"] = 0.into();
    let decision = engine.evaluate_json(raw);
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.rule_ids(), vec![POLICY_ERROR_RULE]);
}

#[test]
fn a_malformed_or_missing_decision_denies() {
    for body in [
        "decision := {\"verdict\": \"allow\"}",
        "decision := \"allow\"",
        "decision := {\"verdict\": \"allow\", \"risk\": \"LOW\", \"reasons\": []} if input.action == \"egress\"",
    ] {
        let dir = bundle_of(&[("p.rego", &format!("package ztee.main\nimport rego.v1\n{body}\n"))]);
        let engine = PolicyEngine::compile(&Bundle::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        let decision = engine.evaluate(&input(Action::Run, PolicyRequest::default()));
        assert_eq!(decision.verdict, Verdict::Deny, "{body}");
        assert_eq!(decision.rule_ids(), vec![POLICY_ERROR_RULE], "{body}");
    }
}

#[test]
fn a_syntax_error_is_reported_at_compile_time_with_its_location() {
    let dir = bundle_of(&[("bad.rego", "package ztee.main\ndecision := {\n")]);
    let err =
        PolicyEngine::compile(&Bundle::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")))
            .map(|_| ())
            .err();
    let Some(PolicyError::Compile { reason, .. }) = err else {
        panic!("expected a compile error, got {err:?}");
    };
    assert!(reason.contains("bad.rego"), "{reason}");
}

#[test]
fn an_empty_directory_is_not_a_bundle() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Bundle::from_dir(dir.path()),
        Err(PolicyError::EmptyBundle { .. })
    ));
}

#[test]
fn failing_and_erroring_tests_are_reported() {
    let dir = bundle_of(&[
        ("p.rego", "package ztee.main\nimport rego.v1\ndecision := {\"verdict\": \"allow\", \"risk\": \"LOW\", \"reasons\": []}\n"),
        (
            "p_test.rego",
            "package ztee.main_test\nimport rego.v1\ntest_ok if data.ztee.main.decision.verdict == \"allow\"\ntest_wrong if data.ztee.main.decision.verdict == \"deny\"\ntest_boom if 1 / input.zero > 0\n",
        ),
    ]);
    let bundle = Bundle::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let results = run_tests(&bundle).unwrap_or_else(|e| panic!("{e}"));
    let status = |name: &str| {
        results
            .iter()
            .find(|r| r.name == format!("data.ztee.main_test.{name}"))
            .map(|r| r.status.clone())
    };
    assert_eq!(status("test_ok"), Some(TestStatus::Pass));
    assert_eq!(status("test_wrong"), Some(TestStatus::Fail));
    assert!(matches!(
        status("test_boom"),
        Some(TestStatus::Fail | TestStatus::Error { .. })
    ));
}

#[test]
fn one_engine_serves_many_threads() {
    let engine = Arc::new(PolicyEngine::builtin().unwrap_or_else(|e| panic!("{e}")));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let action = if t % 2 == 0 {
                    Action::SecretUse
                } else {
                    Action::SandboxCreate
                };
                // A secret no grant covers: the default bundle denies its use.
                let request = PolicyRequest {
                    secrets: vec!["DB_PASSWORD".into()],
                    ..PolicyRequest::default()
                };
                (0..50)
                    .map(|_| {
                        let request = if action == Action::SecretUse {
                            request.clone()
                        } else {
                            PolicyRequest::default()
                        };
                        engine.evaluate(&input(action, request)).verdict
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let verdicts = thread.join().unwrap_or_else(|_| panic!("thread panicked"));
        let expected = if t % 2 == 0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        assert!(verdicts.iter().all(|v| *v == expected));
    }
}

#[test]
fn an_action_the_bundle_does_not_know_is_denied() {
    let engine = PolicyEngine::builtin().unwrap_or_else(|e| panic!("{e}"));
    let mut raw = serde_json::to_value(input(Action::SandboxCreate, PolicyRequest::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    raw["action"] = "frobnicate".into();
    let decision = engine.evaluate_json(raw);
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.rule_ids(), vec!["policy.no_allow_rule"]);
}

#[test]
fn file_transfers_are_decided_as_their_own_actions() {
    // The default bundle plus an operator rule that forbids uploads.
    let repo = repo_policies();
    let main =
        std::fs::read_to_string(repo.join("ztee/main.rego")).unwrap_or_else(|e| panic!("{e}"));
    let data = std::fs::read_to_string(repo.join("data.json")).unwrap_or_else(|e| panic!("{e}"));
    let dir = bundle_of(&[
        ("ztee/main.rego", &main),
        ("data.json", &data),
        (
            "ztee/no_uploads.rego",
            "package ztee.main\nimport rego.v1\ndeny contains {\"rule\": \"operator.no_uploads\", \"message\": \"uploads are disabled\"} if input.action == \"file.write\"\n",
        ),
    ]);
    let engine =
        PolicyEngine::compile(&Bundle::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let upload = engine.evaluate(&input(Action::FileWrite, PolicyRequest::default()));
    assert_eq!(upload.verdict, Verdict::Deny);
    assert_eq!(upload.rule_ids(), vec!["operator.no_uploads"]);
    let download = engine.evaluate(&input(Action::FileRead, PolicyRequest::default()));
    assert_eq!(download.verdict, Verdict::Allow);
    assert_eq!(download.rule_ids(), vec!["risk.file_transfer"]);
    let exec = engine.evaluate(&input(
        Action::SandboxExec,
        PolicyRequest {
            cmd: vec!["ls".into()],
            ..Default::default()
        },
    ));
    assert_eq!(exec.verdict, Verdict::Allow);
    assert_eq!(exec.rule_ids(), vec!["risk.code_execution"]);
}

#[test]
fn every_known_action_with_a_benign_input_is_allowed() {
    let engine = PolicyEngine::builtin().unwrap_or_else(|e| panic!("{e}"));
    let image = Some(format!("python@sha256:{}", "ab".repeat(32)));
    for action in [
        Action::SandboxCreate,
        Action::SandboxExec,
        Action::SandboxDelete,
        Action::Run,
        Action::FileWrite,
        Action::FileRead,
        Action::LlmChat,
        Action::ToolCall,
        Action::ImageAdmit,
        Action::Egress,
        Action::SecretUse,
    ] {
        let request = PolicyRequest {
            image: image.clone(),
            provider: (action == Action::LlmChat).then(|| ztee_policy::Provider {
                name: "local".into(),
                external: false,
            }),
            tool: (action == Action::ToolCall).then(|| ztee_policy::ToolCall {
                name: "read_file".into(),
                args: serde_json::Value::Null,
            }),
            ..Default::default()
        };
        let decision = engine.evaluate(&input(action, request));
        assert_eq!(decision.verdict, Verdict::Allow, "{action}: {decision:?}");
    }
}
