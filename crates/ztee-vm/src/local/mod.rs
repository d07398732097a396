//! Sandboxes held by the command line, without a server.
//!
//! `ztee sandbox create` starts a supervisor process that owns one sandbox, records it in the
//! [`registry`] and serves a control socket; later commands are [`client`]s of that socket. The
//! VM dies with its supervisor (see [`crate::runtime`]), the supervisor ends the sandbox when its
//! lifetime passes, and records whose supervisor is gone are pruned on the next listing.
//!
//! The control protocol reuses `ztee-wire` messages (host messages as requests, guest messages as
//! replies) in unauthenticated frames: the socket is reachable only by the owning user (mode
//! 0600 in a 0700 directory, and the peer's uid is checked).

pub mod client;
pub mod registry;
pub mod secrets;
pub mod supervisor;

pub use client::LocalClient;
pub use registry::{LocalRecord, Registry};
pub use secrets::LocalSecrets;
