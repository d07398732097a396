//! Verification: walks every segment in order, re-computes each record's hash, checks the chain
//! links and sequence numbers, checks every checkpoint signature against the trusted node key, and
//! checks that the signed `head.json` is still covered by the log (so a truncation back past the
//! last checkpoint is caught). Stops at, and names, the first bad record.
//!
//! The log and `head.json` live in one directory, so a copy of that directory taken earlier is a
//! valid, shorter log: a rollback of the whole directory passes [`verify`]. [`verify_with`] also
//! checks the log against what was seen outside it: a witness file of every signed checkpoint
//! (written by the writer to a place configured apart from the data directory), and a head
//! exported earlier. The log must still contain every witnessed checkpoint, and the exported
//! head, at their positions.

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
    /// The witness saw a checkpoint at `witnessed_seq`, but the log ends at `last_seq`.
    RolledBack { witnessed_seq: u64, last_seq: u64 },
    /// The record at a witnessed checkpoint's position is not the witnessed checkpoint.
    WitnessMismatch { witnessed_seq: u64 },
    /// The witness file cannot be read or holds something that is not a checkpoint.
    WitnessInvalid { reason: String },
    /// An exported head says the log had `expected_records`, but it ends at `last_seq`.
    BehindExpectedHead {
        expected_records: u64,
        last_seq: u64,
    },
    /// The record at the exported head's position does not have the exported hash.
    ExpectedHeadMismatch { expected_records: u64 },
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
            Problem::RolledBack {
                witnessed_seq,
                last_seq,
            } => write!(
                f,
                "log rolled back: the witness saw a signed checkpoint at seq {witnessed_seq}, but the log ends at seq {last_seq} ({} record(s) gone)",
                witnessed_seq.saturating_sub(*last_seq)
            ),
            Problem::WitnessMismatch { witnessed_seq } => write!(
                f,
                "record {witnessed_seq} is not the checkpoint the witness saw at that position: the log was rewritten from there or earlier"
            ),
            Problem::WitnessInvalid { reason } => write!(f, "witness unusable: {reason}"),
            Problem::BehindExpectedHead {
                expected_records,
                last_seq,
            } => write!(
                f,
                "log rolled back or truncated: the expected head has {expected_records} records, but the log ends at seq {last_seq}"
            ),
            Problem::ExpectedHeadMismatch { expected_records } => write!(
                f,
                "record {expected_records} does not have the expected head's hash: the log was rewritten from there or earlier"
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
    /// The last good record, to export and pass back later as an expected head (`None` for an
    /// empty log).
    pub head: Option<ExportedHead>,
    /// The highest checkpoint sequence number in the witness, when one was checked.
    pub witnessed_seq: Option<u64>,
    /// `None` when the log verified.
    pub failure: Option<VerifyFailure>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// The head of a log as exported for later comparison: how many records it had and the hash
/// of the last one. Written `<records>:<hash hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedHead {
    pub records: u64,
    pub hash: [u8; 32],
}

impl fmt::Display for ExportedHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.records, hex::encode(self.hash))
    }
}

impl std::str::FromStr for ExportedHead {
    type Err = AuditError;

    fn from_str(text: &str) -> Result<Self, AuditError> {
        let invalid = || AuditError::InvalidValue {
            field: "exported head",
            value: text.to_string(),
            expected: "<records>:<64 hex digits>, as printed by `ztee audit verify`",
        };
        let (records, hash_hex) = text.trim().split_once(':').ok_or_else(invalid)?;
        let records = records.parse::<u64>().map_err(|_| invalid())?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| invalid())?;
        if records == 0 {
            return Err(invalid());
        }
        Ok(ExportedHead { records, hash })
    }
}

impl Serialize for ExportedHead {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What to check beyond the log itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// A witness file (see [`crate::AuditConfig::witness`]).
    pub witness: Option<PathBuf>,
    /// A head exported earlier.
    pub expected_head: Option<ExportedHead>,
}

/// Verifies the log in `dir` against the trusted node key.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<VerifyReport, AuditError> {
    verify_with(dir, key, &VerifyOptions::default())
}

/// [`verify`], and also against a witness and an exported head. When the log itself verifies, a
/// witnessed checkpoint beyond its end fails with [`Problem::RolledBack`] and one that differs
/// from the log's record at its position with [`Problem::WitnessMismatch`]; an unreadable,
/// edited or foreign-signed witness fails too. An exported head fails with
/// [`Problem::BehindExpectedHead`] or [`Problem::ExpectedHeadMismatch`].
pub fn verify_with(
    dir: &Path,
    key: &PublicKey,
    options: &VerifyOptions,
) -> Result<VerifyReport, AuditError> {
    let segments = list_segments(dir)?;
    let mut report = VerifyReport {
        files: segments.len(),
        ..VerifyReport::default()
    };
    // Read the witness first: the walk below keeps the hashes of the records it names.
    let witness = options
        .witness
        .as_deref()
        .map(|path| read_witness(path, key));
    let mut wanted: Vec<u64> = match &witness {
        Some(Ok(entries)) => entries.iter().map(|e| e.seq).collect(),
        _ => Vec::new(),
    };
    wanted.extend(options.expected_head.map(|h| h.records));
    wanted.sort_unstable();
    wanted.dedup();
    let mut kept = Kept::default();
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
            if wanted.binary_search(&record.seq).is_ok() {
                kept.records
                    .push((record.seq, record.hash, path.clone(), index + 1));
            }
            report.last_seq = record.seq;
            expected_seq = record.seq + 1;
            prev_hash = record.hash;
        }
    }

    if report.last_seq > 0 {
        report.head = Some(ExportedHead {
            records: report.last_seq,
            hash: prev_hash,
        });
    }
    kept.last_file = segments
        .last()
        .map_or_else(|| dir.to_path_buf(), |(_, p)| p.clone());
    report.failure = check_head(dir, key, &report, &checkpoint_hashes);
    if let Some(witness) = witness {
        let entries = match witness {
            Ok(entries) => entries,
            Err(failure) => {
                report.failure = report.failure.or(Some(*failure));
                return Ok(report);
            }
        };
        report.witnessed_seq = entries.iter().map(|e| e.seq).max();
        if report.failure.is_none() {
            report.failure = options
                .witness
                .as_deref()
                .and_then(|path| check_witness(path, &entries, &report, &kept));
        }
    }
    if let (None, Some(expected)) = (&report.failure, options.expected_head) {
        report.failure = check_expected_head(expected, &report, &kept);
    }
    Ok(report)
}

