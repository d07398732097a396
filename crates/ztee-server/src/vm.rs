//! [`Executor`] on top of `ztee-vm`: one microVM per sandbox.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::exec::{
    AdmittedImage, CreateSpec, ExecError, ExecSpec, Executor, OutputEvent, OutputStream,
    SandboxHandle,
};

/// Largest file a download reads from a guest; uploads are bounded by the HTTP body limit.
const READ_LIMIT: u64 = 64 * 1024 * 1024;

pub struct VmExecutor {
    engine: ztee_vm::Engine,
    /// Where the OCI store and `admission.yaml` live; `None` accepts only the default image.
    admission_dir: Option<std::path::PathBuf>,
    /// The admission policy, when not `<admission_dir>/admission.yaml`.
    admission_policy: Option<std::path::PathBuf>,
    /// Starts the jailed helper that builds an admitted image's root filesystem; without one,
    /// an image whose root filesystem is not built yet is refused (never built in-process).
    rootfs_builder: Option<ztee_supply::rootfs::RootfsBuilder>,
    /// Serves the connections of sandboxes granted egress.
    egress: Option<Arc<ztee_egress::EgressProxy>>,
}

impl VmExecutor {
    /// The engine for `data_dir`, configured from the environment (`ZTEE_GUEST_DIR`, `ZTEE_ACCEL`,
    /// `ZTEE_BOOT_TIMEOUT`).
    pub fn from_data_dir(data_dir: &Path) -> Result<Self, ztee_vm::VmError> {
        let config = ztee_vm::EngineConfig::from_env_and_defaults(data_dir)?;
        Ok(Self::new(ztee_vm::Engine::new(config)?).with_admission(data_dir))
    }

    pub fn new(engine: ztee_vm::Engine) -> Self {
        let egress = ztee_egress::EgressProxy::from_config(ztee_egress::EgressConfig::default())
            .map_err(|err| tracing::warn!(%err, "egress proxy unavailable"))
            .ok()
            .map(Arc::new);
        Self {
            engine,
            admission_dir: None,
            admission_policy: None,
            rootfs_builder: None,
            egress,
        }
    }

    /// Serves egress with the operator's `[egress]` settings (allowed networks, DNS servers).
    pub fn with_egress_config(
        mut self,
        config: ztee_egress::EgressConfig,
    ) -> Result<Self, ztee_egress::EgressError> {
        self.egress = Some(Arc::new(ztee_egress::EgressProxy::from_config(config)?));
        Ok(self)
    }

    /// Lets sandboxes boot images from the OCI store under `data_dir` that pass
    /// `<data_dir>/admission.yaml`.
    pub fn with_admission(mut self, data_dir: &Path) -> Self {
        self.admission_dir = Some(data_dir.to_path_buf());
        self
    }

    /// Admits images with the policy at `path` instead of `<data_dir>/admission.yaml`.
    pub fn with_admission_policy(mut self, path: std::path::PathBuf) -> Self {
        self.admission_policy = Some(path);
        self
    }

    /// Builds admitted images' root filesystems with the helper `builder` starts (`ztee serve`
    /// passes its own binary).
    pub fn with_rootfs_builder(mut self, builder: ztee_supply::rootfs::RootfsBuilder) -> Self {
        self.rootfs_builder = Some(builder);
        self
    }

    /// Keeps `size` never-used VMs of this shape ready, so `create` does not wait for a boot.
    pub fn start_pool(
        &self,
        memory_mib: u32,
        vcpus: u32,
        size: usize,
    ) -> Result<(), ztee_vm::VmError> {
        let vcpus = u8::try_from(vcpus)
            .map_err(|_| ztee_vm::VmError::InvalidSpec(format!("vcpus = {vcpus} is too many")))?;
        self.engine
            .start_pool(spec(memory_mib, vcpus), size)
            .map(|_| ())
    }
}

fn admit_image(
    dir: &Path,
    policy: Option<&Path>,
    builder: Option<&ztee_supply::rootfs::RootfsBuilder>,
    image: &str,
) -> Result<ztee_vm::BootImage, ExecError> {
    use ztee_supply::admission::{admit_from_data_dir, DataDirAdmissionError as E};
    match admit_from_data_dir(dir, policy, image, builder, ztee_supply::now()) {
        Ok(verified) => Ok(ztee_vm::BootImage::from(&verified)),
        Err(E::Reference { source, .. }) => {
            Err(ExecError::Guest(format!("image {image:?}: {source}")))
        }
        Err(E::NoPolicy { .. }) => Err(ExecError::Refused {
            image: image.to_string(),
            rule: "no-policy".into(),
            reason: "this node has no admission policy, so it boots only its default image".into(),
        }),
        Err(E::NoBuilder) => Err(ExecError::Engine(format!(
            "image {image:?}: this node has no rootfs unpack helper configured, so it cannot \
             build an image's root filesystem"
        ))),
        Err(E::Denied(denial)) => Err(ExecError::Refused {
            image: image.to_string(),
            rule: denial.rule,
            reason: denial.reason,
        }),
        // The variant's text names the stage: "admission policy: …", "image store: …",
        // "admission: …".
        Err(err @ (E::Policy(_) | E::Store(_) | E::Failed(_))) => {
            Err(ExecError::Engine(err.to_string()))
        }
    }
}

