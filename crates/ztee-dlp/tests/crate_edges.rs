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

/// The crates `package` names in its own manifest (normal edges, depth 1), one name per entry.
fn direct_dependencies(package: &str) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .arg("tree")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "-p", package, "-e", "normal", "--depth", "1", "--prefix", "depth",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix('1'))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The microVM engine runs VMs and relays their commands; scanning what leaves a sandbox belongs
/// to its callers (the gateway, the egress proxy, the command line's sandbox supervisor). The
/// engine still reaches ztee-dlp through ztee-egress, so only its own edge is checked.
#[test]
fn the_vm_engine_does_not_depend_on_dlp_itself() {
    let direct = direct_dependencies("ztee-vm");
    // Guards the guard: a parser that saw no edges would find no ztee-dlp either.
    assert!(direct.iter().any(|n| n == "ztee-wire"), "{direct:?}");
    assert!(
        !direct.iter().any(|n| n == "ztee-dlp"),
        "ztee-vm depends on ztee-dlp directly: {direct:?}"
    );
}
