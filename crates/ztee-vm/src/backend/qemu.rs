//! QEMU `microvm`: virtio-mmio devices only, no PCI, no ACPI, no firmware, no network device,
//! QEMU's own seccomp sandbox on. The guest sees a kernel, an initramfs, one read-only disk, one
//! virtio-serial port (the agent channel) and a virtio RNG.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use ztee_wire::BootSecret;

use super::{
    connect_or_exit, vmm_exited, Accelerator, Backend, Booted, BoxFuture, Host, LaunchPlan,
    MemoryBacking, StartKind, TemplateInputs, Vmm,
};
use crate::channel::Channel;
use crate::config::SandboxSpec;
use crate::jail::{SealedRam, Spawner, VmJail};
use crate::qmp::Qmp;
use crate::runtime::RuntimeDir;
use crate::snapshot::{self, Template, TemplateState};
use crate::{initramfs, VmError};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The program to run: `$ZTEE_QEMU` or `qemu-system-x86_64` from `PATH`.
pub fn binary() -> OsString {
    std::env::var_os("ZTEE_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| QEMU_BINARY.into())
}

/// The kernel command line. `reboot=t` plus `-no-reboot` turns the agent's final reboot into a
/// QEMU exit; `panic=-1` does the same for a guest kernel panic. `tsc_early_khz` skips the PIT
/// calibration that can hang under TCG when the host is loaded.
fn kernel_cmdline(plan: &LaunchPlan) -> String {
    let mut cmdline = format!(
        "console=ttyS0 quiet loglevel=1 reboot=t panic=-1 rdinit=/init ztee.scratch_mib={}",
        plan.scratch_mib
    );
    if let Some(khz) = host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline
}

fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

pub fn arguments(plan: &LaunchPlan) -> Vec<OsString> {
    let paths = plan.vmm_paths();
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let accel = match plan.accelerator {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg",
    };
    let cpu = match plan.accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    push(&["-name", &plan.name]);
    let memory_backend = match &plan.memory {
        MemoryBacking::Anonymous => "",
        MemoryBacking::SharedFile(_) | MemoryBacking::PrivateFile(_) => ",memory-backend=ram",
    };
    push(&[
        "-machine",
        &format!(
            "microvm,accel={accel},acpi=off,x-option-roms=off,rtc=on,isa-serial=on{memory_backend}"
        ),
    ]);
    push(&["-cpu", cpu]);
    push(&["-m", &format!("{}M", plan.memory_mib)]);
    push(&["-smp", &plan.vcpus.to_string()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    // QEMU's seccomp filter: no obsolete syscalls, no privilege changes, no spawning, no
    // scheduler or resource changes.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    args.push("-kernel".into());
    args.push(paths.kernel.clone().into_os_string());
    args.push("-initrd".into());
    args.push(paths.initramfs.clone().into_os_string());
    args.push("-append".into());
    args.push(kernel_cmdline(plan).into());
    let mut drive = OsString::from("id=image,format=raw,if=none,read-only=on,file=");
    drive.push(qemu_escape(&paths.rootfs));
    args.push("-drive".into());
    args.push(drive);
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    push(&["-device", "virtio-blk-device,drive=image"]);
    push(&["-object", "rng-random,id=rng,filename=/dev/urandom"]);
    push(&["-device", "virtio-rng-device,rng=rng"]);
    push(&["-device", "virtio-serial-device,max_ports=2"]);
    let mut chardev = OsString::from("socket,id=agent,server=on,wait=off,path=");
    chardev.push(qemu_escape(&paths.agent_socket));
    args.push("-chardev".into());
    args.push(chardev);
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    push(&[
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            ztee_wire::VIRTIO_PORT_NAME
        ),
    ]);
    let share = match &plan.memory {
        MemoryBacking::SharedFile(_) => "on",
        _ => "off",
    };
    if let Some(path) = &paths.mem_path {
        let mut object = OsString::from(format!(
            "memory-backend-file,id=ram,size={}M,share={share},mem-path=",
            plan.memory_mib
        ));
        object.push(qemu_escape(path));
        args.push("-object".into());
        args.push(object);
    }
    if let Some(qmp) = &paths.qmp_socket {
        let mut value = OsString::from("unix:");
        value.push(qemu_escape(qmp));
        value.push(",server=on,wait=off");
        args.push("-qmp".into());
        args.push(value);
    }
    if plan.incoming {
        args.push("-incoming".into());
        args.push("defer".into());
    }
    let mut serial = OsString::from("file:");
    serial.push(paths.console_log.as_os_str());
    args.push("-serial".into());
    args.push(serial);
    args
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn qemu_escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        out.push(byte);
        if byte == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Starts QEMU for `plan`, in the jail `spawner` sets up when there is one (the returned child
/// is then the jail's waiter, see [`crate::jail`]). The process is killed when its handle is
/// dropped and when the thread that spawned it dies (`PR_SET_PDEATHSIG`), so a supervisor that is
/// killed takes its VMs along.
pub(crate) fn launch(plan: &LaunchPlan, spawner: Option<Spawner>) -> Result<Child, VmError> {
    let program = match spawner {
        Some(_) => jailed_binary()?,
        None => binary(),
    };
    let mut command = Command::new(&program);
    command
        .args(arguments(plan))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match spawner {
        // SAFETY: `Spawner::enter` makes only async-signal-safe system calls on data prepared
        // before the fork, as a pre-exec hook must.
        Some(spawner) => unsafe {
            command.pre_exec(move || spawner.enter());
        },
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        None => unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        },
    }
    command.spawn().map_err(|source| VmError::VmmSpawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })
}

/// The QEMU binary's path: `binary()` itself when it names a path, else its first match on
/// `PATH`.
pub fn binary_path() -> Option<PathBuf> {
    let program = PathBuf::from(binary());
    if program.components().count() > 1 {
        return program.is_file().then_some(program);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&program))
        .find(|candidate| candidate.is_file())
}

/// The absolute path of the VMM binary, which must be under /usr: the jail holds /usr alone.
fn jailed_binary() -> Result<OsString, VmError> {
    let resolved = binary_path()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| VmError::VmmSpawn {
            program: binary().to_string_lossy().into_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    if !resolved.starts_with("/usr") {
        return Err(VmError::Jail(format!(
            "the VMM {} is outside /usr, which is all a jailed VMM can see; install QEMU under /usr or set ZTEE_JAIL=off",
            resolved.display()
        )));
    }
    Ok(resolved.into_os_string())
}

/// `qemu-system-x86_64 --version`, first line.
pub fn version() -> Option<String> {
    super::version_line(Path::new(&binary()))
}

/// Bumped when the snapshot layout or the way templates are made changes.
const FORMAT: &str = "ztee-snapshot-v1";

/// QEMU `microvm` under one accelerator, in ztee's own jail when VMMs are jailed.
pub(crate) struct QemuBackend {
    accelerator: Accelerator,
}

/// QEMU's part of a template: its RAM file, sealed against writes, for jailed restores (see
/// [`crate::jail`]).
struct QemuTemplate {
    sealed_ram: Option<SealedRam>,
}

impl QemuBackend {
    pub(crate) fn new(accelerator: Accelerator) -> Self {
        Self { accelerator }
    }

    /// Starts a VMM for a new VM in `runtime`, jailed when VMMs are. A jailed restore
    /// (`MemoryBacking::PrivateFile`) maps `sealed_ram` instead of the file.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        host: &Host,
        runtime: &mut RuntimeDir,
        spec: &SandboxSpec,
        initramfs: PathBuf,
        memory: MemoryBacking,
        incoming: bool,
        sealed_ram: Option<&SealedRam>,
    ) -> Result<(LaunchPlan, Child), VmError> {
        let config = &host.config;
        let mut plan = LaunchPlan {
            name: runtime.name().to_string(),
            kernel: config.assets.kernel.clone(),
            initramfs,
            rootfs: host.rootfs(spec),
            agent_socket: runtime.agent_socket(),
            console_log: runtime.console_log(),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            scratch_mib: spec.scratch_mib,
            accelerator: self.accelerator,
            qmp_socket: (!matches!(memory, MemoryBacking::Anonymous)).then(|| runtime.qmp_socket()),
            memory,
            incoming,
            jail: None,
        };
        let mut spawner = None;
        if host.jailed {
            let root = runtime.path().join("root");
            let jail = VmJail::create(
                &config.jail,
                runtime.name(),
                &root,
                spec.memory_mib,
                spec.vcpus,
                self.accelerator,
            )?;
            let (paths, prepared) = jail.prepare(&plan, sealed_ram.map(SealedRam::raw_fd))?;
            runtime.set_jail(jail)?;
            plan.jail = Some(paths);
            spawner = Some(prepared);
        }
        let vmm = launch(&plan, spawner)?;
        runtime.record_owner(vmm.id().unwrap_or(0))?;
        Ok((plan, vmm))
    }

    async fn cold_boot(
        &self,
        host: &Host,
        spec: &SandboxSpec,
        deadline: Instant,
    ) -> Result<Booted, VmError> {
        let id = crate::new_sandbox_id()?;
        let mut runtime = host.runtime_dir(&id)?;
        let secret = BootSecret::from_bytes(crate::random_bytes()?);
        initramfs::write_for_vm(&host.base_initramfs, &secret, &runtime.initramfs())?;
        let initramfs = runtime.initramfs();
        let (plan, mut vmm) = self.start(
            host,
            &mut runtime,
            spec,
            initramfs,
            MemoryBacking::Anonymous,
            false,
            None,
        )?;
        let channel = connect_or_exit(
            self,
            &mut vmm,
            &runtime,
            &plan.agent_socket,
            &secret,
            deadline,
        )
        .await?;
        Ok(Booted {
            runtime,
            vmm,
            channel: Arc::new(channel),
            accelerator: self.accelerator,
            kind: StartKind::Cold,
            backend: Vmm::Qemu,
        })
    }

    /// Boots a template VM with its RAM in `dir/ram` and saves its device state to `dir/state`.
    async fn save(
        &self,
        host: &Host,
        spec: &SandboxSpec,
        dir: &Path,
        deadline: Instant,
    ) -> Result<(), VmError> {
        let name = format!("tpl-{}", crate::hex(&crate::random_bytes::<8>()?));
        let mut runtime = host.runtime_dir(&name)?;
        let (_plan, mut vmm) = self.start(
            host,
            &mut runtime,
            spec,
            dir.join("initrd.img"),
            MemoryBacking::SharedFile(dir.join("ram")),
            false,
            None,
        )?;
        let state = dir.join("state");
        let saved = tokio::select! {
            saved = bounded(deadline, "saving the snapshot", save_when_listening(&runtime, &state, deadline)) => saved,
            status = vmm.wait() => Err(vmm_exited(&mut vmm, &runtime, status).await),
        };
        let _ = vmm.start_kill();
        let _ = vmm.wait().await;
        saved
    }

    async fn restore_from(
        &self,
        host: &Host,
        template: &Template,
        deadline: Instant,
    ) -> Result<Booted, VmError> {
        let saved: &QemuTemplate = template.state()?;
        let id = crate::new_sandbox_id()?;
        let mut runtime = host.runtime_dir(&id)?;
        let (plan, mut vmm) = self.start(
            host,
            &mut runtime,
            template.spec(),
            template.dir().join("initrd.img"),
            MemoryBacking::PrivateFile(template.dir().join("ram")),
            true,
            saved.sealed_ram.as_ref(),
        )?;
        let state = template.dir().join("state");
        let loaded = tokio::select! {
            loaded = bounded(deadline, "loading the snapshot", load_state(&runtime, &state, deadline)) => loaded,
            status = vmm.wait() => Err(vmm_exited(&mut vmm, &runtime, status).await),
        };
        loaded?;
        let channel = connect_or_exit(
            self,
            &mut vmm,
            &runtime,
            &plan.agent_socket,
            template.secret(),
            deadline,
        )
        .await?;
        Ok(Booted {
            runtime,
            vmm,
            channel: Arc::new(channel),
            accelerator: self.accelerator,
            kind: StartKind::Snapshot,
            backend: Vmm::Qemu,
        })
    }
}

impl Backend for QemuBackend {
    fn vmm(&self) -> Vmm {
        Vmm::Qemu
    }

    fn describe(&self) -> String {
        let binary = binary_path()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|| binary().to_string_lossy().into_owned());
        format!("qemu microvm ({binary}) under {}", self.accelerator)
    }

    fn template_inputs(&self) -> Result<TemplateInputs, VmError> {
        // The QEMU binary by identity: asking it for its version costs a process start.
        let vmm_binary = binary_path()
            .ok_or_else(|| VmError::Snapshot("the QEMU binary was not found on PATH".into()))?;
        Ok(TemplateInputs {
            format: FORMAT,
            vmm_binary,
            shape_suffix: format!(" {}", self.accelerator),
        })
    }

    fn boot<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>> {
        Box::pin(self.cold_boot(host, spec, deadline))
    }

    fn save_template<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        dir: &'a Path,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), VmError>> {
        Box::pin(self.save(host, spec, dir, deadline))
    }

    fn load_template(&self, host: &Host, dir: &Path) -> Result<Option<TemplateState>, VmError> {
        let ram = dir.join("ram");
        if !(ram.is_file() && dir.join("state").is_file()) {
            return Ok(None);
        }
        let sealed_ram = if host.jailed {
            // Every clone's jailed VMM reads the template's initramfs. Its secret is no secret
            // to them (it is in the template RAM each clone starts from, and every lease
            // replaces it); the snapshot directory (0700) keeps it from other host users.
            let initrd = dir.join("initrd.img");
            std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o444))
                .map_err(|e| VmError::io("chmod", &initrd, e))?;
            Some(SealedRam::load(&ram)?)
        } else {
            None
        };
        Ok(Some(Box::new(QemuTemplate { sealed_ram })))
    }

    fn restore<'a>(
        &'a self,
        host: &'a Host,
        template: &'a Template,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>> {
        Box::pin(self.restore_from(host, template, deadline))
    }

    fn connect_agent<'a>(
        &'a self,
        socket: &'a Path,
        secret: &'a BootSecret,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Channel, VmError>> {
        Box::pin(Channel::connect(socket, secret, deadline))
    }
}

