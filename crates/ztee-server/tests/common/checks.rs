//! Check programs written in another language (the SDK checks under tests/e2b): each asserts as
//! it goes, prints one JSON line of what passed and measured last, and exits 0 only if every
//! check passed.

use std::time::Duration;

/// Runs `command` to its end within `limit` and returns its report. A failed, hung or silent
/// program fails the test with its output, naming it `what`.
pub async fn report(
    mut command: tokio::process::Command,
    limit: Duration,
    what: &str,
) -> serde_json::Value {
    let output = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{what} failed:\n{err}\n{out}");
    let last = out.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: no JSON report ({e}):\n{out}"))
}
