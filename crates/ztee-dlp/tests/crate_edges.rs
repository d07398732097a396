//! The HTTP API is opt-in: a crate that only scans (the egress proxy, the microVM engine) must not
//! build an HTTP server stack through ztee-dlp. Checked on the resolved dependency graph, which is
//! what a build of that crate alone compiles.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

use std::path::Path;
use std::process::Command;

/// The crates `package` compiles for itself (normal edges only), one name per entry.
fn normal_dependencies(package: &str, features: &[&str]) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut command = Command::new(env!("CARGO"));
    command
        .arg("tree")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", package, "-e", "normal", "--prefix", "none"]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command.output().expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The server framework only: hyper itself is also the HTTP client's transport (reqwest).
const SERVER_STACK: &[&str] = &["axum", "axum-core"];

fn server_crates_in(package: &str, features: &[&str]) -> Vec<String> {
    normal_dependencies(package, features)
        .into_iter()
        .filter(|name| SERVER_STACK.contains(&name.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn scanning_crates_do_not_build_the_http_server() {
    for package in ["ztee-dlp", "ztee-egress", "ztee-vm"] {
        let found = server_crates_in(package, &[]);
        assert!(
            found.is_empty(),
            "{package} pulls {found:?}: ztee-dlp's `http` feature must stay opt-in"
        );
    }
}

#[test]
fn the_http_feature_brings_the_router() {
    let found = server_crates_in("ztee-dlp", &["http"]);
    assert!(found.iter().any(|n| n == "axum"), "{found:?}");
}
