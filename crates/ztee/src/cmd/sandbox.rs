//! `ztee sandbox`: long-lived sandboxes held by a local supervisor process.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use ztee_vm::ExecSpec;

use std::sync::Arc;

use ztee_audit::{EventType, Outcome};
use ztee_server::pipeline::{Outbound, Work};

use crate::cmd::run::{
    exit_code, parse_env, parse_seconds, parse_secret, stream_masked, RunSecrets,
};
use crate::globals::{Format, GlobalArgs};
use crate::local::{LocalClient, LocalRecord, Registry};
use crate::local_core::{HeldBySupervisor, LocalCore, EXIT_POLICY};
use crate::output;
use crate::vm;

/// Examples:
///   id=$(ztee sandbox create)
///   id=$(ztee sandbox create --secret DB_PASSWORD=PGPASSWORD --allow-egress db.internal:5432)
///   ztee sandbox exec $id -- ls /home/user
///   ztee sandbox cp ./data.csv $id:/home/user/data.csv
///   ztee sandbox cp $id:/home/user/out.json ./out.json
///   ztee sandbox ls
///   ztee sandbox inspect $id
///   ztee sandbox rm $id
#[derive(Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// Boot a sandbox that stays up until removed or its lifetime passes; prints its id.
    Create(CreateArgs),
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec(ExecArgs),
    /// Copy a file into or out of a sandbox: `cp LOCAL ID:PATH` or `cp ID:PATH LOCAL`.
    Cp { source: String, destination: String },
    /// List running sandboxes.
    Ls,
    /// Show one sandbox's details, including its VMM process.
    Inspect { id: String },
    /// Destroy sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Internal: the supervisor process `create` starts.
    #[command(hide = true)]
    Supervise(CreateArgs),
}

#[derive(clap::Args, Clone)]
pub struct CreateArgs {
    /// Destroy the sandbox after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value = "900", value_parser = parse_seconds)]
    pub timeout: Duration,

    #[command(flatten)]
    pub shape: vm::ShapeArgs,

    #[command(flatten)]
    pub image: vm::ImageArgs,

    #[command(flatten)]
    pub egress: vm::EgressArgs,

    /// Give every command in the sandbox a secret from the built-in store (repeatable): NAME
    /// puts it in the file /run/secrets/NAME (mode 0400, tmpfs); NAME=ENVVAR also sets the
    /// environment variable ENVVAR for every command. Its value (and its base64, hex and
    /// URL-encoded forms) is redacted from `exec` output and from files copied out.
    #[arg(long = "secret", value_name = "NAME[=ENVVAR]", value_parser = parse_secret)]
    pub secrets: Vec<ztee_secrets::SecretRequest>,

    #[command(flatten)]
    pub secret_store: crate::cmd::secret::StoreArgs,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    pub id: String,

    /// Stop the command after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// Set an environment variable: NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Working directory inside the sandbox (default: /home/user).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Forward stdin even when it is a terminal.
    #[arg(long, short = 'i')]
    pub interactive: bool,

    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let registry = Registry::new(&globals.data_dir);
    match command {
        Command::Create(args) => create(args, globals),
        Command::Supervise(args) => supervise(args, globals, registry),
        Command::Exec(args) => exec(args, globals, registry),
        Command::Cp {
            source,
            destination,
        } => copy(&source, &destination, globals, registry),
        Command::Ls => {
            let records = registry.list();
            output::print_list(
                globals.format,
                &[
                    "ID", "CREATED", "EXPIRES", "MEMORY", "VCPUS", "ACCEL", "VMM PID",
                ],
                &records,
                |r| {
                    vec![
                        r.id.clone(),
                        ago(r.vm.created_at),
                        until(r.expires_at),
                        format!("{} MiB", r.vm.memory_mib),
                        r.vm.vcpus.to_string(),
                        r.vm.accelerator.clone(),
                        r.vm.vmm_pid.to_string(),
                    ]
                },
            )?;
            Ok(0)
        }
        Command::Inspect { id } => {
            let record = registry.get(&id)?;
            inspect(globals.format, &record)?;
            Ok(0)
        }
        Command::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                let result = LocalClient::open(registry.clone(), &id)
                    .map_err(anyhow::Error::from)
                    .and_then(|client| remove(client, &id, globals));
                match result {
                    Ok(()) => println!("{id}"),
                    Err(err) => {
                        eprintln!("error: {}", output::one_line_error(&err));
                        failed = true;
                    }
                }
            }
            Ok(u8::from(failed))
        }
    }
}

