//! The log on a real filesystem: appends, concurrency, rotation, and every kind of tampering
//! `verify` must name.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ztee_audit::{
    read_records, verify, AuditConfig, AuditError, AuditLog, NodeKey, Payload, Problem, Query,
};

mod common;

use common::{config, event, segment, trusted_key};

/// Writes `n` events (checkpoint every 5, final checkpoint on close) and returns the audit dir.
fn write_log(data_dir: &Path, n: usize) -> PathBuf {
    common::append(data_dir, None, 0, n)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_untouched_log_verifies() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 12);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.events, 12);
    // 12 events with a checkpoint after every 5, and a final one on close: 5, 5, 2.
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.last_seq, 15);
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn the_chain_continues_when_the_log_is_reopened() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_log(tmp.path(), 3);
    let dir = write_log(tmp.path(), 4);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.events, 7);
}

#[test]
fn an_edited_record_is_named() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 8);
    let mut all = lines(&segment(&dir));
    assert!(all[3].contains("\"success\""));
    all[3] = all[3].replace("\"success\"", "\"failure\"");
    write_lines(&segment(&dir), &all);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("edit not detected"));
    assert_eq!(failure.line, 4);
    assert_eq!(failure.seq, Some(4));
    assert_eq!(failure.problem, Problem::Edited);
}

#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    // An attacker who re-hashes the edited line still cannot fix the next record's `prev`
    // without re-hashing everything after it, and then the checkpoint signature fails.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 8);
    let all = lines(&segment(&dir));
    let mut records: Vec<serde_json::Value> = all
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    records[1]["event"]["outcome"] = "denied".into();
    let body = {
        let mut copy = records[1].clone();
        if let Some(object) = copy.as_object_mut() {
            object.remove("hash");
        }
        serde_json::to_string(&copy).unwrap_or_default()
    };
    let rehashed = hash_prefix(&body);
    let mut edited = all.clone();
    edited[1] = rehashed;
    write_lines(&segment(&dir), &edited);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("edit not detected"));
    assert_eq!(failure.line, 3, "{failure}");
    assert_eq!(failure.problem, Problem::BrokenLink);
}

/// Re-creates the log's own line format (SHA-256 over the bytes before `,"hash":`) the way an
/// attacker who read docs/audit.md would.
fn hash_prefix(body: &str) -> String {
    use sha2::Digest as _;
    let prefix = &body[..body.len() - 1];
    let digest = hex::encode(sha2::Sha256::digest(prefix.as_bytes()));
    format!("{prefix},\"hash\":\"{digest}\"}}")
}

#[test]
fn a_deleted_record_is_named() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 8);
    let mut all = lines(&segment(&dir));
    all.remove(2);
    write_lines(&segment(&dir), &all);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("deletion not detected"));
    assert_eq!(failure.line, 3);
    assert_eq!(
        failure.problem,
        Problem::Missing {
            expected_seq: 3,
            found_seq: 4
        }
    );
}

#[test]
fn reordered_records_are_named() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 8);
    let mut all = lines(&segment(&dir));
    all.swap(1, 2);
    write_lines(&segment(&dir), &all);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("reordering not detected"));
    assert_eq!(failure.line, 2);
    assert_eq!(
        failure.problem,
        Problem::Missing {
            expected_seq: 2,
            found_seq: 3
        }
    );
}

#[test]
fn truncation_after_a_checkpoint_is_detected() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 12);
    let all = lines(&segment(&dir));
    assert_eq!(all.len(), 15);
    // Cut the last checkpoint and the two events before it: the chain itself is still intact.
    write_lines(&segment(&dir), &all[..12]);
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("truncation not detected"));
    assert_eq!(
        failure.problem,
        Problem::Truncated {
            checkpoint_seq: 15,
            last_seq: 12
        }
    );
}

#[test]
fn a_checkpoint_signed_by_another_key_is_rejected() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 6);
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    NodeKey::load_or_generate(other.path()).unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&dir, &trusted_key(other.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("foreign key accepted"));
    assert_eq!(failure.seq, Some(6));
    assert!(matches!(failure.problem, Problem::BadSignature { .. }));
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = NodeKey::load_or_generate(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let _log = AuditLog::open(config(tmp.path(), None), key).unwrap_or_else(|e| panic!("{e}"));
    let key = NodeKey::load_or_generate(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let second = AuditLog::open(config(tmp.path(), None), key);
    assert!(
        matches!(second, Err(AuditError::Locked { .. })),
        "{second:?}"
    );
}

#[test]
fn the_node_key_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    NodeKey::load_or_generate(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let path = tmp.path().join("keys").join(ztee_audit::PRIVATE_KEY_FILE);
    let mode = fs::metadata(&path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    assert_eq!(mode & 0o777, 0o600);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        NodeKey::load_or_generate(tmp.path()),
        Err(AuditError::KeyPermissions { .. })
    ));
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = NodeKey::load_or_generate(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open(
        AuditConfig {
            max_file_bytes: 2048,
            ..config(tmp.path(), None)
        },
        key,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..40 {
        log.append_blocking(event(i))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    log.close();
    let dir = tmp.path().join("audit");
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
    assert!(
        report.files >= 3,
        "expected rotation, got {} file(s)",
        report.files
    );
    assert_eq!(report.events, 40);

    // Deleting a whole middle file is a deletion too.
    fs::remove_file(dir.join("audit-000002.jsonl")).unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&dir, &trusted_key(tmp.path())).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("file deletion not detected"));
    assert!(
        matches!(failure.problem, Problem::Missing { .. }),
        "{failure}"
    );
    assert!(failure.file.ends_with("audit-000003.jsonl"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_append_into_one_chain() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = NodeKey::load_or_generate(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let log = Arc::new(
        AuditLog::open(
            AuditConfig {
                checkpoint_every: 50,
                ..config(tmp.path(), None)
            },
            key,
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut tasks = Vec::new();
    for task in 0..16 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let receipt = log.append(event(task * 100 + i)).await?;
                seqs.push(receipt.seq);
            }
            Ok::<_, AuditError>(seqs)
        }));
    }
    let mut all_seqs = Vec::new();
    for task in tasks {
        all_seqs.extend(
            task.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    log.close();
    all_seqs.sort_unstable();
    all_seqs.dedup();
    assert_eq!(
        all_seqs.len(),
        400,
        "every append got its own sequence number"
    );
    let report = verify(&tmp.path().join("audit"), &trusted_key(tmp.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.events, 400);
}

#[test]
fn search_filters_by_request_principal_and_time() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_log(tmp.path(), 9);
    let mut found = Vec::new();
    let query = Query {
        request_id: Some("req-4".to_string()),
        ..Query::default()
    };
    read_records(&dir, &query, |r| found.push(r)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.len(), 1);
    assert!(
        matches!(&found[0].payload, Payload::Event(e) if e.request_id.as_deref() == Some("req-4"))
    );

    let mut by_user = 0;
    let query = Query {
        principal: Some("user-1".to_string()),
        ..Query::default()
    };
    read_records(&dir, &query, |_| by_user += 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(by_user, 3); // events 1, 4, 7

    let mut future = 0;
    let query = Query {
        since: Some(std::time::SystemTime::now() + Duration::from_secs(60)),
        ..Query::default()
    };
    read_records(&dir, &query, |_| future += 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(future, 0);
}