/// Streams the saved device state into a VMM started with `-incoming defer`, and waits until
/// the VM runs.
async fn load_state(runtime: &RuntimeDir, state: &Path, deadline: Instant) -> Result<(), VmError> {
    let mut qmp = Qmp::connect(&runtime.qmp_socket(), deadline).await?;
    qmp.execute("migrate-set-capabilities", ignore_shared())
        .await?;
    let socket = runtime.migration_socket();
    qmp.execute(
        "migrate-incoming",
        json!({ "uri": format!("unix:{}", runtime.vmm_view(&socket).display()) }),
    )
    .await?;
    let bytes = tokio::fs::read(state)
        .await
        .map_err(|e| VmError::io("read snapshot state", state, e))?;
    let mut stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| VmError::io("connect to migration socket", &socket, e))?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| VmError::Snapshot(format!("stream state: {e}")))?;
    stream
        .shutdown()
        .await
        .map_err(|e| VmError::Snapshot(format!("stream state: {e}")))?;
    qmp.wait_migration(deadline).await?;
    // The template was paused when it was saved, and a restored VM keeps that run state.
    qmp.execute("cont", json!({})).await?;
    qmp.wait_running(deadline).await
}

fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": true } ] })
}

/// `work`, or an error naming `what` once `deadline` passes: the migration socket's accept and
/// copy wait on QEMU, which may never connect or finish.
async fn bounded<T>(
    deadline: Instant,
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, VmError>>,
) -> Result<T, VmError> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work)
        .await
        .map_err(|_| VmError::Snapshot(format!("{what} did not finish before the deadline")))?
}

