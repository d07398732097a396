//! `ztee run`: one command in a fresh microVM, destroyed afterwards.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use ztee_vm::{CommandStream, ExecEvent, ExecSpec, ExitStatus, Sandbox};

use ztee_audit::{EventType, Outcome};
use ztee_server::pipeline::{Outbound, Work};

use crate::globals::GlobalArgs;
use crate::local_core::LocalCore;
use crate::vm;

/// Run one command in a fresh microVM with its own kernel; the VM is destroyed afterwards.
///
/// Examples:
///   ztee run -- python3 -c 'print(6*7)'
///   ztee run --timeout 2 -- sleep 30
///   ztee run --file ./job.py:/home/user/job.py -- python3 /home/user/job.py
///   echo hello | ztee run -- tr a-z A-Z
///   ztee run --allow-egress pypi.org:443 -- python3 -c "import urllib.request as u; print(u.urlopen('https://pypi.org/simple/').status)"
///   ztee run --secret DB_PASSWORD=PGPASSWORD -- sh -c 'test -n "$PGPASSWORD" && cat /run/secrets/DB_PASSWORD'
///
/// The exit code is the command's own (128+N when killed by signal N, 124 on timeout, 125 when
/// its output passed the limit, 3 when `--image` was refused by the admission policy). stdout
/// and stderr stay separate and stream as produced. With `--allow-egress`, a summary of every
/// connection the command made (allowed or denied, and why) follows on stderr.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Stop the command after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// Copy a host file into the sandbox before running: LOCAL:REMOTE (repeatable).
    #[arg(long = "file", value_name = "LOCAL:REMOTE", value_parser = parse_file_copy)]
    pub files: Vec<FileCopy>,

    /// Set an environment variable for the command: NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Working directory inside the sandbox (default: /home/user).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    #[command(flatten)]
    pub shape: vm::ShapeArgs,

    #[command(flatten)]
    pub image: vm::ImageArgs,

    #[command(flatten)]
    pub egress: vm::EgressArgs,

    /// Forward stdin even when it is a terminal (by default only piped stdin is forwarded).
    #[arg(long, short = 'i')]
    pub interactive: bool,

    /// Give the command a secret from the built-in store (repeatable): NAME puts it in the file
    /// /run/secrets/NAME (mode 0400, tmpfs); NAME=ENVVAR also sets the environment variable
    /// ENVVAR. Its value (and its base64, hex and URL-encoded forms) is redacted from the
    /// output. The store is unlocked with the master key options below.
    #[arg(long = "secret", value_name = "NAME[=ENVVAR]", value_parser = parse_secret)]
    pub secrets: Vec<ztee_secrets::SecretRequest>,

    #[command(flatten)]
    pub secret_store: crate::cmd::secret::StoreArgs,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn parse_secret(text: &str) -> Result<ztee_secrets::SecretRequest, String> {
    ztee_secrets::SecretRequest::parse(text).map_err(|e| e.to_string())
}

/// Secret values leased for one run (or one CLI-held sandbox), and the scanner that redacts them
/// from its output.
pub struct RunSecrets {
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
    names: Vec<String>,
    pub redactor: Option<std::sync::Arc<ztee_dlp::Scanner>>,
}

impl RunSecrets {
    /// The secrets for a CLI-held sandbox's supervisor; `None` when there are none.
    pub fn into_local(self) -> Option<crate::local::LocalSecrets> {
        let redactor = self.redactor?;
        Some(crate::local::LocalSecrets {
            files: self.files,
            env: self.env,
            names: self.names,
            redactor,
        })
    }

    /// The run's secret values for the outbound stage, which masks them in this run's output
    /// only; `None` when there are none.
    pub fn scope(&self) -> anyhow::Result<Option<ztee_server::SecretScope>> {
        if self.files.is_empty() {
            return Ok(None);
        }
        let labels: Vec<String> = (0..self.files.len()).map(|i| format!("run/{i}")).collect();
        let values: Vec<(&str, &[u8])> = labels
            .iter()
            .zip(&self.files)
            .map(|(label, (_, value))| (label.as_str(), value.as_slice()))
            .collect();
        ztee_server::SecretScope::new(&values)
            .map(Some)
            .map_err(|e| {
                anyhow::anyhow!("a secret cannot be masked in the output, so the run stops: {e}")
            })
    }

