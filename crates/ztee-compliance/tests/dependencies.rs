//! The report reads an installation through ztee-state (configuration schema and state store),
//! never through the gateway: linking ztee-server would pull the whole request path (HTTP
//! server, VM engine) into an auditor's tool, and let it drift from what it only observes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Each workspace package with the workspace packages it depends on for building or running
/// (development-only dependencies left out: they never reach the crate's users).
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("package name").to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().expect("dependency name").to_owned())
                .filter(|name| members.contains(name))
                .collect();
            (p["name"].as_str().expect("package name").to_owned(), deps)
        })
        .collect()
}

/// `root` and every workspace package it reaches through non-development dependencies.
fn closure(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            todo.extend(graph.get(&name).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_report_does_not_link_the_gateway() {
    let graph = workspace_dependencies();
    let reached = closure(&graph, "ztee-compliance");
    // The walk itself works: the state crate is how the report reads configuration and keys.
    assert!(reached.contains("ztee-state"), "{reached:?}");
    assert!(
        !reached.contains("ztee-server"),
        "ztee-compliance reaches ztee-server through {reached:?}; read state through ztee-state"
    );
}

#[test]
fn the_state_crate_stays_below_the_gateway_and_the_vm() {
    let graph = workspace_dependencies();
    let reached = closure(&graph, "ztee-state");
    for forbidden in ["ztee-server", "ztee-vm"] {
        assert!(
            !reached.contains(forbidden),
            "ztee-state reaches {forbidden} through {reached:?}"
        );
    }
}