/// Destroys one sandbox, decided (`sandbox.delete`) and recorded (`sandbox.close`) as through
/// the gateway.
fn remove(client: LocalClient, id: &str, globals: &GlobalArgs) -> anyhow::Result<()> {
    vm::block_on(async {
        let core = LocalCore::open(globals, Arc::new(HeldBySupervisor), None, None)?;
        let mut ctx = core.context(
            "sandbox.delete",
            EventType::SandboxClose,
            format!("sandbox/{id}"),
        );
        let admitted = core
            .admit(&mut ctx, Work::default())
            .await
            .map_err(|refusal| anyhow::anyhow!("{}", refusal.message))?;
        let removed = client.remove().await;
        core.record(core.ran(&ctx, &admitted, removed.is_ok()))
            .await?;
        Ok(removed?)
    })
}

/// Decides the creation like the gateway does (`sandbox.create`: inbound DLP, the data
/// directory's policy), starts the supervisor, and records the outcome in the node's trail.
fn create(mut args: CreateArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    vm::block_on(async {
        // The image's admission runs here, in the core, before the supervisor boots anything;
        // the supervisor boots exactly the admitted digest.
        let executor: Arc<dyn ztee_server::exec::Executor> = match &args.image.image {
            Some(_) => Arc::new(vm::executor(globals, &args.image)?),
            None => Arc::new(HeldBySupervisor),
        };
        let core = LocalCore::open(globals, executor, None, None)?;
        let mut ctx = core.context(
            "sandbox.create",
            EventType::SandboxCreate,
            "sandbox/(new)".to_owned(),
        );
        let spec = args.shape.spec();
        ctx.policy.image = args.image.image.clone();
        ctx.policy.memory_mib = Some(spec.memory_mib);
        ctx.policy.vcpus = Some(u32::from(spec.vcpus));
        ctx.policy.timeout_s = Some(args.timeout.as_secs());
        ctx.policy.secrets = args.secrets.iter().map(|r| r.name.to_string()).collect();
        let admitted = match core.admit(&mut ctx, Work::default()).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(refusal.report()),
        };
        if let Some((_, allowlist)) = args.egress.proxy()? {
            if let Err(refusal) = core.authorize_egress(&ctx, &allowlist).await {
                return Ok(refusal.report());
            }
        }
        if let Some(image) = args.image.image.clone() {
            match ztee_server::admit_image(&core.state, &ctx, Some(&image)).await {
                // The supervisor admits it again (it is the process that boots), by digest, so
                // a tag moved in between cannot change what boots.
                Ok(Some(admitted)) => args.image.image = Some(pinned(&image, admitted.digest())),
                Ok(None) => {}
                Err(e) => return Ok(crate::local_core::Refusal::from(e).report()),
            }
        }
        let decision = ztee_server::audit::decision_record(&admitted.decision);
        let report = start_supervisor(&args, globals);
        let (outcome, decision, answer) = match report {
            Ok(Supervised::Created(id)) => {
                ctx.resource = Some(format!("sandbox/{id}"));
                (Outcome::Success, decision, Ok(id))
            }
            Ok(Supervised::Refused(why)) => {
                let refusal = ztee_audit::DecisionRecord {
                    decision: ztee_audit::DecisionKind::Deny,
                    risk: "HIGH".into(),
                    rule_ids: vec!["admission.refused".into()],
                    reasons: vec![why.clone()],
                };
                (Outcome::Denied, refusal, Err(Ok(why)))
            }
            Err(e) => (Outcome::Failure, decision, Err(Err(e))),
        };
        core.record(core.event(&ctx, outcome).with_decision(decision))
            .await?;
        match answer {
            Ok(id) => {
                match globals.format {
                    Format::Json => println!("{}", serde_json::json!({ "id": id })),
                    Format::Table => println!("{id}"),
                }
                Ok(0)
            }
            Err(Ok(why)) => {
                eprintln!("error: {why}");
                Ok(vm::EXIT_REFUSED)
            }
            Err(Err(e)) => Err(e),
        }
    })
}

