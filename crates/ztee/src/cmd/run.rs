//! `ztee run`: one command in a fresh microVM, destroyed afterwards.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ztee_vm::{CommandStream, ExecEvent, ExitStatus};

use ztee_audit::{EventType, Outcome};
use ztee_server::pipeline::Outbound;

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

/// The most of our stdin a run takes: it is scanned and decided whole before anything runs.
const STDIN_LIMIT: u64 = 16 * 1024 * 1024;

pub fn run(args: Args, globals: &GlobalArgs) -> anyhow::Result<u8> {
    // Read inputs before booting anything: a missing file is the caller's error, found in
    // microseconds, not after a VM boot.
    let mut files = Vec::new();
    for copy in &args.files {
        let data = std::fs::read(&copy.local)
            .with_context(|| format!("--file {}", copy.local.display()))?;
        files.push(ztee_server::FileUpload {
            path: copy.remote.clone(),
            content: bytes::Bytes::from(data),
            mode: Some(file_mode(&copy.local)),
        });
    }
    let timeout_s = args.timeout.map(whole_seconds).transpose()?;
    // Input is scanned and decided like the rest of the request, so it is read whole first.
    let stdin = if args.interactive || !std::io::stdin().is_terminal() {
        read_stdin()?
    } else {
        None
    };
    let secrets = if args.secrets.is_empty() {
        None
    } else {
        let store = args.secret_store.open(globals)?;
        Some(Arc::new(ztee_secrets::SecretBroker::new(Some(store), None)))
    };
    vm::block_on(async {
        let mut executor = vm::executor(globals, &args.image)?;
        if !args.egress.allow_egress.is_empty() {
            executor = executor
                .with_egress_config(args.egress.config())
                .context("cannot set up the egress proxy")?;
        }
        let connections = Arc::new(EgressSummary::default());
        let core = LocalCore::open(
            globals,
            Arc::new(executor),
            secrets,
            Some(connections.clone()),
        )?;
        let request = ztee_server::OneShotRun {
            cmd: Some(ztee_server::Cmd::Argv(args.command)),
            language: None,
            code: None,
            files,
            env: args.env.into_iter().collect(),
            stdin,
            cwd: args.cwd,
            // An operator's own run is bounded by the host's longest timeout, not the API's
            // default for a request.
            timeout_s: Some(timeout_s.unwrap_or(core.state.config.limits.max_timeout_s)),
            image: args.image.image,
            memory_mib: Some(args.shape.memory),
            vcpus: Some(u32::from(args.shape.vcpus)),
            disk_mib: args.shape.disk,
            max_processes: Some(args.shape.max_processes),
            egress: args
                .egress
                .allow_egress
                .iter()
                .map(ToString::to_string)
                .collect(),
            secrets: args.secrets,
        };
        // The same core as `POST /v1/run`: inbound DLP and policy, the image's admission, the
        // secrets, the VM, outbound DLP and one audit record, in that order.
        let run = async {
            let outcome = ztee_server::execute(
                &core.state,
                &core.caller,
                ztee_server::Action::Run(request),
                ztee_server::Delivery::Stream,
                None,
            )
            .await;
            match outcome {
                Ok(ztee_server::Outcome::Streaming(events)) => {
                    print_events(events, timeout_s).await
                }
                Ok(_) => Err(anyhow::anyhow!(
                    "a run answered with something other than its output"
                )),
                Err(e) => Ok(crate::local_core::Refusal::from(e).report()),
            }
        };
        let code = tokio::select! {
            code = run => code?,
            signal = vm::interrupted() => {
                // Dropping the run destroys its VM; wait for that before leaving.
                wait_for_teardown(&core.state).await;
                anyhow::bail!("interrupted by {signal}; the sandbox was destroyed")
            }
        };
        wait_for_teardown(&core.state).await;
        if !args.egress.allow_egress.is_empty() {
            connections.print();
        }
        Ok(code)
    })
}

/// `--timeout` in whole seconds, as the core takes it.
fn whole_seconds(timeout: Duration) -> anyhow::Result<u64> {
    if timeout.subsec_nanos() != 0 {
        bail!(
            "--timeout {}: give a whole number of seconds",
            timeout.as_secs_f64()
        );
    }
    Ok(timeout.as_secs())
}

/// Our stdin, whole, as text; nothing when it is empty.
pub fn read_stdin() -> anyhow::Result<Option<String>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::io::stdin()
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut data)
        .context("reading stdin")?;
    if data.len() as u64 > STDIN_LIMIT {
        bail!(
            "stdin is larger than {} MiB; copy large inputs in with --file",
            STDIN_LIMIT / (1024 * 1024)
        );
    }
    if data.is_empty() {
        return Ok(None);
    }
    String::from_utf8(data)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("stdin is not UTF-8 text; copy binary input in with --file"))
}

