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