/// `reference` named by `digest`: `name:tag` and `name@sha256:…` become `name@<digest>`.
fn pinned(reference: &str, digest: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    // A tag is what follows the last `:` after the last `/` (a registry's port comes before it).
    let name = match name.rfind(':') {
        Some(colon) if colon > name.rfind('/').unwrap_or(0) => &name[..colon],
        _ => name,
    };
    format!("{name}@{digest}")
}

/// What the supervisor reported.
enum Supervised {
    Created(String),
    /// The image was refused by the admission policy.
    Refused(String),
}

/// Starts the supervisor detached (own session, so it outlives this terminal) and waits for
/// its one-line report.
fn start_supervisor(args: &CreateArgs, globals: &GlobalArgs) -> anyhow::Result<Supervised> {
    let exe = std::env::current_exe().context("cannot find the ztee executable")?;
    let log_dir = globals.data_dir.join("run");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("supervisor.log"))
        .context("cannot open the supervisor log")?;
    let mut process = Process::new(exe);
    process
        .arg("--data-dir")
        .arg(&globals.data_dir)
        .arg("--log")
        .arg(&globals.log)
        .args(globals.vmm.iter().flat_map(|vmm| ["--vmm", vmm.as_str()]))
        .args(["sandbox", "supervise", "--timeout"])
        .arg(args.timeout.as_secs_f64().to_string())
        .args(["--memory", &args.shape.memory.to_string()])
        .args(["--vcpus", &args.shape.vcpus.to_string()])
        .args(
            args.shape
                .disk
                .iter()
                .flat_map(|mib| ["--disk".to_owned(), mib.to_string()]),
        )
        .args(["--max-processes", &args.shape.max_processes.to_string()])
        .args(
            args.image
                .image
                .iter()
                .flat_map(|image| ["--image", image.as_str()]),
        )
        .args(
            args.image
                .policy
                .iter()
                .flat_map(|policy| [std::ffi::OsStr::new("--policy"), policy.as_os_str()]),
        )
        .args(args.egress.to_args())
        .args(
            args.secrets
                .iter()
                .flat_map(|request| ["--secret".to_string(), request.to_string()]),
        )
        .args(args.secret_store.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    unsafe {
        process.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = process
        .spawn()
        .context("cannot start the sandbox supervisor")?;
    let stdout = child
        .stdout
        .take()
        .context("the supervisor has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read the supervisor's report")?;
    let report: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    if let Some(id) = report.get("id").and_then(|v| v.as_str()) {
        return Ok(Supervised::Created(id.to_owned()));
    }
    let _ = child.wait();
    if report.get("refused").and_then(|v| v.as_bool()) == Some(true) {
        let why = report
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("refused");
        return Ok(Supervised::Refused(why.to_owned()));
    }
    match report.get("error").and_then(|v| v.as_str()) {
        Some(error) => bail!("cannot create a sandbox: {error}"),
        None => bail!(
            "the sandbox supervisor exited without a report; see {}",
            log_dir.join("supervisor.log").display()
        ),
    }
}

fn supervise(args: CreateArgs, globals: &GlobalArgs, registry: Registry) -> anyhow::Result<u8> {
    let report = |value: serde_json::Value| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    };
    let mut spec = args.shape.spec();
    match vm::admit(globals, &args.image) {
        Ok(vm::Admission::Default) => {}
        Ok(vm::Admission::Admitted(image)) => spec.image = Some(image),
        Ok(vm::Admission::Refused(why)) => {
            report(serde_json::json!({ "error": why, "refused": true }));
            return Ok(vm::EXIT_REFUSED);
        }
        Err(err) => {
            report(serde_json::json!({ "error": output::one_line_error(&err) }));
            return Err(err);
        }
    }
    let egress = match args.egress.proxy() {
        Ok(egress) => egress
            .map(|(proxy, allowlist)| crate::local::supervisor::LocalEgress { proxy, allowlist }),
        Err(err) => {
            report(serde_json::json!({ "error": output::one_line_error(&err) }));
            return Err(err);
        }
    };
    let secrets = match RunSecrets::load(&args.secrets, &args.secret_store, globals) {
        Ok(secrets) => secrets.into_local(),
        Err(err) => {
            report(serde_json::json!({ "error": output::one_line_error(&err) }));
            return Err(err);
        }
    };
    vm::block_on(async {
        let engine = match vm::engine(globals) {
            Ok(engine) => engine,
            Err(err) => {
                report(serde_json::json!({ "error": output::one_line_error(&err) }));
                return Err(err);
            }
        };
        crate::local::supervisor::supervise(
            engine,
            spec,
            args.timeout,
            registry,
            crate::local::supervisor::Grants { egress, secrets },
            |result| match result {
                Ok(record) => report(serde_json::json!({ "id": record.id })),
                Err(err) => report(serde_json::json!({ "error": err.to_string() })),
            },
        )
        .await?;
        Ok(0)
    })
}

