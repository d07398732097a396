//! Request bodies of Firecracker's API, field for field as its swagger
//! (`src/firecracker/swagger/firecracker.yaml`, Firecracker v1.10) defines them. Optional fields
//! ztee never sets are left out rather than sent as `null`: Firecracker rejects unknown fields and
//! some versions reject explicit nulls.

use serde::Serialize;

/// `PUT /machine-config` (`MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfiguration {
    /// 1, or an even number up to 32 when `smt` is on; 1-32 otherwise.
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    pub smt: bool,
    /// Needed for diff snapshots only; ztee takes full snapshots.
    pub track_dirty_pages: bool,
}

/// `PUT /boot-source` (`BootSource`): an uncompressed ELF `vmlinux` on x86_64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    pub boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}` (`Drive`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `RateLimiter`: a bandwidth bucket (bytes) and an operations bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimiter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `TokenBucket`: `size` tokens, refilled completely every `refill_time` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    pub size: u64,
    pub refill_time: u64,
}

/// `PUT /vsock` (`Vsock`): the hybrid vsock device, whose host end is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    /// At least 3 (0-2 are reserved).
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /entropy` (`EntropyDevice`): a virtio-rng device fed from the host's RNG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntropyDevice {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /actions` (`InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
}

/// `PATCH /vm` (`Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmState {
    pub state: RunState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunState {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create` (`SnapshotCreateParams`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreateParams {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SnapshotType {
    Full,
}

/// `PUT /snapshot/load` (`SnapshotLoadParams`), with the memory in a file (`MemoryBackend`
/// `File`), which Firecracker maps privately: pages a clone never writes stay shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    pub enable_diff_snapshots: bool,
    pub resume_vm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemoryBackendType {
    File,
}