    fn none() -> Self {
        Self {
            files: Vec::new(),
            env: Vec::new(),
            names: Vec::new(),
            redactor: None,
        }
    }

    /// Reads each requested secret from the built-in store and registers every value for
    /// redaction; nothing when none is requested.
    pub fn load(
        requests: &[ztee_secrets::SecretRequest],
        store: &crate::cmd::secret::StoreArgs,
        globals: &GlobalArgs,
    ) -> anyhow::Result<Self> {
        if requests.is_empty() {
            return Ok(Self::none());
        }
        let store = store.open(globals)?;
        let scanner = ztee_dlp::Scanner::new(ztee_dlp::ScannerConfig {
            entities: vec![ztee_dlp::Entity::Secret],
            ..Default::default()
        })?;
        let mut secrets = Self::none();
        let mut names = std::collections::BTreeSet::new();
        for (i, request) in requests.iter().enumerate() {
            if !names.insert(request.name.clone()) {
                bail!("--secret {} is given twice", request.name);
            }
            let value = store.get(&request.name)?;
            scanner
                .register_secret(&format!("run/{i}"), value.expose())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "secret {} cannot be redacted from the output, so it is not injected: {e}",
                        request.name
                    )
                })?;
            if let Some(var) = &request.env {
                let text = value.expose_str().ok_or_else(|| {
                    anyhow::anyhow!(
                        "secret {} is not UTF-8 text and cannot be an environment variable",
                        request.name
                    )
                })?;
                secrets.env.push((var.to_string(), text.to_owned()));
            }
            secrets
                .files
                .push((request.guest_path(), value.expose().to_vec()));
            secrets.names.push(request.to_string());
        }
        secrets.redactor = Some(std::sync::Arc::new(scanner));
        Ok(secrets)
    }
}

#[derive(Debug, Clone)]
pub struct FileCopy {
    pub local: PathBuf,
    pub remote: String,
}

pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 7.0 * 86400.0) {
        return Err("must be more than 0 and at most 604800 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_file_copy(text: &str) -> Result<FileCopy, String> {
    let (local, remote) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not LOCAL:REMOTE"))?;
    if local.is_empty() || remote.is_empty() {
        return Err(format!("{text:?} is not LOCAL:REMOTE"));
    }
    Ok(FileCopy {
        local: PathBuf::from(local),
        remote: remote.to_string(),
    })
}

pub fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() || name.contains('\0') || value.contains('\0') {
        return Err(format!("{text:?} is not NAME=VALUE"));
    }
    Ok((name.to_string(), value.to_string()))
}