/// The VM shape for a sandbox; the same function for pool and requests, so pooled VMs match.
/// The scratch disk lives in guest memory, so it gets at most half of it.
fn spec(memory_mib: u32, vcpus: u8) -> ztee_vm::SandboxSpec {
    let default = ztee_vm::SandboxSpec::default();
    ztee_vm::SandboxSpec {
        memory_mib,
        vcpus,
        // The scratch disk lives in guest memory: smaller VMs get a smaller disk.
        scratch_mib: default
            .scratch_mib
            .min(memory_mib.saturating_sub(64))
            .max(8),
        ..default
    }
}

fn map_err(e: ztee_vm::VmError) -> ExecError {
    use ztee_vm::VmError as V;
    match e {
        V::FileNotFound(_) | V::CommandNotFound(_) => ExecError::NotFound(e.to_string()),
        V::PermissionDenied(_)
        | V::InvalidRequest(_)
        | V::InvalidSpec(_)
        | V::FileTooLarge { .. } => ExecError::Guest(e.to_string()),
        other => ExecError::Engine(other.to_string()),
    }
}

#[async_trait]
impl Executor for VmExecutor {
    /// What boots is the root file system of exactly the verified digest. Admission reads files
    /// and may build an erofs image, so it runs off the async threads.
    async fn admit(&self, image: &str) -> Result<AdmittedImage, ExecError> {
        let Some(dir) = self.admission_dir.clone() else {
            return Err(ExecError::Guest(format!(
                "image {image:?} is not available on this node; omit `image` to use the default"
            )));
        };
        let reference = image.to_string();
        let builder = self.rootfs_builder.clone();
        let policy = self.admission_policy.clone();
        let boot = tokio::task::spawn_blocking(move || {
            admit_image(&dir, policy.as_deref(), builder.as_ref(), &reference)
        })
        .await
        .map_err(|e| ExecError::Engine(format!("admission task: {e}")))??;
        Ok(AdmittedImage::verified(image, boot))
    }

    async fn create(&self, spec: CreateSpec) -> Result<Box<dyn SandboxHandle>, ExecError> {
        let vcpus = u8::try_from(spec.vcpus)
            .map_err(|_| ExecError::Guest(format!("vcpus = {} is too many", spec.vcpus)))?;
        let mut vm_spec = self::spec(spec.memory_mib, vcpus);
        if let Some(scratch_mib) = spec.scratch_mib {
            vm_spec.scratch_mib = scratch_mib;
        }
        if let Some(max_processes) = spec.max_processes {
            vm_spec.max_processes = max_processes;
        }
        if let Some(image) = &spec.image {
            let boot = image.boot_image().ok_or_else(|| {
                ExecError::Engine(format!(
                    "image {} was not admitted by the VM engine",
                    image.reference()
                ))
            })?;
            vm_spec.image = Some(boot.clone());
        }
        let sandbox = self.engine.create(vm_spec).await.map_err(map_err)?;
        let info = serde_json::to_value(sandbox.info()).unwrap_or_default();
        Ok(Box::new(VmSandbox {
            id: sandbox.id().to_owned(),
            info,
            sandbox: Mutex::new(Some(Arc::new(sandbox))),
            egress: self.egress.clone(),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "qemu",
            "guest": self.engine.config().assets.rootfs.display().to_string(),
        })
    }
}

struct VmSandbox {
    id: String,
    info: serde_json::Value,
    /// `None` once destroyed.
    sandbox: Mutex<Option<Arc<ztee_vm::Sandbox>>>,
    egress: Option<Arc<ztee_egress::EgressProxy>>,
}

impl VmSandbox {
    fn get(&self) -> Result<Arc<ztee_vm::Sandbox>, ExecError> {
        self.sandbox
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| ExecError::Engine("the sandbox has been destroyed".into()))
    }
}

