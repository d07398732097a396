//! Verification: walks every segment in order, re-computes each record's hash, checks the chain
//! links and sequence numbers, checks every checkpoint signature against the trusted node key, and
//! checks that the signed `head.json` is still covered by the log (so a truncation back past the
//! last checkpoint is caught). Stops at, and names, the first bad record.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::rfc3339;
use crate::key::PublicKey;
use crate::record::{self, checkpoint_message, LineError, Payload, Record, GENESIS_HASH};
use crate::segment::{list_segments, split_lines, HEAD_FILE};
use crate::AuditError;

/// What is wrong with the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Not a record at all (garbage, a partial line in the middle of the log, bad JSON).
    Malformed { reason: String },
    /// The record's content no longer matches its hash: it was edited.
    Edited,
    /// Sequence numbers jump forward: records were deleted.
    Missing { expected_seq: u64, found_seq: u64 },
    /// Sequence numbers go backwards or repeat: records were reordered or duplicated.
    OutOfOrder { expected_seq: u64, found_seq: u64 },
    /// Right sequence number but it does not chain to the previous record: replaced or reordered.
    BrokenLink,
    /// A checkpoint whose signature does not verify with the trusted key.
    BadSignature { key_id: String },
    /// The signed head says the log reached `checkpoint_seq`, but it ends at `last_seq`.
    Truncated { checkpoint_seq: u64, last_seq: u64 },
    /// The record at the signed head's position is not the signed one.
    HeadMismatch { checkpoint_seq: u64 },
    /// `head.json` is missing or unreadable although the log contains checkpoints.
    HeadMissing { reason: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Malformed { reason } => write!(f, "not a valid record: {reason}"),
            Problem::Edited => f.write_str("content does not match its hash (record was edited)"),
            Problem::Missing {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "expected seq {expected_seq}, found {found_seq}: {} record(s) deleted",
                found_seq - expected_seq
            ),
            Problem::OutOfOrder {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "expected seq {expected_seq}, found {found_seq}: records reordered or duplicated"
            ),
            Problem::BrokenLink => f.write_str(
                "does not chain to the previous record (a record before it was replaced, removed or reordered)",
            ),
            Problem::BadSignature { key_id } => write!(
                f,
                "checkpoint signature (key {key_id}) does not verify with the trusted node key"
            ),
            Problem::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "log truncated: the signed head covers seq {checkpoint_seq} but the log ends at seq {last_seq}"
            ),
            Problem::HeadMismatch { checkpoint_seq } => write!(
                f,
                "record {checkpoint_seq} is not the checkpoint recorded in the signed head"
            ),
            Problem::HeadMissing { reason } => write!(
                f,
                "the signed head ({HEAD_FILE}) is missing or invalid although the log has checkpoints: {reason}"
            ),
        }
    }
}