pub fn run(args: Args, globals: &GlobalArgs) -> anyhow::Result<u8> {
    // Read inputs before booting anything: a missing file is the caller's error, found in
    // microseconds, not after a VM boot.
    let mut uploads = Vec::new();
    for copy in &args.files {
        let data = std::fs::read(&copy.local)
            .with_context(|| format!("--file {}", copy.local.display()))?;
        uploads.push((copy.remote.clone(), data, file_mode(&copy.local)));
    }
    let forward_stdin = args.interactive || !std::io::stdin().is_terminal();
    let egress = args.egress.proxy()?;
    vm::block_on(async {
        let engine = vm::engine(globals)?;
        let executor = std::sync::Arc::new(ztee_server::VmExecutor::new(engine.clone()));
        let core = LocalCore::open(globals, executor)?;
        // The same stages as `POST /v1/run`: inbound DLP and policy, then the image, then the
        // secrets, then the VM; the audit record closes it.
        let id = format!("run_{}", uuid::Uuid::new_v4().simple());
        let mut ctx = core.context("run", EventType::Run, format!("run/{id}"));
        let spec = args.shape.spec();
        ctx.policy.image = args.image.image.clone();
        ctx.policy.memory_mib = Some(spec.memory_mib);
        ctx.policy.vcpus = Some(u32::from(spec.vcpus));
        ctx.policy.timeout_s = args.timeout.map(|t| t.as_secs());
        ctx.policy.secrets = args.secrets.iter().map(|r| r.name.to_string()).collect();
        let modes: Vec<u32> = uploads.iter().map(|(_, _, mode)| *mode).collect();
        let work = Work {
            argv: args.command.clone(),
            env: args.env.iter().cloned().collect(),
            cwd: args.cwd.clone(),
            files: uploads
                .into_iter()
                .map(|(remote, data, _)| (remote, bytes::Bytes::from(data)))
                .collect(),
            ..Work::default()
        };
        let admitted = match core.admit(&mut ctx, work).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(refusal.report()),
        };
        if let Some((_, allowlist)) = &egress {
            if let Err(refusal) = core.authorize_egress(&ctx, allowlist).await {
                return Ok(refusal.report());
            }
        }
        let mut spec = spec;
        match vm::admit(globals, &args.image)? {
            vm::Admission::Default => {}
            vm::Admission::Admitted(image) => spec.image = Some(image),
            vm::Admission::Refused(why) => {
                let event =
                    core.event(&ctx, Outcome::Denied)
                        .with_decision(ztee_audit::DecisionRecord {
                            decision: ztee_audit::DecisionKind::Deny,
                            risk: "HIGH".into(),
                            rule_ids: vec!["admission.refused".into()],
                            reasons: vec![why.clone()],
                        });
                core.record(event).await?;
                eprintln!("error: {why}");
                return Ok(vm::EXIT_REFUSED);
            }
        }
        let secrets = RunSecrets::load(&args.secrets, &args.secret_store, globals)?;
        let decision = ztee_server::audit::decision_record(&admitted.decision);
        let sandbox = match engine.create(spec).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                let event = core
                    .event(&ctx, Outcome::Failure)
                    .with_decision(decision.clone());
                core.record(event).await?;
                return Err(anyhow::Error::new(e).context("cannot start a sandbox"));
            }
        };
        let egress_log = std::sync::Arc::new(ztee_egress::EgressLog::default());
        if let Some((proxy, allowlist)) = egress {
            let grant = ztee_egress::EgressGrant {
                sandbox: sandbox.id().to_string(),
                allowlist,
                audit: egress_log.clone(),
            };
            if let Err(err) = sandbox.enable_egress(proxy, grant).await {
                let _ = sandbox.destroy().await;
                return Err(anyhow::Error::new(err).context("cannot grant egress"));
            }
        }
        let mut outbound = Outbound::new(core.pipeline.dlp.as_ref(), secrets.scope()?.as_ref());
        let mut output_digest = core.pipeline.content_key.hasher();
        let result = tokio::select! {
            result = run_in(&sandbox, &admitted.work, &modes, &args, &secrets, forward_stdin, &mut outbound, &mut output_digest) => result,
            signal = vm::interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; the sandbox was destroyed")),
        };
        let egressed = sandbox.egress().is_some();
        let destroyed = sandbox.destroy().await;
        if egressed {
            print_egress_summary(&egress_log.records());
        }
        let event = core
            .ran(&ctx, &admitted, result.is_ok())
            .with_output(&output_digest.finalize())
            .with_redactions(&outbound.counts());
        core.record(event).await?;
        destroyed.context("cannot destroy the sandbox")?;
        result
    })
}

/// One line per connection on stderr, after the command's own output.
fn print_egress_summary(records: &[ztee_egress::EgressRecord]) {
    use ztee_egress::Decision;
    let denied = records
        .iter()
        .filter(|r| r.decision == Decision::Denied)
        .count();
    eprintln!(
        "ztee: egress: {} connection(s), {} allowed, {denied} denied",
        records.len(),
        records.len() - denied
    );
    for r in records {
        let target = if r.host.is_empty() {
            "(no request)".to_string()
        } else {
            format!("{} {}:{}", r.method, r.host, r.port)
        };
        let address = r.resolved.map(|ip| format!(" [{ip}]")).unwrap_or_default();
        match r.decision {
            Decision::Allowed => eprintln!(
                "ztee: egress: allowed {target}{address}: {} B up, {} B down",
                r.bytes_up, r.bytes_down
            ),
            Decision::Denied => eprintln!("ztee: egress: denied {target}{address}: {}", r.reason),
        }
    }
}

