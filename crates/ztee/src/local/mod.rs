//! Sandboxes held by the command line, without a server.
//!
//! `ztee sandbox create` starts a supervisor process that owns one sandbox, records it in the
//! [`registry`] and serves a control socket; later commands are [`client`]s of that socket. The
//! VM dies with its supervisor (see [`ztee_vm::runtime`]), the supervisor ends the sandbox when its
//! lifetime passes, and records whose supervisor is gone are pruned on the next listing.
//!
//! The control protocol reuses `ztee-wire` messages (host messages as requests, guest messages as
//! replies) in unauthenticated frames: the socket is reachable only by the owning user (mode
//! 0600 in a 0700 directory, and the peer's uid is checked).

//! Errors are the engine's [`VmError`]: the supervisor relays the engine's own errors, classified
//! into the wire's failure kinds, and the client turns them back into the same errors (through
//! [`ztee_vm::exec::failure`]) behind the engine's [`ztee_vm::CommandStream`], so `ztee sandbox`
//! and `ztee run` report a CLI-held sandbox's failures with the texts the engine uses.

use std::path::PathBuf;

use ztee_vm::VmError;

pub mod client;
pub mod registry;
pub mod secrets;
pub mod supervisor;

pub use client::LocalClient;
pub use registry::{LocalRecord, Registry};
pub use secrets::LocalSecrets;

/// A failed file operation on the host, in the engine's error (`<what> <path>: <cause>`).
pub(crate) fn io_error(
    what: &'static str,
    path: impl Into<PathBuf>,
    source: std::io::Error,
) -> VmError {
    VmError::Io {
        what,
        path: path.into(),
        source,
    }
}
