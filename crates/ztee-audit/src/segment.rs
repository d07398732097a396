//! Log files ("segments"): `audit-000001.jsonl`, `audit-000002.jsonl`, ... in one directory. The
//! chain continues across them: the first record of a segment points at the last of the previous.

use std::fs;
use std::path::{Path, PathBuf};

use crate::AuditError;

pub const HEAD_FILE: &str = "head.json";
pub const LOCK_FILE: &str = "writer.lock";

pub fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("audit-{number:06}.jsonl"))
}

/// The segment files in `dir`, in chain order.
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix("audit-")
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .filter(|digits| digits.len() == 6)
            .and_then(|digits| digits.parse::<u32>().ok())
        else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    segments.sort_by_key(|(number, _)| *number);
    Ok(segments)
}

/// Splits a segment's bytes into lines. A final piece without a newline is returned separately:
/// it is a write a crash interrupted (never acknowledged) or a truncation.
pub fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, Option<&[u8]>) {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // `split` yields a last empty piece when the data ends with a newline.
    let last = lines.pop().filter(|piece| !piece.is_empty());
    (lines, last)
}