fn exec(args: ExecArgs, globals: &GlobalArgs, registry: Registry) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let record = registry.get(&args.id)?;
    let client = LocalClient::open(registry, &args.id)?;
    // Input is scanned and decided like the rest of the request, so it is read whole first.
    let input = if args.interactive || !std::io::stdin().is_terminal() {
        crate::cmd::run::read_stdin()?
    } else {
        None
    };
    vm::block_on(async {
        let core = LocalCore::open(globals, Arc::new(HeldBySupervisor), None, None)?;
        let mut ctx = core.context(
            "sandbox.exec",
            EventType::SandboxExec,
            format!("sandbox/{}", args.id),
        );
        ctx.policy.secrets = secret_names(&record);
        let work = Work {
            argv: args.command.clone(),
            env: args.env.iter().cloned().collect(),
            cwd: args.cwd.clone(),
            stdin: input,
            ..Work::default()
        };
        let admitted = match core.admit(&mut ctx, work).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(refusal.report()),
        };
        let mut spec = ExecSpec::new(admitted.work.argv.clone());
        spec.env = admitted
            .work
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.cwd = admitted.work.cwd.clone();
        spec.timeout = args.timeout;
        spec.stdin = admitted.work.stdin.is_some();
        // The sandbox's own secrets are masked by its supervisor; card numbers here.
        let mut outbound = Outbound::new(core.pipeline().dlp.as_ref(), None);
        let mut output_digest = core.pipeline().content_key.hasher();
        let status = match client.exec(spec).await {
            Ok(execution) => {
                stream_masked(
                    execution,
                    admitted.work.stdin.as_deref(),
                    &mut outbound,
                    &mut output_digest,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        let event = core
            .ran(&ctx, &admitted, status.is_ok())
            .with_output(&output_digest.finalize())
            .with_redactions(&outbound.counts());
        core.record(event).await?;
        exit_code(status?, args.timeout)
    })
}

/// The names of the secrets a sandbox holds (never their values), for the policy input.
fn secret_names(record: &LocalRecord) -> Vec<String> {
    record
        .secrets
        .iter()
        .map(|request| request.split('=').next().unwrap_or(request).to_owned())
        .collect()
}

/// `ID:PATH` when `text` starts with a sandbox id and a colon.
fn sandbox_path(text: &str) -> Option<(&str, &str)> {
    let (id, path) = text.split_once(':')?;
    ztee_vm::is_sandbox_id(id).then_some((id, path))
}

fn copy(
    source: &str,
    destination: &str,
    globals: &GlobalArgs,
    registry: Registry,
) -> anyhow::Result<u8> {
    match (sandbox_path(source), sandbox_path(destination)) {
        (None, Some((id, path))) => {
            let data = std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(source)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o644)
            };
            let record = registry.get(id)?;
            let client = LocalClient::open(registry, id)?;
            vm::block_on(async {
                let core = LocalCore::open(globals, Arc::new(HeldBySupervisor), None, None)?;
                let mut ctx = core.context(
                    "file.write",
                    EventType::FileWrite,
                    format!("sandbox/{id}{path}"),
                );
                ctx.policy.secrets = secret_names(&record);
                let work = Work {
                    files: vec![ztee_server::pipeline::InputFile {
                        path: path.to_owned(),
                        content: bytes::Bytes::from(data),
                        mode,
                    }],
                    ..Work::default()
                };
                let admitted = match core.admit(&mut ctx, work).await {
                    Ok(admitted) => admitted,
                    Err(refusal) => return Ok(refusal.report()),
                };
                let file = admitted
                    .work
                    .files
                    .first()
                    .cloned()
                    .context("the admitted upload lost its file")?;
                let written = client
                    .write_file(&file.path, &file.content, file.mode)
                    .await;
                let event = core
                    .ran(&ctx, &admitted, written.is_ok())
                    .with_redactions(&admitted.inbound_redactions);
                core.record(event).await?;
                written?;
                Ok(0)
            })
        }
        (Some((id, path)), None) => {
            let record = registry.get(id)?;
            let client = LocalClient::open(registry, id)?;
            vm::block_on(async {
                let core = LocalCore::open(globals, Arc::new(HeldBySupervisor), None, None)?;
                let mut ctx = core.context(
                    "file.read",
                    EventType::FileRead,
                    format!("sandbox/{id}{path}"),
                );
                ctx.policy.secrets = secret_names(&record);
                let work = Work {
                    argv: vec![path.to_owned()],
                    ..Work::default()
                };
                let admitted = match core.admit(&mut ctx, work).await {
                    Ok(admitted) => admitted,
                    Err(refusal) => return Ok(refusal.report()),
                };
                let decision = ztee_server::audit::decision_record(&admitted.decision);
                let data = match client.read_file(path).await {
                    Ok(data) => data,
                    Err(e) => {
                        let event = core
                            .event(&ctx, Outcome::Failure)
                            .with_decision(decision);
                        core.record(event).await?;
                        return Err(e.into());
                    }
                };
                // Outbound DLP as for a gateway download: text is masked, binary with
                // findings is refused (it cannot be masked in place).
                let dlp = core.pipeline().dlp.as_ref();
                let (data, counts) = match std::str::from_utf8(&data) {
                    Ok(text) => {
                        let redacted = dlp.redact(text);
                        (redacted.text.into_bytes(), redacted.counts)
                    }
                    Err(_) => {
                        let found = dlp.scan(&String::from_utf8_lossy(&data));
                        if !found.is_empty() {
                            let event = core
                                .event(&ctx, Outcome::Denied)
                                .with_decision(decision)
                                .with_output(&core.pipeline().content_key.digest(&data));
                            core.record(event).await?;
                            eprintln!(
                                "error: {path} is binary and holds sensitive data ({}) that cannot be masked in place",
                                found.join(", ")
                            );
                            return Ok(EXIT_POLICY);
                        }
                        (data, Default::default())
                    }
                };
                let event = core
                    .event(&ctx, Outcome::Success)
                    .with_decision(decision)
                    .with_output(&core.pipeline().content_key.digest(&data))
                    .with_redactions(&counts);
                core.record(event).await?;
                write_atomically(destination, &data)?;
                Ok(0)
            })
        }
        (Some(_), Some(_)) => bail!("copy between two sandboxes is not supported; copy through the host"),
        (None, None) => bail!("one side of `cp` must be a sandbox path, written ID:PATH (e.g. sbx-0123456789abcdef:/home/user/out.json)"),
    }
}

