//! The messages each side may send. Encoded with postcard inside a frame.

use serde::{Deserialize, Serialize};

use crate::auth::Nonce;

/// Identifies one request (a command, a file transfer, a ping) within a session. Chosen by the
/// host; every guest message about that request carries it back.
pub type RequestId = u32;

/// Identifies one relayed egress connection within a session. Chosen by the guest when a program
/// in the sandbox connects to its egress proxy.
pub type StreamId = u32;

/// Host -> guest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// Starts (or restarts) a session. Sent in an unauthenticated frame.
    Hello {
        version: u16,
        nonce: Nonce,
    },
    /// Proves the host holds the VM secret. Sent in an unauthenticated frame.
    Confirm {
        proof: [u8; 32],
    },
    /// Hands a VM to one sandbox. Sent once, before any user code runs: snapshot clones share
    /// RNG state and identifiers, so the guest reseeds its kernel RNG from `entropy`, takes the
    /// new identifiers, and uses `next_secret` for every later session.
    Lease {
        id: RequestId,
        entropy: Vec<u8>,
        hostname: String,
        machine_id: String,
        next_secret: [u8; 32],
        /// Host wall-clock time: a restored VM's clock stands at its snapshot's moment.
        unix_time_ns: u64,
        /// Most processes the sandbox user may have at once (fork bombs stop here).
        max_processes: u32,
    },
    /// Runs a command as the sandbox user.
    Exec(ExecRequest),
    /// Bytes for a running command's stdin.
    Stdin {
        id: RequestId,
        data: Vec<u8>,
    },
    /// Closes a running command's stdin.
    CloseStdin {
        id: RequestId,
    },
    /// Sends a signal to a running command's process group.
    Signal {
        id: RequestId,
        signal: i32,
    },
    /// Resizes a running command's pseudo-terminal.
    Resize {
        id: RequestId,
        size: PtySize,
    },
    /// Starts writing a file; followed by `FileChunk`s and one `FileEnd`.
    WriteFile {
        id: RequestId,
        path: String,
        mode: u32,
    },
    FileChunk {
        id: RequestId,
        data: Vec<u8>,
    },
    FileEnd {
        id: RequestId,
    },
    /// Asks for a file's contents, answered by `FileChunk`s and one `FileEnd`.
    ReadFile {
        id: RequestId,
        path: String,
    },
    Ping {
        id: RequestId,
    },
    /// Asks the guest to power off.
    PowerOff,
    /// Starts the guest's egress proxy on `127.0.0.1:port`; answered by `Done` or `Failed`.
    /// Connections to it become egress streams relayed to the host.
    EgressStart {
        id: RequestId,
        port: u16,
    },
    /// Bytes from the host's egress proxy for a guest connection. The sum of bytes in flight per
    /// stream never exceeds [`crate::EGRESS_WINDOW`]: the guest returns credit as it writes.
    EgressData {
        stream: StreamId,
        data: Vec<u8>,
    },
    /// The host will send no more data on `stream` (the guest shuts down its write side).
    EgressShutdown {
        stream: StreamId,
    },
    /// Ends `stream` in both directions.
    EgressClose {
        stream: StreamId,
    },
    /// The host has passed on `bytes` more of the guest's data: the guest may send that much more.
    EgressCredit {
        stream: StreamId,
        bytes: u32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub id: RequestId,
    /// Program and arguments; the program is looked up on `PATH` when it has no slash.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory; the sandbox user's home when absent.
    pub cwd: Option<String>,
    /// Wall-clock limit enforced by the guest; the process group is killed when it passes.
    pub timeout_ms: Option<u64>,
    /// Combined stdout+stderr limit; the process group is killed when it is passed.
    pub max_output_bytes: u64,
    /// Whether the host will send `Stdin`; when false stdin is closed at start.
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size: stdin, stdout and stderr are its slave side, the
    /// command's output arrives as `Stdout`, `Stdin` is typed into it, `Resize` changes it.
    pub pty: Option<PtySize>,
}