/// Records the walk kept for the checks after it: `(seq, hash, file, line)` of the records at
/// the witnessed and expected positions, in log order, and the last segment.
#[derive(Default)]
struct Kept {
    records: Vec<(u64, [u8; 32], PathBuf, usize)>,
    last_file: PathBuf,
}

impl Kept {
    /// `None` when the kept record at `seq` has `hash`; otherwise where the log differs: that
    /// record's file and line, or the last segment when no record was kept there.
    fn mismatch(&self, seq: u64, hash: &[u8; 32]) -> Option<(PathBuf, usize)> {
        match self.records.binary_search_by_key(&seq, |r| r.0) {
            Ok(i) if self.records[i].1 == *hash => None,
            Ok(i) => Some((self.records[i].2.clone(), self.records[i].3)),
            Err(_) => Some((self.last_file.clone(), 0)),
        }
    }
}

/// One checkpoint the witness saw, and the witness line it is on.
struct WitnessEntry {
    seq: u64,
    hash: [u8; 32],
    line: usize,
}

/// Reads and checks every entry of a witness file: each must be a checkpoint record, intact, and
/// signed by the trusted key. A final line without a newline is a write cut short by a crash and
/// is not an entry.
fn read_witness(path: &Path, key: &PublicKey) -> Result<Vec<WitnessEntry>, Box<VerifyFailure>> {
    let fail = |line: usize, seq: Option<u64>, problem: Problem| {
        Box::new(VerifyFailure {
            file: path.to_path_buf(),
            line,
            seq,
            problem,
        })
    };
    let bytes = fs::read(path).map_err(|e| {
        fail(
            0,
            None,
            Problem::WitnessInvalid {
                reason: format!("cannot read it: {e}"),
            },
        )
    })?;
    let (lines, _torn) = split_lines(&bytes);
    let mut entries = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let invalid = |reason: String| fail(index + 1, None, Problem::WitnessInvalid { reason });
        let record = match record::decode(line) {
            Ok(record) => record,
            Err(LineError::HashMismatch) => {
                return Err(invalid(
                    "entry was edited (its content does not match its hash)".to_string(),
                ))
            }
            Err(LineError::Malformed(reason)) => {
                return Err(invalid(format!("not a checkpoint record: {reason}")))
            }
        };
        let Payload::Checkpoint(checkpoint) = &record.payload else {
            return Err(invalid(
                "an event record; a witness holds only checkpoints".to_string(),
            ));
        };
        if !checkpoint_signature_ok(&record, key) {
            return Err(fail(
                index + 1,
                Some(record.seq),
                Problem::BadSignature {
                    key_id: checkpoint.key_id.clone(),
                },
            ));
        }
        entries.push(WitnessEntry {
            seq: record.seq,
            hash: record.hash,
            line: index + 1,
        });
    }
    Ok(entries)
}

/// Every checkpoint the witness saw must be in the log, at its position, byte for byte (equal
/// hashes, and through the chain, an equal history before it).
fn check_witness(
    witness: &Path,
    entries: &[WitnessEntry],
    report: &VerifyReport,
    kept: &Kept,
) -> Option<VerifyFailure> {
    let mut by_seq: Vec<&WitnessEntry> = entries.iter().collect();
    by_seq.sort_by_key(|e| e.seq);
    for entry in &by_seq {
        if entry.seq > report.last_seq {
            // Name the furthest point the witness saw: that is how far the log was rolled back.
            let furthest = by_seq.last().unwrap_or(entry);
            return Some(VerifyFailure {
                file: witness.to_path_buf(),
                line: furthest.line,
                seq: Some(furthest.seq),
                problem: Problem::RolledBack {
                    witnessed_seq: furthest.seq,
                    last_seq: report.last_seq,
                },
            });
        }
        if let Some((file, line)) = kept.mismatch(entry.seq, &entry.hash) {
            return Some(VerifyFailure {
                file,
                line,
                seq: Some(entry.seq),
                problem: Problem::WitnessMismatch {
                    witnessed_seq: entry.seq,
                },
            });
        }
    }
    None
}

/// The log must hold the exported head: as many records at least, and the same hash at its
/// position.
fn check_expected_head(
    expected: ExportedHead,
    report: &VerifyReport,
    kept: &Kept,
) -> Option<VerifyFailure> {
    if expected.records > report.last_seq {
        return Some(VerifyFailure {
            file: kept.last_file.clone(),
            line: 0,
            seq: Some(report.last_seq),
            problem: Problem::BehindExpectedHead {
                expected_records: expected.records,
                last_seq: report.last_seq,
            },
        });
    }
    let (file, line) = kept.mismatch(expected.records, &expected.hash)?;
    Some(VerifyFailure {
        file,
        line,
        seq: Some(expected.records),
        problem: Problem::ExpectedHeadMismatch {
            expected_records: expected.records,
        },
    })
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
