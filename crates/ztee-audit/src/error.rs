use std::path::{Path, PathBuf};

/// Everything that can go wrong opening, writing, reading or verifying the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {field} {value:?}: expected {expected}")]
    InvalidValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{path}: key file is readable by others (mode {mode:o}); run `chmod 600` on it")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a usable Ed25519 key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("system random number generator failed: {0}")]
    Random(String),
    #[error("{dir}: the audit log is already open for writing by another process")]
    Locked { dir: PathBuf },
    #[error("{path} line {line}: cannot resume the audit log: {reason}; run `ztee audit verify`")]
    CorruptTail {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} line {line}: {reason}")]
    BadRecord {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A write or fsync failed; the writer stops accepting events (fail closed).
    #[error("audit log write failed, no further events are accepted: {0}")]
    WriteFailed(String),
    #[error("the audit log writer has stopped")]
    Closed,
}

impl AuditError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