/// The first bad record: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    pub file: PathBuf,
    /// 1-based line number within `file` (0 when the problem is about the log as a whole).
    pub line: usize,
    /// The record's sequence number, when it could be read.
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub events: u64,
    pub checkpoints: u64,
    /// Sequence number of the last good record (0 for an empty log).
    pub last_seq: u64,
    pub last_checkpoint_seq: Option<u64>,
    /// Events after the last checkpoint: intact in the chain but not yet covered by a signature.
    pub unsigned_tail: u64,
    /// Bytes of an incomplete final line (a write interrupted by a crash, never acknowledged).
    pub torn_tail_bytes: usize,
    /// `None` when the log verified.
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies the log in `dir` against the trusted node key.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<VerifyReport, AuditError> {
    let segments = list_segments(dir)?;
    let mut report = VerifyReport {
        files: segments.len(),
        ..VerifyReport::default()
    };
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH;
    // The record at each checkpoint's position, to compare with the signed head afterwards.
    let mut checkpoint_hashes: Vec<(u64, [u8; 32], PathBuf, usize)> = Vec::new();
    let last_index = segments.len().saturating_sub(1);

    for (segment_index, (_, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let (lines, torn) = split_lines(&bytes);
        if let Some(torn) = torn {
            if segment_index == last_index {
                report.torn_tail_bytes = torn.len();
            } else {
                report.failure = Some(VerifyFailure {
                    file: path.clone(),
                    line: lines.len() + 1,
                    seq: None,
                    problem: Problem::Malformed {
                        reason: "incomplete line in a segment that is not the last".to_string(),
                    },
                });
                return Ok(report);
            }
        }
        for (index, line) in lines.iter().enumerate() {
            let fail = |seq: Option<u64>, problem: Problem| VerifyFailure {
                file: path.clone(),
                line: index + 1,
                seq,
                problem,
            };
            let record = match record::decode(line) {
                Ok(record) => record,
                Err(LineError::HashMismatch) => {
                    let seq = serde_json::from_slice::<Record>(line).ok().map(|r| r.seq);
                    report.failure = Some(fail(seq, Problem::Edited));
                    return Ok(report);
                }
                Err(LineError::Malformed(reason)) => {
                    report.failure = Some(fail(None, Problem::Malformed { reason }));
                    return Ok(report);
                }
            };
            if record.seq != expected_seq {
                let problem = if record.seq > expected_seq {
                    Problem::Missing {
                        expected_seq,
                        found_seq: record.seq,
                    }
                } else {
                    Problem::OutOfOrder {
                        expected_seq,
                        found_seq: record.seq,
                    }
                };
                report.failure = Some(fail(Some(record.seq), problem));
                return Ok(report);
            }
            if record.prev != prev_hash {
                report.failure = Some(fail(Some(record.seq), Problem::BrokenLink));
                return Ok(report);
            }
            match &record.payload {
                Payload::Event(_) => {
                    report.events += 1;
                    report.unsigned_tail += 1;
                }
                Payload::Checkpoint(checkpoint) => {
                    if !checkpoint_signature_ok(&record, key) {
                        report.failure = Some(fail(
                            Some(record.seq),
                            Problem::BadSignature {
                                key_id: checkpoint.key_id.clone(),
                            },
                        ));
                        return Ok(report);
                    }
                    report.checkpoints += 1;
                    report.last_checkpoint_seq = Some(record.seq);
                    report.unsigned_tail = 0;
                    checkpoint_hashes.push((record.seq, record.hash, path.clone(), index + 1));
                }
            }
            report.last_seq = record.seq;
            expected_seq = record.seq + 1;
            prev_hash = record.hash;
        }
    }

    report.failure = check_head(dir, key, &report, &checkpoint_hashes);
    Ok(report)
}

fn checkpoint_signature_ok(record: &Record, key: &PublicKey) -> bool {
    let Payload::Checkpoint(checkpoint) = &record.payload else {
        return false;
    };
    let mut signature = [0u8; 64];
    if hex::decode_to_slice(&checkpoint.signature, &mut signature).is_err() {
        return false;
    }
    let message = checkpoint_message(record.seq, &record.prev, &rfc3339::format(checkpoint.time));
    key.verify(&message, &signature)
}

fn check_head(
    dir: &Path,
    key: &PublicKey,
    report: &VerifyReport,
    checkpoints: &[(u64, [u8; 32], PathBuf, usize)],
) -> Option<VerifyFailure> {
    let head_path = dir.join(HEAD_FILE);
    let whole_log = |problem: Problem| VerifyFailure {
        file: head_path.clone(),
        line: 0,
        seq: None,
        problem,
    };
    let head = match fs::read(&head_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (!checkpoints.is_empty()).then(|| {
                whole_log(Problem::HeadMissing {
                    reason: "file not found".to_string(),
                })
            });
        }
        Err(e) => {
            return Some(whole_log(Problem::HeadMissing {
                reason: e.to_string(),
            }))
        }
    };
    let head_line = head.strip_suffix(b"\n").unwrap_or(&head);
    let head_record = match record::decode(head_line) {
        Ok(record) if matches!(record.payload, Payload::Checkpoint(_)) => record,
        Ok(_) => {
            return Some(whole_log(Problem::HeadMissing {
                reason: "it does not hold a checkpoint".to_string(),
            }))
        }
        Err(e) => {
            return Some(whole_log(Problem::HeadMissing {
                reason: format!("{e:?}"),
            }))
        }
    };
    if !checkpoint_signature_ok(&head_record, key) {
        let key_id = match &head_record.payload {
            Payload::Checkpoint(c) => c.key_id.clone(),
            Payload::Event(_) => String::new(),
        };
        return Some(VerifyFailure {
            file: head_path,
            line: 1,
            seq: Some(head_record.seq),
            problem: Problem::BadSignature { key_id },
        });
    }
    if head_record.seq > report.last_seq {
        let (file, line) = checkpoints
            .last()
            .map(|(_, _, file, line)| (file.clone(), *line))
            .unwrap_or((head_path, 0));
        return Some(VerifyFailure {
            file,
            line,
            seq: Some(report.last_seq),
            problem: Problem::Truncated {
                checkpoint_seq: head_record.seq,
                last_seq: report.last_seq,
            },
        });
    }
    match checkpoints.iter().find(|(seq, ..)| *seq == head_record.seq) {
        Some((_, hash, ..)) if *hash == head_record.hash => None,
        found => {
            let (file, line) = found
                .map(|(_, _, file, line)| (file.clone(), *line))
                .unwrap_or((head_path, 0));
            Some(VerifyFailure {
                file,
                line,
                seq: Some(head_record.seq),
                problem: Problem::HeadMismatch {
                    checkpoint_seq: head_record.seq,
                },
            })
        }
    }
}
