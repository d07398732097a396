//! The execution stage's view of the VM engine.
//!
//! The pipeline drives sandboxes through [`Executor`] and [`SandboxHandle`] so stage order and
//! failure handling are testable without booting VMs; `vm.rs` implements them with `ztee-vm`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The caller asked for something the guest refused (missing file, bad path).
    #[error("{0}")]
    Guest(String),
    /// A file or program the caller named does not exist in the sandbox.
    #[error("{0}")]
    NotFound(String),
    /// The engine could not do its part (boot failure, VMM crash, channel error).
    #[error("{0}")]
    Engine(String),
    /// The image failed the admission policy; nothing was booted.
    #[error("image {image} refused by admission rule {rule:?}: {reason}")]
    Refused {
        image: String,
        rule: String,
        reason: String,
    },
}

/// An image that passed the engine's supply-chain admission: what boots is exactly `digest`.
/// Only an executor's [`Executor::admit`] makes one, so a sandbox cannot be created from an
/// image name that skipped admission.
#[derive(Debug, Clone)]
pub struct AdmittedImage {
    reference: String,
    digest: String,
    boot: Option<ztee_vm::BootImage>,
}

impl AdmittedImage {
    /// An image the VM engine verified, with the root file system built from its digest.
    pub fn verified(reference: &str, boot: ztee_vm::BootImage) -> Self {
        Self {
            reference: reference.to_owned(),
            digest: boot.digest().to_owned(),
            boot: Some(boot),
        }
    }

    /// An admitted image of an executor that boots no root file system of its own (a test
    /// double): it carries the digest for the audit trail and nothing to boot.
    pub fn without_rootfs(reference: &str, digest: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            digest: digest.to_owned(),
            boot: None,
        }
    }

    /// The reference the caller gave (a tag or a digest reference).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The manifest digest that was verified (`sha256:...`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the VM engine boots; `None` for an executor without root file systems.
    pub fn boot_image(&self) -> Option<&ztee_vm::BootImage> {
        self.boot.as_ref()
    }
}

#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// `None` boots the node's default image.
    pub image: Option<AdmittedImage>,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The writable scratch space in MiB; `None`: the engine's default for the memory.
    pub scratch_mib: Option<u32>,
    /// The guest user's process limit; `None`: the engine's default.
    pub max_processes: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<Bytes>,
    /// Keep stdin open after `stdin` for [`ProcessControl::write_stdin`]; when false the command
    /// reads EOF after `stdin`.
    pub interactive: bool,
    /// Run on a pseudo-terminal of this size (interactive; its output arrives as stdout).
    pub pty: Option<ztee_wire::PtySize>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// `exit_code` is `None` when the process was killed (signal, timeout).
    Exit {
        exit_code: Option<i32>,
        timed_out: bool,
    },
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Verifies `image` (a reference other than the default) against this node's admission
    /// policy: signatures, attestations, scan results. Runs before anything is leased or
    /// booted for the request; [`ExecError::Refused`] names the admission rule.
    async fn admit(&self, image: &str) -> Result<AdmittedImage, ExecError>;
    async fn create(&self, spec: CreateSpec) -> Result<Box<dyn SandboxHandle>, ExecError>;
    /// Engine facts for the start-up log (backend, accelerator); never served over HTTP.
    fn describe(&self) -> serde_json::Value;
}

#[async_trait]
pub trait SandboxHandle: Send + Sync {
    fn id(&self) -> String;
    fn info(&self) -> serde_json::Value;
    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn OutputStream>, ExecError>;
    async fn write_file(&self, path: &str, content: Bytes, mode: u32) -> Result<(), ExecError>;
    async fn read_file(&self, path: &str) -> Result<Bytes, ExecError>;
    /// Reads a file chunk by chunk, so a large download is never held whole. Engines that can
    /// only read whole files hand out their read in [`READ_CHUNK`] slices.
    async fn read_file_chunks(&self, path: &str) -> Result<Box<dyn FileChunks>, ExecError> {
        let data = self.read_file(path).await?;
        Ok(Box::new(WholeFile { data }))
    }
    async fn destroy(&self) -> Result<(), ExecError>;

    /// Lets the sandbox reach `allowlist` through the egress proxy; every connection is reported
    /// to `audit`. Executors without a proxy refuse.
    async fn enable_egress(
        &self,
        allowlist: ztee_egress::Allowlist,
        audit: std::sync::Arc<dyn ztee_egress::EgressAudit>,
    ) -> Result<(), ExecError> {
        let _ = (allowlist, audit);
        Err(ExecError::Engine(
            "this executor cannot relay egress".into(),
        ))
    }
}

/// A file read from a sandbox one chunk at a time.
#[async_trait]
pub trait FileChunks: Send {
    /// The next chunk, `None` at the end of the file.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExecError>;
}

/// Size of the slices a whole-file read is handed out in.
pub const READ_CHUNK: usize = 64 * 1024;

struct WholeFile {
    data: Bytes,
}

#[async_trait]
impl FileChunks for WholeFile {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExecError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let n = self.data.len().min(READ_CHUNK);
        Ok(Some(self.data.split_to(n)))
    }
}

#[async_trait]
pub trait OutputStream: Send {
    /// `None` after the exit event.
    async fn next_event(&mut self) -> Option<OutputEvent>;

    /// The command's pid inside the sandbox and a handle for its input and signals, for engines
    /// that keep a command reachable while it runs; `None` for those that do not.
    fn process(&self) -> Option<RunningProcess> {
        None
    }
}

/// A command that is still running: its pid in the sandbox and what reaches it.
#[derive(Clone)]
pub struct RunningProcess {
    pub pid: u32,
    pub control: std::sync::Arc<dyn ProcessControl>,
}

/// Input and signals for a running command, apart from its output. What is sent after the
/// command ended is ignored.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    async fn write_stdin(&self, data: Bytes) -> Result<(), ExecError>;
    async fn close_stdin(&self) -> Result<(), ExecError>;
    async fn signal(&self, signal: i32) -> Result<(), ExecError>;
    /// Resizes the command's pseudo-terminal.
    async fn resize(&self, size: ztee_wire::PtySize) -> Result<(), ExecError>;
}

/// What one finished command produced, for non-streaming responses.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub redactions: crate::dlp::RedactionCounts,
    /// True when stdout or stderr was cut at the configured output limit.
    pub truncated: bool,
}
