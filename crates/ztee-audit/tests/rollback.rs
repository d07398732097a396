//! Rollback of a whole data directory to an older, self-consistent state: older segments and an
//! older `head.json`. The log alone cannot tell; a witness kept elsewhere, or a head exported
//! earlier, can.

use std::fs;
use std::path::{Path, PathBuf};

use ztee_audit::{
    verify, verify_with, AuditError, AuditLog, ExportedHead, NodeKey, Problem, VerifyOptions,
};

mod common;

use common::{append, config, event, segment, trusted_key};

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn with_witness(witness: &Path) -> VerifyOptions {
    VerifyOptions {
        witness: Some(witness.to_path_buf()),
        ..VerifyOptions::default()
    }
}

/// Rolls the data directory back to the checkpoint at line `checkpoint_line` (1-based): the log is
/// truncated right after it and `head.json` becomes a copy of it, exactly as a restore of an
/// older backup (or an attacker who kept one) would leave it.
fn roll_back_to(dir: &Path, checkpoint_line: usize) {
    let log = read(&segment(dir));
    let kept: Vec<&str> = log.lines().take(checkpoint_line).collect();
    let checkpoint = kept[checkpoint_line - 1];
    assert!(checkpoint.contains("\"checkpoint\""), "{checkpoint}");
    fs::write(segment(dir), kept.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.join("head.json"), format!("{checkpoint}\n")).unwrap_or_else(|e| panic!("{e}"));
}

/// Data directory and witness in two separate places, as deployed.
struct Setup {
    _data: tempfile::TempDir,
    _elsewhere: tempfile::TempDir,
    data_dir: PathBuf,
    witness: PathBuf,
}

fn setup() -> Setup {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let elsewhere = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    Setup {
        data_dir: data.path().to_path_buf(),
        witness: elsewhere.path().join("audit.witness"),
        _data: data,
        _elsewhere: elsewhere,
    }
}

#[test]
fn every_checkpoint_is_appended_to_the_witness() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 12);
    // Checkpoints at seq 6 and 12, and at 15 when the log closes (2 events after the last).
    let witness = read(&s.witness);
    let log = read(&segment(&dir));
    let checkpoints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"checkpoint\""))
        .collect();
    assert_eq!(checkpoints.len(), 3);
    assert_eq!(witness.lines().collect::<Vec<_>>(), checkpoints);
    let report = verify_with(&dir, &trusted_key(&s.data_dir), &with_witness(&s.witness))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.witnessed_seq, Some(15));
    // The log may grow past what the witness saw (events after the last checkpoint).
    let key = NodeKey::load_or_generate(&s.data_dir).unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open(config(&s.data_dir, None), key).unwrap_or_else(|e| panic!("{e}"));
    log.append_blocking(event(99))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    let report = verify_with(&dir, &trusted_key(&s.data_dir), &with_witness(&s.witness))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_ok(), "{:?}", report.failure);
}

#[test]
fn rollback_to_an_older_checkpoint_is_caught_by_the_witness_only() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 10);
    // Lines: events 1-5, checkpoint 6, events 7-11, checkpoint 12.
    roll_back_to(&dir, 6);
    let key = trusted_key(&s.data_dir);

    // Without a witness the rolled-back directory is a valid, shorter log: nothing in it says
    // that it once went further. This is the limit the witness exists for.
    let alone = verify(&dir, &key).unwrap_or_else(|e| panic!("{e}"));
    assert!(alone.is_ok(), "{:?}", alone.failure);
    assert_eq!(alone.last_seq, 6);

    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("rollback not detected"));
    assert_eq!(
        failure.problem,
        Problem::RolledBack {
            witnessed_seq: 12,
            last_seq: 6
        }
    );
    assert_eq!(failure.file, s.witness);
    assert_eq!(failure.line, 2);
    let message = failure.to_string();
    assert!(message.contains("rolled back"), "{message}");
    assert!(
        message.contains("seq 12") && message.contains("seq 6"),
        "{message}"
    );
}

#[test]
fn a_truncation_inside_the_witnessed_range_is_caught() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 10);
    // Cut back to seq 9, between two checkpoints, with head.json at the older checkpoint.
    let log = read(&segment(&dir));
    let kept: Vec<&str> = log.lines().take(9).collect();
    fs::write(segment(&dir), kept.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.join("head.json"), format!("{}\n", kept[5])).unwrap_or_else(|e| panic!("{e}"));
    let key = trusted_key(&s.data_dir);
    assert!(verify(&dir, &key).unwrap_or_else(|e| panic!("{e}")).is_ok());
    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.failure.map(|f| f.problem),
        Some(Problem::RolledBack {
            witnessed_seq: 12,
            last_seq: 9
        })
    );
}

#[test]
fn a_history_rewritten_and_re_signed_is_caught() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 10);
    // Someone with the node key (it lives on the same host) rolls back to seq 6 and writes other
    // events after it, without the witness: a longer, validly signed, different history.
    roll_back_to(&dir, 6);
    append(&s.data_dir, None, 100, 110);
    let key = trusted_key(&s.data_dir);
    let alone = verify(&dir, &key).unwrap_or_else(|e| panic!("{e}"));
    assert!(alone.is_ok(), "{:?}", alone.failure);
    assert!(alone.last_seq > 12);

    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("rewrite not detected"));
    assert_eq!(
        failure.problem,
        Problem::WitnessMismatch { witnessed_seq: 12 }
    );
    // Named where the log differs: the record at seq 12.
    assert_eq!(failure.file, segment(&dir));
    assert_eq!((failure.line, failure.seq), (12, Some(12)));
}