#[async_trait]
impl SandboxHandle for VmSandbox {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn info(&self) -> serde_json::Value {
        self.info.clone()
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn OutputStream>, ExecError> {
        let sandbox = self.get()?;
        let mut vm_spec = ztee_vm::ExecSpec::new(spec.argv);
        vm_spec.env = spec.env.into_iter().collect();
        vm_spec.cwd = spec.cwd;
        vm_spec.timeout = Some(spec.timeout);
        vm_spec.stdin = spec.stdin.is_some() || spec.interactive || spec.pty.is_some();
        vm_spec.pty = spec.pty;
        let close_stdin = spec.stdin.is_some() && !spec.interactive;
        let execution = sandbox.exec(vm_spec).await.map_err(map_err)?;
        if let Some(stdin) = spec.stdin {
            execution.write_stdin(&stdin).await.map_err(map_err)?;
        }
        if close_stdin {
            execution.close_stdin().await.map_err(map_err)?;
        }
        let process = crate::exec::RunningProcess {
            pid: execution.pid(),
            control: Arc::new(VmControl(execution.control())),
        };
        Ok(Box::new(VmOutput {
            execution,
            process,
            done: false,
        }))
    }

    async fn write_file(&self, path: &str, content: Bytes, mode: u32) -> Result<(), ExecError> {
        self.get()?
            .write_file(path, &content, mode)
            .await
            .map_err(map_err)
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, ExecError> {
        self.get()?
            .read_file(path, READ_LIMIT)
            .await
            .map(Bytes::from)
            .map_err(map_err)
    }

    async fn read_file_chunks(
        &self,
        path: &str,
    ) -> Result<Box<dyn crate::exec::FileChunks>, ExecError> {
        let chunks = self
            .get()?
            .read_file_chunks(path, READ_LIMIT)
            .await
            .map_err(map_err)?;
        Ok(Box::new(VmFileChunks(chunks)))
    }

    async fn enable_egress(
        &self,
        allowlist: ztee_egress::Allowlist,
        audit: Arc<dyn ztee_egress::EgressAudit>,
    ) -> Result<(), ExecError> {
        let Some(proxy) = self.egress.clone() else {
            return Err(ExecError::Engine(
                "the egress proxy is not available".into(),
            ));
        };
        let sandbox = self.get()?;
        let grant = ztee_egress::EgressGrant {
            sandbox: self.id.clone(),
            allowlist,
            audit,
        };
        sandbox.enable_egress(proxy, grant).await.map_err(map_err)
    }

    async fn destroy(&self) -> Result<(), ExecError> {
        let taken = self.sandbox.lock().ok().and_then(|mut s| s.take());
        match taken.map(Arc::try_unwrap) {
            Some(Ok(sandbox)) => sandbox.destroy().await.map_err(map_err),
            // A command is being started right now and holds a reference; dropping ours is
            // enough, the VMM is killed when the last one goes (kill on drop).
            Some(Err(_)) | None => Ok(()),
        }
    }
}

struct VmFileChunks(ztee_vm::sandbox::FileChunks);

#[async_trait]
impl crate::exec::FileChunks for VmFileChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExecError> {
        self.0
            .next()
            .await
            .map(|c| c.map(Bytes::from))
            .map_err(map_err)
    }
}

struct VmOutput {
    execution: ztee_vm::Execution,
    process: crate::exec::RunningProcess,
    done: bool,
}

struct VmControl(ztee_vm::ExecControl);

#[async_trait]
impl crate::exec::ProcessControl for VmControl {
    async fn write_stdin(&self, data: Bytes) -> Result<(), ExecError> {
        self.0.write_stdin(&data).await.map_err(map_err)
    }

    async fn close_stdin(&self) -> Result<(), ExecError> {
        self.0.close_stdin().await.map_err(map_err)
    }

    async fn signal(&self, signal: i32) -> Result<(), ExecError> {
        self.0.signal(signal).await.map_err(map_err)
    }

    async fn resize(&self, size: ztee_wire::PtySize) -> Result<(), ExecError> {
        self.0.resize(size).await.map_err(map_err)
    }
}

#[async_trait]
impl OutputStream for VmOutput {
    fn process(&self) -> Option<crate::exec::RunningProcess> {
        Some(self.process.clone())
    }

    async fn next_event(&mut self) -> Option<OutputEvent> {
        if self.done {
            return None;
        }
        match self.execution.next_event().await {
            Ok(Some(ztee_vm::ExecEvent::Stdout(b))) => Some(OutputEvent::Stdout(Bytes::from(b))),
            Ok(Some(ztee_vm::ExecEvent::Stderr(b))) => Some(OutputEvent::Stderr(Bytes::from(b))),
            Ok(Some(ztee_vm::ExecEvent::Exit(status))) => {
                self.done = true;
                use ztee_vm::ExitStatus as S;
                Some(match status {
                    S::Code(c) => OutputEvent::Exit {
                        exit_code: Some(c),
                        timed_out: false,
                    },
                    S::TimedOut => OutputEvent::Exit {
                        exit_code: None,
                        timed_out: true,
                    },
                    S::Signal(_) | S::OutputLimit => OutputEvent::Exit {
                        exit_code: Some(status.shell_code()),
                        timed_out: false,
                    },
                })
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "command stream ended with an engine error");
                self.done = true;
                Some(OutputEvent::Exit {
                    exit_code: None,
                    timed_out: false,
                })
            }
        }
    }
}
