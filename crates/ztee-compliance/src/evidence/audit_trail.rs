//! The audit trail as a whole: does the hash chain verify against the node's key (10.3.2,
//! 10.3.4), and how far back does it reach (10.5.1)?

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use ztee_audit::{format_time, read_records, verify, Payload, PublicKey, Query};

use crate::ComplianceError;

#[derive(Debug, Clone, Serialize)]
pub struct AuditTrailEvidence {
    pub directory: String,
    /// Whether a trail exists at all (a gateway that never ran has none).
    pub present: bool,
    /// Key id of the public key the chain was checked against.
    pub trusted_key: Option<String>,
    pub verified: bool,
    /// The first bad record, when the chain does not verify.
    pub failure: Option<String>,
    pub segments: usize,
    pub bytes: u64,
    pub events: u64,
    pub checkpoints: u64,
    /// Events after the last signed checkpoint (intact in the chain, not yet signed).
    pub unsigned_tail: u64,
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    /// Days between the first event and now.
    pub span_days: Option<u64>,
    /// Segment files the operating system would let another user write (should be none).
    pub writable_by_others: Vec<String>,
}

pub fn gather(data_dir: &Path, audit_dir: &Path) -> Result<AuditTrailEvidence, ComplianceError> {
    let mut evidence = AuditTrailEvidence {
        directory: audit_dir.display().to_string(),
        present: audit_dir.is_dir(),
        trusted_key: None,
        verified: false,
        failure: None,
        segments: 0,
        bytes: 0,
        events: 0,
        checkpoints: 0,
        unsigned_tail: 0,
        first_event: None,
        last_event: None,
        span_days: None,
        writable_by_others: Vec::new(),
    };
    if !evidence.present {
        return Ok(evidence);
    }
    for entry in std::fs::read_dir(audit_dir).map_err(|source| ComplianceError::Io {
        path: audit_dir.to_path_buf(),
        source,
    })? {
        let entry = entry.map_err(|source| ComplianceError::Io {
            path: audit_dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let meta = entry.metadata().map_err(|source| ComplianceError::Io {
            path: entry.path(),
            source,
        })?;
        evidence.bytes += meta.len();
        if group_or_world_writable(&meta) {
            evidence.writable_by_others.push(name);
        }
    }
    match PublicKey::from_data_dir(data_dir) {
        Ok(key) => {
            evidence.trusted_key = Some(key.key_id());
            let report = verify(audit_dir, &key)?;
            evidence.verified = report.is_ok();
            evidence.failure = report.failure.as_ref().map(ToString::to_string);
            evidence.segments = report.files;
            evidence.events = report.events;
            evidence.checkpoints = report.checkpoints;
            evidence.unsigned_tail = report.unsigned_tail;
        }
        Err(e) => {
            evidence.failure = Some(format!("the node's public key cannot be read: {e}"));
        }
    }
    let (mut first, mut last): (Option<SystemTime>, Option<SystemTime>) = (None, None);
    // A tampered trail may not parse to the end; the span is then what could be read.
    let read = read_records(audit_dir, &Query::default(), |record| {
        if let Payload::Event(event) = record.payload {
            first.get_or_insert(event.time);
            last = Some(event.time);
        }
    });
    if let Err(e) = read {
        if evidence.failure.is_none() {
            evidence.failure = Some(e.to_string());
            evidence.verified = false;
        }
    }
    evidence.first_event = first.map(format_time);
    evidence.last_event = last.map(format_time);
    evidence.span_days = first.map(|t| {
        SystemTime::now()
            .duration_since(t)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0)
    });
    evidence.writable_by_others.sort();
    Ok(evidence)
}

fn group_or_world_writable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o022 != 0
}