fn file_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644)
}

#[allow(clippy::too_many_arguments)] // one call site; the pieces are the run's own state
async fn run_in(
    sandbox: &Sandbox,
    work: &Work,
    modes: &[u32],
    args: &Args,
    secrets: &RunSecrets,
    forward_stdin: bool,
    outbound: &mut Outbound,
    output_digest: &mut ztee_audit::ContentHasher,
) -> anyhow::Result<u8> {
    for ((remote, data), mode) in work.files.iter().zip(modes) {
        sandbox
            .write_file(remote, data, *mode)
            .await
            .with_context(|| format!("cannot copy a file to {remote}"))?;
    }
    for (path, value) in &secrets.files {
        sandbox
            .write_file(path, value, 0o400)
            .await
            .with_context(|| format!("cannot write the secret file {path}"))?;
    }
    let mut spec = ExecSpec::new(work.argv.clone());
    spec.env = work
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    spec.env.extend(secrets.env.iter().cloned());
    spec.cwd = work.cwd.clone();
    spec.timeout = args.timeout;
    spec.stdin = forward_stdin;
    let execution = sandbox.exec(spec).await?;
    let status = stream_masked(execution, forward_stdin, outbound, output_digest).await?;
    exit_code(status, args.timeout)
}

/// Copies the command's output to ours as it arrives, through the outbound DLP stage (card
/// numbers masked, the run's secret values too; stdout and stderr are scanned as one stream),
/// and our stdin to it. What is printed is what the audit record's output digest covers.
pub async fn stream_masked(
    mut execution: impl CommandStream,
    forward_stdin: bool,
    outbound: &mut Outbound,
    output_digest: &mut ztee_audit::ContentHasher,
) -> anyhow::Result<ExitStatus> {
    let mut stdin_open = forward_stdin;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    let mut print = |released: ztee_server::pipeline::Released| -> anyhow::Result<()> {
        output_digest.update(released.stdout.as_bytes());
        output_digest.update(released.stderr.as_bytes());
        write_all(&mut std::io::stdout(), released.stdout.as_bytes())?;
        write_all(&mut std::io::stderr(), released.stderr.as_bytes())
    };
    loop {
        tokio::select! {
            event = execution.next_event() => match event? {
                Some(ExecEvent::Stdout(data)) => print(outbound.stdout(&data))?,
                Some(ExecEvent::Stderr(data)) => print(outbound.stderr(&data))?,
                Some(ExecEvent::Exit(status)) => {
                    print(outbound.finish())?;
                    return Ok(status);
                }
                None => bail!("the command's output ended without an exit status"),
            },
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    execution.close_stdin().await?;
                }
                Ok(n) => execution.write_stdin(&buf[..n]).await?,
            },
        }
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) -> anyhow::Result<()> {
    // A closed pipe on our side (e.g. `| head`) ends the copy quietly, as for any Unix tool.
    if out.write_all(data).and_then(|()| out.flush()).is_err() {
        return Ok(());
    }
    Ok(())
}

pub fn exit_code(status: ExitStatus, timeout: Option<Duration>) -> anyhow::Result<u8> {
    match status {
        ExitStatus::TimedOut => {
            let after = timeout
                .map(|t| format!(" after {}s", t.as_secs_f64()))
                .unwrap_or_default();
            eprintln!("error: the command timed out{after} and was killed");
        }
        ExitStatus::OutputLimit => {
            eprintln!("error: the command's output passed the limit and it was killed")
        }
        _ => {}
    }
    Ok(status.shell_code().clamp(0, 255) as u8)
}