/// Prints a run's masked output as it arrives; the exit code to end with.
async fn print_events(
    mut events: tokio::sync::mpsc::Receiver<ztee_server::pipeline::StreamEvent>,
    timeout_s: Option<u64>,
) -> anyhow::Result<u8> {
    use ztee_server::pipeline::StreamEvent;
    while let Some(event) = events.recv().await {
        match event {
            StreamEvent::Stdout { data } => write_all(&mut std::io::stdout(), data.as_bytes())?,
            StreamEvent::Stderr { data } => write_all(&mut std::io::stderr(), data.as_bytes())?,
            StreamEvent::Exit {
                timed_out: true, ..
            } => {
                let after = timeout_s
                    .map(|t| format!(" after {t}s"))
                    .unwrap_or_default();
                eprintln!("error: the command timed out{after} and was killed");
                return Ok(124);
            }
            StreamEvent::Exit {
                exit_code: Some(code),
                ..
            } => {
                if code == 125 {
                    eprintln!("error: the command's output passed the limit and it was killed");
                }
                return Ok(code.clamp(0, 255) as u8);
            }
            StreamEvent::Exit { .. } => bail!("the command ended without an exit status"),
            StreamEvent::Error { error } => bail!("{}", error.message),
        }
    }
    bail!("the command's output ended without an exit status")
}

/// Waits (at most ten seconds) until the run's VM is destroyed and its quota released: the
/// core does that as the run ends or is dropped, on tasks of this runtime.
async fn wait_for_teardown(state: &ztee_server::AppState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.metrics.sandboxes_active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run's connections through the egress proxy, as the trail records them (masked), for the
/// summary that follows the command's output.
#[derive(Default)]
struct EgressSummary {
    closed: std::sync::Mutex<Vec<ztee_audit::AuditEvent>>,
}

#[async_trait::async_trait]
impl ztee_server::audit::AuditSink for EgressSummary {
    async fn append(&self, event: ztee_audit::AuditEvent) -> Result<(), String> {
        let closed = event.network.as_ref().is_some_and(|n| n.phase.is_closed());
        if event.event_type == EventType::Egress && closed {
            self.closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(event);
        }
        Ok(())
    }
}

impl EgressSummary {
    /// One line per connection on stderr, after the command's own output.
    fn print(&self) {
        let events = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let denied = events
            .iter()
            .filter(|e| e.outcome == Outcome::Denied)
            .count();
        eprintln!(
            "ztee: egress: {} connection(s), {} allowed, {denied} denied",
            events.len(),
            events.len() - denied
        );
        for event in events.iter() {
            let Some(n) = &event.network else { continue };
            let address = n.address.map(|ip| format!(" [{ip}]")).unwrap_or_default();
            let method = n
                .method
                .as_deref()
                .map(|m| format!("{m} "))
                .unwrap_or_default();
            let target = format!("{method}{}:{}{address}", n.host, n.port);
            if event.outcome == Outcome::Denied {
                let reason = event
                    .decision
                    .as_ref()
                    .and_then(|d| d.reasons.first())
                    .map(String::as_str)
                    .unwrap_or("refused");
                eprintln!("ztee: egress: denied {target}: {reason}");
            } else {
                eprintln!(
                    "ztee: egress: allowed {target}: {} B up, {} B down",
                    n.bytes_up, n.bytes_down
                );
            }
        }
    }
}

fn file_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644)
}

/// Gives the command `input` (already scanned and decided with the rest of the request), then
/// copies its output to ours as it arrives, through the outbound DLP stage (card numbers
/// masked; stdout and stderr are scanned as one stream). What is printed is what the audit
/// record's output digest covers.
pub async fn stream_masked(
    mut execution: impl CommandStream,
    input: Option<&str>,
    outbound: &mut Outbound,
    output_digest: &mut ztee_audit::ContentHasher,
) -> anyhow::Result<ExitStatus> {
    if let Some(input) = input {
        execution.write_stdin(input.as_bytes()).await?;
        execution.close_stdin().await?;
    }
    let mut print = |released: ztee_server::pipeline::Released| -> anyhow::Result<()> {
        output_digest.update(released.stdout.as_bytes());
        output_digest.update(released.stderr.as_bytes());
        write_all(&mut std::io::stdout(), released.stdout.as_bytes())?;
        write_all(&mut std::io::stderr(), released.stderr.as_bytes())
    };
    loop {
        match execution.next_event().await? {
            Some(ExecEvent::Stdout(data)) => print(outbound.stdout(&data))?,
            Some(ExecEvent::Stderr(data)) => print(outbound.stderr(&data))?,
            Some(ExecEvent::Exit(status)) => {
                print(outbound.finish())?;
                return Ok(status);
            }
            None => bail!("the command's output ended without an exit status"),
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
