//! Reading records back for `tail` and `search`. Reading does not verify the chain (that is
//! [`crate::verify()`]'s job) but does reject lines that are not records.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use crate::record::{self, LineError, Payload, Record};
use crate::segment::{list_segments, split_lines};
use crate::{AuditError, EventType};

/// A filter over events; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub request_id: Option<String>,
    /// Matches the principal's subject exactly.
    pub principal: Option<String>,
    pub tenant: Option<String>,
    pub event_type: Option<EventType>,
    /// Events at or after this time.
    pub since: Option<SystemTime>,
    /// Include checkpoint records (only when no event field is filtered on).
    pub include_checkpoints: bool,
}

impl Query {
    pub fn matches(&self, record: &Record) -> bool {
        let event = match &record.payload {
            Payload::Event(event) => event,
            Payload::Checkpoint(_) => {
                return self.include_checkpoints
                    && self.request_id.is_none()
                    && self.principal.is_none()
                    && self.tenant.is_none()
                    && self.event_type.is_none();
            }
        };
        self.request_id
            .as_ref()
            .is_none_or(|id| event.request_id.as_ref() == Some(id))
            && self
                .principal
                .as_ref()
                .is_none_or(|p| &event.principal.subject == p)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| &event.principal.tenant == t)
            && self.event_type.is_none_or(|t| event.event_type == t)
            && self.since.is_none_or(|since| event.time >= since)
    }
}

/// Calls `visit` for every record in `dir` (all segments, in order) that `query` matches.
pub fn read_records(
    dir: &Path,
    query: &Query,
    mut visit: impl FnMut(Record),
) -> Result<(), AuditError> {
    for (_, path) in list_segments(dir)? {
        let bytes = fs::read(&path).map_err(|e| AuditError::io(&path, e))?;
        let (lines, _torn) = split_lines(&bytes);
        for (index, line) in lines.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            let record = record::decode(line).map_err(|e| AuditError::BadRecord {
                path: path.clone(),
                line: index + 1,
                reason: match e {
                    LineError::Malformed(reason) => reason,
                    LineError::HashMismatch => {
                        "hash does not match content (edited?); run `ztee audit verify`".to_string()
                    }
                },
            })?;
            if query.matches(&record) {
                visit(record);
            }
        }
    }
    Ok(())
}

/// Parses a `--since` value: an RFC 3339 time (`2026-11-29T01:00:00Z`) or an age relative to
/// now (`15m`, `2h`, `7d`).
pub fn parse_since(text: &str) -> Result<SystemTime, AuditError> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    let age = humantime::parse_duration(text).map_err(|_| AuditError::InvalidValue {
        field: "--since",
        value: text.to_string(),
        expected: "an RFC 3339 time like 2026-11-29T01:00:00Z or an age like 15m, 2h, 7d",
    })?;
    SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| AuditError::InvalidValue {
            field: "--since",
            value: text.to_string(),
            expected: "an age that does not reach before 1970",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_accepts_times_and_ages() {
        let t = parse_since("2026-11-29T01:00:00Z").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(crate::format_time(t), "2026-11-29T01:00:00.000000Z");
        let age = parse_since("2h").unwrap_or_else(|e| panic!("{e}"));
        let elapsed = SystemTime::now().duration_since(age).unwrap_or_default();
        assert!(elapsed >= Duration::from_secs(7199) && elapsed < Duration::from_secs(7300));
        assert!(parse_since("yesterday").is_err());
    }
}