#[test]
fn an_edit_inside_the_witnessed_range_still_fails_first_in_the_chain() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 10);
    let log = read(&segment(&dir)).replacen("req-3", "req-X", 1);
    fs::write(segment(&dir), log).unwrap_or_else(|e| panic!("{e}"));
    let report = verify_with(&dir, &trusted_key(&s.data_dir), &with_witness(&s.witness))
        .unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("edit not detected"));
    assert_eq!((failure.problem, failure.seq), (Problem::Edited, Some(4)));
}

#[test]
fn a_damaged_or_missing_witness_fails_verification() {
    let s = setup();
    let dir = append(&s.data_dir, Some(&s.witness), 0, 10);
    let key = trusted_key(&s.data_dir);

    // An entry signed by another key (someone wrote their own checkpoint into the witness).
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let other_witness = other.path().join("w");
    append(other.path(), Some(&other_witness), 0, 5);
    let forged = read(&s.witness) + &read(&other_witness);
    fs::write(&s.witness, forged).unwrap_or_else(|e| panic!("{e}"));
    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("forged entry accepted"));
    assert!(
        matches!(failure.problem, Problem::BadSignature { .. }),
        "{failure}"
    );
    assert_eq!(
        (failure.file.as_path(), failure.line),
        (s.witness.as_path(), 3)
    );

    // Not a checkpoint at all.
    fs::write(&s.witness, "{\"not\":\"a record\"}\n").unwrap_or_else(|e| panic!("{e}"));
    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    let failure = report.failure.unwrap_or_else(|| panic!("garbage accepted"));
    assert!(
        matches!(failure.problem, Problem::WitnessInvalid { .. }),
        "{failure}"
    );

    // Missing: asked for, so its absence is a failure, not a pass.
    fs::remove_file(&s.witness).unwrap_or_else(|e| panic!("{e}"));
    let report =
        verify_with(&dir, &key, &with_witness(&s.witness)).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("missing witness accepted"));
    assert!(
        matches!(failure.problem, Problem::WitnessInvalid { .. }),
        "{failure}"
    );
}

#[test]
fn a_witness_inside_the_audit_directory_is_refused() {
    let s = setup();
    let inside = s.data_dir.join("audit").join("witness");
    let key = NodeKey::load_or_generate(&s.data_dir).unwrap_or_else(|e| panic!("{e}"));
    let opened = AuditLog::open(config(&s.data_dir, Some(&inside)), key);
    assert!(
        matches!(
            opened,
            Err(AuditError::InvalidValue {
                field: "witness",
                ..
            })
        ),
        "{opened:?}"
    );
}

#[test]
fn an_exported_head_must_still_be_in_the_log() {
    let s = setup();
    let dir = append(&s.data_dir, None, 0, 10);
    let key = trusted_key(&s.data_dir);
    let report = verify(&dir, &key).unwrap_or_else(|e| panic!("{e}"));
    let head = report.head.unwrap_or_else(|| panic!("no head reported"));
    assert_eq!(head.records, 12);
    // The printed form parses back.
    let parsed: ExportedHead = head.to_string().parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, head);
    assert!("12".parse::<ExportedHead>().is_err());
    assert!("12:abcd".parse::<ExportedHead>().is_err());
    let expecting = VerifyOptions {
        expected_head: Some(head),
        ..VerifyOptions::default()
    };

    // The log grows: the exported head is a prefix of it.
    append(&s.data_dir, None, 10, 13);
    let grown = verify_with(&dir, &key, &expecting).unwrap_or_else(|e| panic!("{e}"));
    assert!(grown.is_ok(), "{:?}", grown.failure);

    // Rolled back behind it.
    roll_back_to(&dir, 6);
    let report = verify_with(&dir, &key, &expecting).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.failure.map(|f| f.problem),
        Some(Problem::BehindExpectedHead {
            expected_records: 12,
            last_seq: 6
        })
    );

    // Rewritten past it with other events.
    append(&s.data_dir, None, 100, 110);
    let report = verify_with(&dir, &key, &expecting).unwrap_or_else(|e| panic!("{e}"));
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("rewrite not detected"));
    assert_eq!(
        failure.problem,
        Problem::ExpectedHeadMismatch {
            expected_records: 12
        }
    );
    assert_eq!((failure.line, failure.seq), (12, Some(12)));
}

#[test]
fn a_witness_that_cannot_be_written_stops_the_log() {
    let s = setup();
    let key = NodeKey::load_or_generate(&s.data_dir).unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open(config(&s.data_dir, Some(&s.witness)), key)
        .unwrap_or_else(|e| panic!("{e}"));
    log.append_blocking(event(0))
        .unwrap_or_else(|e| panic!("{e}"));
    // The witness location goes away (unmounted, removed): the next checkpoint cannot be
    // witnessed, and the log refuses events from then on rather than leave a gap.
    let parent = s.witness.parent().unwrap_or_else(|| panic!("no parent"));
    fs::remove_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    let checkpoint = log.checkpoint_blocking();
    assert!(
        matches!(&checkpoint, Err(AuditError::WriteFailed(reason)) if reason.contains("witness")),
        "{checkpoint:?}"
    );
    let after = log.append_blocking(event(1));
    assert!(
        matches!(after, Err(AuditError::WriteFailed(_))),
        "{after:?}"
    );
}