/// Writes next to `path` and renames, so a failure never leaves a partial file behind.
///
/// The temporary file gets an unpredictable name and is created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600: a file or symbolic link another local user planted in
/// the directory cannot redirect the write (a taken name is skipped, never opened). The rename
/// replaces `path` itself, never the target of a link at `path`. A new file stays 0600 (it holds
/// data from the sandbox); an existing regular file keeps its permission bits.
fn write_atomically(path: &str, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let target = std::path::Path::new(path);
    if target.is_dir() {
        bail!("{path} is a directory; give the destination file name")
    }
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let prefix = format!(
        ".{}.ztee-",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mode = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_file() => meta.permissions().mode() & 0o777,
        _ => 0o600,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .make_in(dir, |candidate| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(candidate)
        })
        .with_context(|| {
            format!(
                "cannot create a temporary file in {} for {path}",
                dir.display()
            )
        })?;
    temp.as_file_mut()
        .write_all(data)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", temp.path().display()))?;
    if mode != 0o600 {
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", temp.path().display()))?;
    }
    // On failure the temporary file is removed when `PersistError` drops it.
    temp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {path}"))?;
    Ok(())
}

fn inspect(format: Format, record: &LocalRecord) -> anyhow::Result<()> {
    let mut rows = vec![
        ("id", record.id.clone()),
        ("backend", record.vm.backend.clone()),
        ("accelerator", record.vm.accelerator.clone()),
        ("vmm pid", record.vm.vmm_pid.to_string()),
        ("supervisor pid", record.supervisor_pid.to_string()),
        ("memory", format!("{} MiB", record.vm.memory_mib)),
        ("vcpus", record.vm.vcpus.to_string()),
        ("scratch disk", format!("{} MiB", record.vm.scratch_mib)),
        ("guest kernel", record.vm.guest_kernel.clone()),
        ("agent", record.vm.agent_version.clone()),
        ("created", ago(record.vm.created_at)),
        ("expires", until(record.expires_at)),
        ("image", record.vm.image.clone()),
        ("started from", record.vm.start.clone()),
        ("ready in", format!("{} ms", record.vm.ready_ms)),
        (
            "egress",
            if record.egress.is_empty() {
                "none (no network)".to_string()
            } else {
                record.egress.join(" ")
            },
        ),
        (
            "secrets",
            if record.secrets.is_empty() {
                "none".to_string()
            } else {
                record.secrets.join(" ")
            },
        ),
    ];
    match &record.vm.jail {
        Some(jail) => {
            rows.push(("jail", "on".to_string()));
            rows.push(("jail waiter pid", jail.waiter_pid.to_string()));
            rows.push(("jail uid/gid", format!("{}/{}", jail.uid, jail.gid)));
            rows.push(("jail root", jail.root.display().to_string()));
            let cgroups: Vec<String> = jail
                .cgroups
                .iter()
                .map(|c| c.display().to_string())
                .collect();
            rows.push(("jail cgroups", cgroups.join(" ")));
            for (kind, id) in &jail.namespaces {
                rows.push((ns_label(kind), id.clone()));
            }
        }
        None => rows.push((
            "jail",
            "off (VMM runs unjailed: ztee was not root or ZTEE_JAIL=off)".to_string(),
        )),
    }
    output::print_object(format, record, &rows)
}

