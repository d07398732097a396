//! The ztee host<->guest protocol.
//!
//! One byte stream (virtio-serial on QEMU, vsock on Firecracker) carries length-prefixed frames.
//! A session starts with a mutual challenge-response proving both ends hold the per-VM secret;
//! every frame after that carries a sequence number and an HMAC tag under a session key, so a
//! frame cannot be forged, replayed, dropped or reordered without the receiver noticing.
//!
//! The host treats everything the guest sends as hostile: frame sizes are bounded before any
//! allocation, decoding is strict, and every failure is a typed [`WireError`], never a panic.
//!
//! - [`frame`]: byte-level framing and the incremental decoder.
//! - [`message`]: the messages each side may send.
//! - [`auth`]: the handshake and session key derivation.
//! - [`session`]: sealing and opening authenticated frames.

pub mod auth;
pub mod frame;
pub mod message;
pub mod session;

pub use auth::{BootSecret, Nonce, SessionKeys};
pub use frame::{FrameDecoder, RawFrame, MAX_PAYLOAD};
pub use message::{ExitKind, GuestMessage, HostMessage, PtySize, RequestId, StreamId};
pub use session::{Opener, Sealer};

/// Protocol version spoken by this build. Both ends must agree exactly.
pub const PROTOCOL_VERSION: u16 = 2;

/// Name of the virtio-serial port the agent listens on.
pub const VIRTIO_PORT_NAME: &str = "ztee.agent";

/// vsock port the agent listens on when the VMM offers vsock instead of virtio-serial.
pub const VSOCK_PORT: u32 = 1024;

/// Largest chunk of stdout/stderr/file data carried in one message.
pub const MAX_DATA_CHUNK: usize = 256 * 1024;

/// Largest chunk of egress data carried in one message: small, so relayed connections interleave
/// with command output instead of holding the channel.
pub const EGRESS_CHUNK: usize = 16 * 1024;

/// Bytes of egress data one side may have in flight per stream before the other side returns
/// credit. Bounds the memory a stream can take at the receiver.
pub const EGRESS_WINDOW: u32 = 256 * 1024;

/// Most egress streams open at once per session; further connections are refused by the guest,
/// and the host drops the session if the guest opens more.
pub const MAX_EGRESS_STREAMS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("frame of {len} bytes is shorter than the {min}-byte minimum")]
    FrameTooShort { len: usize, min: usize },
    #[error("frame authentication failed (bad tag)")]
    BadTag,
    #[error("frame out of sequence: expected {expected}, got {got}")]
    BadSequence { expected: u64, got: u64 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("peer speaks protocol version {peer}, this side speaks {ours}")]
    VersionMismatch { peer: u16, ours: u16 },
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    #[error("unexpected message during {phase}: {got}")]
    Unexpected {
        phase: &'static str,
        got: &'static str,
    },
}
