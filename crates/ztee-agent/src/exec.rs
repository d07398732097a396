//! Running one command as the sandbox user and streaming what it does.
//!
//! Each command gets its own session and process group, so a timeout, an output flood or the
//! end of the command kills everything it started. Threads: one per output stream, one for stdin,
//! one that waits for the end.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ztee_wire::message::{ExecRequest, FailureKind};
use ztee_wire::{ExitKind, GuestMessage, RequestId};

use crate::link::Link;
use crate::reaper::{self, ProcessEnd};
use crate::sandbox;
use crate::session::{Input, Pending, Requests};

const READ_CHUNK: usize = 64 * 1024;
/// How long to wait for output still in the pipes after the command's process group is gone.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

pub fn start(request: ExecRequest, link: Arc<Link>, requests: Requests) {
    let id = request.id;
    let fail = |kind, message: String| {
        link.send(&GuestMessage::Failed { id, kind, message });
    };
    let prepared = match Prepared::new(&request) {
        Ok(prepared) => prepared,
        Err(message) => return fail(FailureKind::InvalidRequest, message),
    };
    // A pseudo-terminal takes its input (and its size) whatever `stdin` says.
    let terminal = match request.pty.map(Terminal::open).transpose() {
        Ok(terminal) => terminal,
        Err(err) => {
            return fail(
                FailureKind::Io,
                format!("cannot open a pseudo-terminal: {err}"),
            )
        }
    };
    let (stdin_tx, stdin_rx) = channel();
    if !requests.insert(
        id,
        Pending {
            input: (request.stdin || terminal.is_some()).then_some(stdin_tx),
            process_group: None,
        },
    ) {
        return fail(
            FailureKind::InvalidRequest,
            format!("request id {id} is in use"),
        );
    }
    let mut command = match &terminal {
        Some(terminal) => match prepared.command_on(terminal) {
            Ok(command) => command,
            Err(err) => {
                requests.remove(id);
                return fail(
                    FailureKind::Io,
                    format!("cannot attach the terminal: {err}"),
                );
            }
        },
        None => prepared.command(request.stdin),
    };
    let spawned = reaper::spawn(&mut command);
    // The copies of the terminal's slave side the command was built with close here.
    drop(command);
    let (mut child, ended) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            requests.remove(id);
            let program = &request.argv[0];
            return match err.kind() {
                std::io::ErrorKind::NotFound => fail(
                    FailureKind::NotFound,
                    format!("command not found: {program}"),
                ),
                std::io::ErrorKind::PermissionDenied => fail(
                    FailureKind::PermissionDenied,
                    format!("permission denied: {program}"),
                ),
                _ => fail(FailureKind::Io, format!("cannot start {program}: {err}")),
            };
        }
    };
    let pgid = child.id() as i32;
    requests.set_process_group(id, pgid);
    link.send(&GuestMessage::Started {
        id,
        pid: child.id(),
    });

    let run = Arc::new(Run {
        id,
        pgid,
        link: link.clone(),
        output_total: AtomicU64::new(0),
        output_limit: request.max_output_bytes,
        over_limit: AtomicBool::new(false),
        closed: Mutex::new(false),
    });
    let (done_tx, done_rx) = channel::<()>();
    if let Some(stdout) = child.stdout.take() {
        spawn_reader(run.clone(), stdout, Stream::Stdout, done_tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        spawn_reader(run.clone(), stderr, Stream::Stderr, done_tx.clone());
    }
    if let Some(Terminal { master, slave }) = terminal {
        // Only the command holds the slave side now, so the master reads end of file (EIO)
        // once it and everything it started have closed it.
        drop(slave);
        // The terminal's master side: what the command writes is read from it as stdout, what
        // the host types is written to it.
        match master.try_clone() {
            Ok(reader) => spawn_reader(run.clone(), reader, Stream::Stdout, done_tx.clone()),
            Err(_) => kill_group(pgid),
        }
        drop(done_tx);
        let mut master = master;
        std::thread::spawn(move || {
            while let Ok(input) = stdin_rx.recv() {
                match input {
                    Input::Data(data) => {
                        if master.write_all(&data).is_err() {
                            break;
                        }
                    }
                    Input::Resize(size) => Terminal::resize(&master, size),
                    // A terminal has no end of input of its own; the command reads ^D.
                    Input::Close => {
                        if master.write_all(&[4]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(done_tx);
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::spawn(move || {
                while let Ok(input) = stdin_rx.recv() {
                    match input {
                        Input::Data(data) => {
                            if stdin.write_all(&data).is_err() {
                                break;
                            }
                        }
                        // Dropping the pipe is the command's end of input.
                        Input::Close => break,
                        // Only a terminal has a size.
                        Input::Resize(_) => {}
                    }
                }
            });
        }
    }
    let timeout = request
        .timeout_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    std::thread::spawn(move || {
        let (end, timed_out) = wait_for_end(&ended, timeout, pgid);
        // Whatever the command left running in its group goes with it.
        kill_group(pgid);
        for _ in 0..2 {
            if done_rx.recv_timeout(DRAIN_GRACE).is_err() {
                break;
            }
        }
        let status = if run.over_limit.load(Ordering::SeqCst) {
            ExitKind::OutputLimit
        } else if timed_out {
            ExitKind::TimedOut
        } else {
            match end {
                ProcessEnd::Code(code) => ExitKind::Code(code),
                ProcessEnd::Signal(signal) => ExitKind::Signal(signal),
            }
        };
        let mut closed = run.closed.lock().unwrap_or_else(|p| p.into_inner());
        *closed = true;
        run.link.send(&GuestMessage::Exited { id, status });
        drop(closed);
        requests.remove(id);
    });
}

fn wait_for_end(
    ended: &Receiver<ProcessEnd>,
    timeout: Option<Duration>,
    pgid: i32,
) -> (ProcessEnd, bool) {
    let lost = ProcessEnd::Signal(libc::SIGKILL);
    match timeout {
        None => (ended.recv().unwrap_or(lost), false),
        Some(limit) => match ended.recv_timeout(limit) {
            Ok(end) => (end, false),
            Err(RecvTimeoutError::Timeout) => {
                kill_group(pgid);
                (ended.recv().unwrap_or(lost), true)
            }
            Err(RecvTimeoutError::Disconnected) => (lost, false),
        },
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on a process group id we created with setsid; no memory involved.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Shared state of one running command.
struct Run {
    id: RequestId,
    pgid: i32,
    link: Arc<Link>,
    output_total: AtomicU64,
    output_limit: u64,
    over_limit: AtomicBool,
    /// Set once `Exited` is sent; no output may follow it.
    closed: Mutex<bool>,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn spawn_reader(
    run: Arc<Run>,
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let total = run.output_total.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > run.output_limit {
                run.over_limit.store(true, Ordering::SeqCst);
                kill_group(run.pgid);
                break;
            }
            let data = buf[..n].to_vec();
            let message = match stream {
                Stream::Stdout => GuestMessage::Stdout { id: run.id, data },
                Stream::Stderr => GuestMessage::Stderr { id: run.id, data },
            };
            let closed = run.closed.lock().unwrap_or_else(|p| p.into_inner());
            if *closed {
                break;
            }
            run.link.send(&message);
        }
        let _ = done.send(());
    });
}

/// A pseudo-terminal from the sandbox's own devpts instance: its master side stays with the
/// agent, its slave side becomes the command's stdin, stdout and stderr and its controlling
/// terminal (so `/dev/pts/N` inside the sandbox names it).
struct Terminal {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
}

impl Terminal {
    fn open(size: ztee_wire::PtySize) -> std::io::Result<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let ptmx = CString::new(format!("{}/dev/ptmx", sandbox::ROOT))
            .map_err(|_| std::io::Error::other("the sandbox root holds a NUL byte"))?;
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned at once.
        let master = unsafe {
            let fd = libc::open(
                ptmx.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let unlock: libc::c_int = 0;
        // SAFETY: ioctl(2) on a descriptor owned here, with a pointer to a live local; TIOCGPTPEER
        // opens the slave through the master (no path lookup) and returns a new descriptor,
        // owned at once.
        let slave = unsafe {
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let master = std::fs::File::from(master);
        Self::resize(&master, size);
        Ok(Self { master, slave })
    }

    fn resize(master: &std::fs::File, size: ztee_wire::PtySize) {
        let winsize = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: ioctl(2) on a descriptor the caller holds, with a pointer to a live local.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
    }
}

/// Everything the child needs, built before `fork` (nothing may be allocated after it).
struct Prepared {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    root: CString,
    cwd: CString,
}

impl Prepared {
    fn new(request: &ExecRequest) -> Result<Self, String> {
        if request.argv.is_empty() || request.argv[0].is_empty() {
            return Err("empty command".into());
        }
        if request.argv.iter().any(|a| a.contains('\0')) {
            return Err("command arguments must not contain NUL bytes".into());
        }
        let mut env = vec![
            ("PATH".to_string(), sandbox::PATH.to_string()),
            ("HOME".to_string(), sandbox::HOME.to_string()),
            ("USER".to_string(), sandbox::USER.to_string()),
            ("LOGNAME".to_string(), sandbox::USER.to_string()),
            ("SHELL".to_string(), "/bin/sh".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        for (name, value) in &request.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0')
            {
                return Err(format!(
                    "invalid environment variable name or value: {name:?}"
                ));
            }
            env.retain(|(existing, _)| existing != name);
            env.push((name.clone(), value.clone()));
        }
        let cwd = sandbox::in_sandbox(request.cwd.as_deref().unwrap_or(sandbox::HOME));
        let on_host = std::path::Path::new(sandbox::ROOT).join(cwd.trim_start_matches('/'));
        if !on_host.is_dir() {
            return Err(format!("working directory does not exist: {cwd}"));
        }
        Ok(Self {
            argv: request.argv.clone(),
            env,
            root: CString::new(sandbox::ROOT).map_err(|e| e.to_string())?,
            cwd: CString::new(cwd).map_err(|_| "working directory contains a NUL byte")?,
        })
    }

    /// The command on `terminal`'s slave side, which becomes its controlling terminal.
    fn command_on(self, terminal: &Terminal) -> std::io::Result<Command> {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(terminal.slave.try_clone()?))
            .stdout(Stdio::from(terminal.slave.try_clone()?))
            .stderr(Stdio::from(terminal.slave.try_clone()?));
        let Prepared { root, cwd, .. } = self;
        // SAFETY: the closure runs in the forked child before exec: `sandbox::enter` (see
        // `command`), then ioctl(2) on descriptor 0, the terminal's slave side, making it the
        // controlling terminal of the session `enter` started.
        unsafe {
            command.pre_exec(move || {
                sandbox::enter(&root, &cwd)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    fn command(self, with_stdin: bool) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Prepared { root, cwd, .. } = self;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // `sandbox::enter`, which makes async-signal-safe system calls on strings allocated here,
        // before the fork.
        unsafe {
            command.pre_exec(move || sandbox::enter(&root, &cwd));
        }
        command
    }
}
