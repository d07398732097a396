use std::path::PathBuf;

pub(crate) use crate::guest_text::sanitize_guest_text;

/// Everything that can go wrong between asking for a sandbox and getting a command's result.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest asset missing: {what} not found at {path} (build the guest assets with `make guest`, or set ZTEE_GUEST_DIR)")]
    AssetMissing { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VMM ({program}): {source}")]
    VmmSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM exited during boot ({status}); console: {console}")]
    VmmExited { status: String, console: String },
    #[error("the guest agent did not become ready within {0:?}")]
    BootTimeout(std::time::Duration),
    #[error("guest agent channel: {0}")]
    Protocol(#[from] ztee_wire::WireError),
    #[error("the guest agent failed authentication")]
    AgentAuthentication,
    #[error("the sandbox is gone (its VM stopped or its channel closed)")]
    ChannelClosed,
    /// The host stopped waiting: the guest did not do `what` within `waited`, so its VM was
    /// abandoned and killed.
    #[error("the guest did not {what} within {waited:?}; its VM was stopped")]
    GuestUnresponsive {
        what: &'static str,
        waited: std::time::Duration,
    },
    #[error("command not found in the sandbox: {0}")]
    CommandNotFound(String),
    #[error("permission denied in the sandbox: {0}")]
    PermissionDenied(String),
    #[error("no such file in the sandbox: {0}")]
    FileNotFound(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the guest reported an error: {0}")]
    Guest(String),
    #[error("file of {size} bytes exceeds the {limit}-byte transfer limit")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("QEMU control (QMP): {0}")]
    Qmp(String),
    #[error("Firecracker API: {0}")]
    FirecrackerApi(#[from] crate::backend::firecracker::api::ApiError),
    #[error("Firecracker: {0}")]
    Firecracker(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("VMM jail: {0}")]
    Jail(String),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
}

impl VmError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