/// A terminal's size in character cells.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Guest -> host.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// Answers `Hello` with the guest's nonce and its proof of the VM secret.
    HelloAck {
        version: u16,
        nonce: Nonce,
        proof: [u8; 32],
    },
    /// The session is authenticated and the agent is ready for requests.
    Ready {
        agent_version: String,
        kernel_release: String,
    },
    /// A command started.
    Started {
        id: RequestId,
        pid: u32,
    },
    Stdout {
        id: RequestId,
        data: Vec<u8>,
    },
    Stderr {
        id: RequestId,
        data: Vec<u8>,
    },
    /// A command ended; no more output follows for `id`.
    Exited {
        id: RequestId,
        status: ExitKind,
    },
    FileChunk {
        id: RequestId,
        data: Vec<u8>,
    },
    FileEnd {
        id: RequestId,
    },
    /// A request without output (lease, file write, ping) completed.
    Done {
        id: RequestId,
    },
    /// A request failed before or instead of completing.
    Failed {
        id: RequestId,
        kind: FailureKind,
        message: String,
    },
    /// A program in the sandbox connected to the egress proxy; the stream starts with credit for
    /// [`crate::EGRESS_WINDOW`] bytes in each direction.
    EgressOpen {
        stream: StreamId,
    },
    /// Bytes the program sent, within the credit the host has granted.
    EgressData {
        stream: StreamId,
        data: Vec<u8>,
    },
    /// The program will send no more (it shut down its write side).
    EgressShutdown {
        stream: StreamId,
    },
    /// The program's connection is gone; the stream ends in both directions.
    EgressClose {
        stream: StreamId,
    },
    /// The guest has written `bytes` more of the host's data to the program.
    EgressCredit {
        stream: StreamId,
        bytes: u32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
    /// Killed because its `timeout_ms` passed.
    TimedOut,
    /// Killed because it wrote more than `max_output_bytes`.
    OutputLimit,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    NotFound,
    PermissionDenied,
    InvalidRequest,
    Io,
}

impl HostMessage {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Confirm { .. } => "Confirm",
            Self::Lease { .. } => "Lease",
            Self::Exec(_) => "Exec",
            Self::Stdin { .. } => "Stdin",
            Self::CloseStdin { .. } => "CloseStdin",
            Self::Signal { .. } => "Signal",
            Self::Resize { .. } => "Resize",
            Self::WriteFile { .. } => "WriteFile",
            Self::FileChunk { .. } => "FileChunk",
            Self::FileEnd { .. } => "FileEnd",
            Self::ReadFile { .. } => "ReadFile",
            Self::Ping { .. } => "Ping",
            Self::PowerOff => "PowerOff",
            Self::EgressStart { .. } => "EgressStart",
            Self::EgressData { .. } => "EgressData",
            Self::EgressShutdown { .. } => "EgressShutdown",
            Self::EgressClose { .. } => "EgressClose",
            Self::EgressCredit { .. } => "EgressCredit",
        }
    }
}

impl GuestMessage {
    pub fn name(&self) -> &'static str {
        match self {
            Self::HelloAck { .. } => "HelloAck",
            Self::Ready { .. } => "Ready",
            Self::Started { .. } => "Started",
            Self::Stdout { .. } => "Stdout",
            Self::Stderr { .. } => "Stderr",
            Self::Exited { .. } => "Exited",
            Self::FileChunk { .. } => "FileChunk",
            Self::FileEnd { .. } => "FileEnd",
            Self::Done { .. } => "Done",
            Self::Failed { .. } => "Failed",
            Self::EgressOpen { .. } => "EgressOpen",
            Self::EgressData { .. } => "EgressData",
            Self::EgressShutdown { .. } => "EgressShutdown",
            Self::EgressClose { .. } => "EgressClose",
            Self::EgressCredit { .. } => "EgressCredit",
        }
    }
}
