//! The ztee microVM engine.
//!
//! [`Engine::create`] gets a VM — restored from a snapshot of its shape (or taken from a warm
//! pool of restored VMs), or booted from scratch — authenticates its agent over the channel and
//! leases it to one [`Sandbox`]; commands and files then go through that channel. Modules:
//!
//! - [`config`]: sandbox shapes and engine settings.
//! - [`engine`]: boot, restore, lease.
//! - [`assets`]: kernel, root file system image and agent on disk.
//! - [`initramfs`]: the agent and the per-VM secret packed for boot.
//! - [`backend`]: the `Backend` trait and its implementations (`qemu`, `firecracker`): booting,
//!   snapshotting and restoring VMs, the agent's transport.
//! - [`accel`]: choosing KVM or TCG by actually booting a guest.
//! - [`select`]: choosing the VMM (`auto` prefers Firecracker where it can run), once per engine.
//! - [`snapshot`], `templates`, [`pool`]: fast start (one template cache for every backend).
//! - `channel`, `qmp`: the authenticated agent channel and the VMM control socket, host side.
//! - [`sandbox`], [`exec`]: the API callers use.
//! - [`jail`]: namespaces, private root, per-VM uid and cgroup for every VMM.
//! - [`runtime`]: per-VM directories and reaping of orphans after a crash.

pub mod accel;
pub mod assets;
pub mod backend;
mod channel;
pub mod config;
mod egress;
pub mod engine;
mod error;
pub mod exec;
#[cfg(test)]
mod fake_guest;
mod guest_text;
pub mod image;
pub mod initramfs;
pub mod jail;
#[cfg(test)]
mod module_graph;
pub mod pool;
mod qmp;
pub mod runtime;
pub mod sandbox;
pub mod select;
pub mod snapshot;
mod templates;

pub use assets::GuestAssets;
pub use backend::types::{AccelChoice, AccelDecision};
pub use backend::types::{Accelerator, Vmm, VmmChoice, VmmDecision};
/// For relays of the agent protocol (the command line's sandbox supervisor): how long a caller
/// waits for an answer the guest owes promptly before giving up on it, so a relay can wait as
/// long as the engine does plus its own margin.
pub use channel::REPLY_TIMEOUT;
pub use config::{default_cache_dir, EngineConfig, SandboxSpec, VmmSettings};
pub use engine::Engine;
pub use error::VmError;
pub use exec::{CommandStream, ExecControl, ExecEvent, ExecSpec, Execution, ExitStatus, Output};
pub use image::BootImage;
pub use jail::{JailConfig, JailInfo, JailMode};
pub use sandbox::{Sandbox, SandboxInfo, DEFAULT_READ_LIMIT};

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], VmError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| VmError::Guest(format!("the host has no randomness: {e}")))?;
    Ok(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sbx-` and 16 hex digits: unguessable, and safe in paths, hostnames and URLs.
pub(crate) fn new_sandbox_id() -> Result<String, VmError> {
    Ok(format!("sbx-{}", hex(&random_bytes::<8>()?)))
}

/// Whether `text` has the shape of a sandbox id (checked before it is used in a path).
pub fn is_sandbox_id(text: &str) -> bool {
    text.len() == 20
        && text.starts_with("sbx-")
        && text[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_well_formed() {
        let id = new_sandbox_id().unwrap();
        assert!(is_sandbox_id(&id), "{id}");
        assert!(!is_sandbox_id("sbx-../../etc/passwd"));
        assert!(!is_sandbox_id("sbx-0123456789ABCDEF"));
    }
}