fn ns_label(kind: &str) -> &'static str {
    match kind {
        "mnt" => "mnt namespace",
        "pid" => "pid namespace",
        "ipc" => "ipc namespace",
        "uts" => "uts namespace",
        "net" => "net namespace",
        _ => "namespace",
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ago(at: u64) -> String {
    format!("{}s ago", now().saturating_sub(at))
}

fn until(at: u64) -> String {
    format!("in {}s", at.saturating_sub(now()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_admitted_image_is_named_by_its_digest() {
        let d = "sha256:ab";
        assert_eq!(pinned("tiny:1", d), "tiny@sha256:ab");
        assert_eq!(pinned("tiny", d), "tiny@sha256:ab");
        assert_eq!(pinned("tiny@sha256:ab", d), "tiny@sha256:ab");
        assert_eq!(
            pinned("localhost:5000/team/tiny:2", d),
            "localhost:5000/team/tiny@sha256:ab"
        );
        assert_eq!(
            pinned("localhost:5000/tiny", d),
            "localhost:5000/tiny@sha256:ab"
        );
    }

    /// #21: a local user who pre-creates a symlink at the temporary name the copy used to write
    /// to (`.NAME.ztee-PID` next to the destination) must not redirect the write.
    #[test]
    fn copy_out_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"victim's data").unwrap();
        let destination = dir.path().join("out.json");
        let predictable = dir
            .path()
            .join(format!(".out.json.ztee-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &predictable).unwrap();

        write_atomically(destination.to_str().unwrap(), b"{\"from\":\"sandbox\"}").unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's data");
        let meta = std::fs::symlink_metadata(&destination).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(
            std::fs::read(&destination).unwrap(),
            b"{\"from\":\"sandbox\"}"
        );
        // The planted link is left alone, and nothing else is left behind.
        assert_eq!(std::fs::read_link(&predictable).unwrap(), victim);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!(".out.json.ztee-{}", std::process::id()),
                "out.json".to_string(),
                "victim".to_string()
            ]
        );
    }

    #[test]
    fn copy_out_replaces_the_destination_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.txt");
        write_atomically(fresh.to_str().unwrap(), b"new").unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
        // A new file is private to the user: it may hold data from the sandbox.
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let existing = dir.path().join("existing.txt");
        std::fs::write(&existing, b"old").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(existing.to_str().unwrap(), b"replaced").unwrap();
        assert_eq!(std::fs::read(&existing).unwrap(), b"replaced");
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        let err = write_atomically(dir.path().to_str().unwrap(), b"x").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
