//! `ztee run`: one command in a fresh microVM, destroyed afterwards.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use ztee_vm::{CommandStream, ExecEvent, ExecSpec, ExitStatus, Sandbox};

use crate::globals::GlobalArgs;
use crate::vm;

/// Run one command in a fresh microVM with its own kernel; the VM is destroyed afterwards.
///
/// Examples:
///   ztee run -- python3 -c 'print(6*7)'
///   ztee run --timeout 2 -- sleep 30
///   ztee run --file ./job.py:/home/user/job.py -- python3 /home/user/job.py
///   echo hello | ztee run -- tr a-z A-Z
///   ztee run --allow-egress pypi.org:443 -- python3 -c "import urllib.request as u; print(u.urlopen('https://pypi.org/simple/').status)"
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

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
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
    let mut spec = args.shape.spec();
    match vm::admit(globals, &args.image)? {
        vm::Admission::Default => {}
        vm::Admission::Admitted(image) => spec.image = Some(image),
        vm::Admission::Refused(why) => {
            eprintln!("error: {why}");
            return Ok(vm::EXIT_REFUSED);
        }
    }
    let egress = args.egress.proxy()?;
    vm::block_on(async {
        let engine = vm::engine(globals)?;
        let sandbox = engine
            .create(spec)
            .await
            .context("cannot start a sandbox")?;
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
        let result = tokio::select! {
            result = run_in(&sandbox, &args, uploads, forward_stdin) => result,
            signal = vm::interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; the sandbox was destroyed")),
        };
        let egressed = sandbox.egress().is_some();
        sandbox
            .destroy()
            .await
            .context("cannot destroy the sandbox")?;
        if egressed {
            print_egress_summary(&egress_log.records());
        }
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

async fn run_in(
    sandbox: &Sandbox,
    args: &Args,
    uploads: Vec<(String, Vec<u8>, u32)>,
    forward_stdin: bool,
) -> anyhow::Result<u8> {
    for (remote, data, mode) in uploads {
        sandbox
            .write_file(&remote, &data, mode)
            .await
            .with_context(|| format!("cannot copy a file to {remote}"))?;
    }
    let mut spec = ExecSpec::new(args.command.clone());
    spec.env = args.env.clone();
    spec.cwd = args.cwd.clone();
    spec.timeout = args.timeout;
    spec.stdin = forward_stdin;
    let execution = sandbox.exec(spec).await?;
    let status = stream(execution, forward_stdin).await?;
    exit_code(status, args.timeout)
}

/// Copies the command's output to ours as it arrives, and our stdin to it.
pub async fn stream(
    mut execution: impl CommandStream,
    forward_stdin: bool,
) -> anyhow::Result<ExitStatus> {
    let mut stdin_open = forward_stdin;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            event = execution.next_event() => match event? {
                Some(ExecEvent::Stdout(data)) => write_all(&mut std::io::stdout(), &data)?,
                Some(ExecEvent::Stderr(data)) => write_all(&mut std::io::stderr(), &data)?,
                Some(ExecEvent::Exit(status)) => return Ok(status),
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
