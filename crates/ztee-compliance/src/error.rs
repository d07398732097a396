use std::path::PathBuf;

/// Why evidence could not be gathered. A control whose evidence is merely missing or bad is not
/// an error: it is reported as `not met`. These are the cases where no honest report can be made.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    #[error("{path}: not a ztee data directory (no such directory)")]
    NoDataDir { path: PathBuf },
    #[error("configuration: {0}")]
    Config(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit trail: {0}")]
    Audit(#[from] ztee_audit::AuditError),
    #[error("policy bundle: {0}")]
    Policy(#[from] ztee_policy::PolicyError),
    #[error("image store: {0}")]
    Images(#[from] ztee_supply::Error),
    #[error("state database: {0}")]
    State(String),
}
