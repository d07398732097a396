//! Firecracker: KVM-only microVMs with a minimal device model (virtio block, vsock, entropy;
//! serial console), always started under Firecracker's own `jailer`.
//!
//! Modules, in the order a VM meets them:
//! - [`config`]: binary paths, chroot base, namespace, cgroups and rate limits.
//! - [`jailer`]: each VM's chroot and the jailer's command line (uid/gid, cgroups, netns,
//!   resource limits), and starting it.
//! - [`model`]: the API's request bodies, as its swagger defines them.
//! - [`api`]: the HTTP client on the API socket, and Firecracker's error bodies as [`ApiError`].
//! - [`controller`]: the calls that configure, start, pause, snapshot, restore and stop a VM, in
//!   the order Firecracker requires.
//! - [`vsock`]: the hybrid vsock handshake to the guest agent's port.
//! - `vm`: [`FirecrackerBackend`], the [`crate::backend::Backend`] built from the above: boot,
//!   template, restore.

pub mod api;
pub mod config;
pub mod controller;
pub mod jailer;
pub mod model;
mod vm;
pub mod vsock;

use std::path::Path;
use std::time::Instant;

use tokio::net::UnixStream;

pub use api::{ApiClient, ApiError};
pub use config::FirecrackerConfig;
pub use controller::{shutdown, BootConfig, Controller, SnapshotFiles, SHUTDOWN_GRACE};
pub use jailer::Chroot;
pub(crate) use vm::FirecrackerBackend;
pub use vsock::HandshakeError;

use crate::VmError;

/// The guest CID of every VM: each VM has its own vsock device and host socket, so CIDs never
/// meet; 3 is the first one not reserved.
pub const GUEST_CID: u32 = 3;

/// The kernel command line key that tells the agent which transport to listen on.
pub const TRANSPORT_ARG: &str = "ztee.transport=vsock";

/// The Firecracker version whose API (swagger) ztee speaks.
pub const API_VERSION: &str = "1.10";

/// Connects to the agent's vsock port through the VM's hybrid vsock socket.
pub async fn connect_agent(uds: &Path, deadline: Instant) -> Result<UnixStream, VmError> {
    vsock::connect(uds, ztee_wire::VSOCK_PORT, deadline)
        .await
        .map_err(|err| VmError::Firecracker(err.to_string()))
}

/// `firecracker --version`, first line.
pub fn version(binary: &Path) -> Option<String> {
    super::version_line(binary)
}

/// `jailer --version`, first line.
pub fn jailer_version(binary: &Path) -> Option<String> {
    super::version_line(binary)
}