/// Waits for the agent's "listening" line on the console, then pauses the VM and saves its
/// device state to `state`.
async fn save_when_listening(
    runtime: &RuntimeDir,
    state: &Path,
    deadline: Instant,
) -> Result<(), VmError> {
    snapshot::wait_for_agent_listening(runtime, deadline).await?;
    let mut qmp = Qmp::connect(&runtime.qmp_socket(), deadline).await?;
    qmp.execute("stop", json!({})).await?;
    qmp.execute("migrate-set-capabilities", ignore_shared())
        .await?;
    let socket = runtime.migration_socket();
    let listener = UnixListener::bind(&socket)
        .map_err(|e| VmError::io("bind migration socket", &socket, e))?;
    runtime.hand_to_vmm(&socket)?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("unix:{}", runtime.vmm_view(&socket).display()) }),
    )
    .await?;
    let (mut stream, _) = listener
        .accept()
        .await
        .map_err(|e| VmError::io("accept migration", &socket, e))?;
    let mut file = tokio::fs::File::create(state)
        .await
        .map_err(|e| VmError::io("create snapshot state", state, e))?;
    tokio::io::copy(&mut stream, &mut file)
        .await
        .map_err(|e| VmError::Snapshot(format!("save state: {e}")))?;
    file.sync_all()
        .await
        .map_err(|e| VmError::io("sync snapshot state", state, e))?;
    qmp.wait_migration(deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> LaunchPlan {
        LaunchPlan {
            name: "t".into(),
            kernel: PathBuf::from("/k"),
            initramfs: PathBuf::from("/i"),
            rootfs: PathBuf::from("/a,b/rootfs.img"),
            agent_socket: PathBuf::from("/s"),
            console_log: PathBuf::from("/c"),
            memory_mib: 128,
            vcpus: 1,
            scratch_mib: 64,
            accelerator: Accelerator::Tcg,
            memory: MemoryBacking::Anonymous,
            qmp_socket: None,
            incoming: false,
            jail: None,
        }
    }

    #[test]
    fn command_line_has_no_network_and_is_sandboxed() {
        let args: Vec<String> = arguments(&plan())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-nodefaults"));
        assert!(joined.contains("-sandbox on,obsolete=deny"));
        assert!(joined.contains("microvm,accel=tcg"));
        assert!(!joined.contains("netdev") && !joined.contains("-nic"));
        assert!(joined.contains("read-only=on,file=/a,,b/rootfs.img"));
        assert!(!joined.contains("-incoming") && !joined.contains("memory-backend"));
    }

    #[test]
    fn restore_maps_the_snapshot_privately_and_waits_for_state() {
        let mut restore = plan();
        restore.memory = MemoryBacking::PrivateFile(PathBuf::from("/snap/ram"));
        restore.qmp_socket = Some(PathBuf::from("/run/qmp.sock"));
        restore.incoming = true;
        let joined: Vec<String> = arguments(&restore)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        assert!(
            joined.contains("memory-backend-file,id=ram,size=128M,share=off,mem-path=/snap/ram")
        );
        assert!(joined.contains(",memory-backend=ram"));
        assert!(joined.contains("-incoming defer"));
        assert!(joined.contains("-qmp unix:/run/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn a_jailed_vmm_gets_the_paths_inside_its_root() {
        let mut restore = plan();
        restore.memory = MemoryBacking::PrivateFile(PathBuf::from("/host/snap/ram"));
        restore.qmp_socket = Some(PathBuf::from("/host/run/qmp.sock"));
        restore.jail = Some(crate::backend::JailPaths {
            kernel: PathBuf::from("/vm/vmlinux"),
            initramfs: PathBuf::from("/vm/initrd.img"),
            rootfs: PathBuf::from("/vm/rootfs.img"),
            agent_socket: PathBuf::from("/run/agent.sock"),
            console_log: PathBuf::from("/run/console.log"),
            qmp_socket: Some(PathBuf::from("/run/qmp.sock")),
            mem_path: Some(PathBuf::from("/proc/self/fd/7")),
        });
        let args: Vec<String> = arguments(&restore)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-kernel /vm/vmlinux -initrd /vm/initrd.img"));
        assert!(joined.contains("read-only=on,file=/vm/rootfs.img"));
        assert!(joined.contains("path=/run/agent.sock"));
        assert!(joined.contains("share=off,mem-path=/proc/self/fd/7"));
        assert!(joined.contains("-qmp unix:/run/qmp.sock,"));
        assert!(joined.contains("-serial file:/run/console.log"));
        assert!(!joined.contains("/host/"), "{joined}");
        assert!(joined.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
    }
}
