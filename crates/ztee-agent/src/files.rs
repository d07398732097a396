//! File transfer. The agent runs as root outside the sandbox root, so it never touches user
//! paths itself: it starts a copy of itself (`--file-helper`) that enters the sandbox exactly
//! as a command does (chroot, sandbox user, no new privileges) and copies bytes between a pipe
//! and the file. Symlinks, permissions and `..` then resolve as they would for user code.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::channel;
use std::sync::Arc;

use ztee_wire::message::FailureKind;
use ztee_wire::{GuestMessage, RequestId, MAX_DATA_CHUNK};

use crate::link::Link;
use crate::reaper::{self, ProcessEnd};
use crate::sandbox;
use crate::session::{Input, Pending, Requests};

pub const HELPER_FLAG: &str = "--file-helper";
/// The agent's own executable inside the initramfs.
const SELF_EXE: &str = "/proc/self/exe";

// Helper exit codes, mapped back to failure kinds.
const EXIT_IO: u8 = 1;
const EXIT_NOT_FOUND: u8 = 2;
const EXIT_PERMISSION: u8 = 3;
const EXIT_INVALID: u8 = 4;

pub fn start_write(id: RequestId, path: String, mode: u32, link: Arc<Link>, requests: Requests) {
    let (tx, rx) = channel();
    if !requests.insert(
        id,
        Pending {
            input: Some(tx),
            process_group: None,
        },
    ) {
        return send_failure(
            &link,
            id,
            FailureKind::InvalidRequest,
            "request id in use".into(),
        );
    }
    let mode = format!("{:o}", mode & 0o7777);
    let mut command = helper(&["write", &sandbox::in_sandbox(&path), &mode]);
    command.stdin(Stdio::piped());
    let (mut child, ended) = match reaper::spawn(&mut command) {
        Ok(spawned) => spawned,
        Err(err) => {
            requests.remove(id);
            return send_failure(&link, id, FailureKind::Io, format!("file helper: {err}"));
        }
    };
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        // Only an explicit end commits the upload; a dropped session kills the helper before
        // its stdin closes, so it never renames a partial file into place.
        let committed = match stdin {
            Some(mut stdin) => loop {
                match rx.recv() {
                    Ok(Input::Data(data)) => {
                        if stdin.write_all(&data).is_err() {
                            break false;
                        }
                    }
                    Ok(Input::Close) => break true,
                    // A file has no terminal size.
                    Ok(Input::Resize(_)) => {}
                    Err(_) => break false,
                }
            },
            None => false,
        };
        if !committed {
            // SAFETY: kill(2) on our own child's pid, which the reaper has not yet reaped
            // (its end is still unreceived); no memory involved.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        requests.remove(id);
        let message = read_bounded(stderr);
        match ended.recv() {
            Ok(ProcessEnd::Code(0)) => {
                link.send(&GuestMessage::Done { id });
            }
            Ok(end) => send_failure(&link, id, failure_kind(end), message),
            Err(_) => send_failure(&link, id, FailureKind::Io, "file helper vanished".into()),
        }
    });
}

pub fn start_read(id: RequestId, path: String, link: Arc<Link>, requests: Requests) {
    if !requests.insert(
        id,
        Pending {
            input: None,
            process_group: None,
        },
    ) {
        return send_failure(
            &link,
            id,
            FailureKind::InvalidRequest,
            "request id in use".into(),
        );
    }
    let mut command = helper(&["read", &sandbox::in_sandbox(&path)]);
    command.stdout(Stdio::piped());
    let (mut child, ended) = match reaper::spawn(&mut command) {
        Ok(spawned) => spawned,
        Err(err) => {
            requests.remove(id);
            return send_failure(&link, id, FailureKind::Io, format!("file helper: {err}"));
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        if let Some(mut stdout) = stdout {
            let mut buf = vec![0u8; MAX_DATA_CHUNK];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        link.send(&GuestMessage::FileChunk {
                            id,
                            data: buf[..n].to_vec(),
                        });
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        requests.remove(id);
        let message = read_bounded(stderr);
        match ended.recv() {
            Ok(ProcessEnd::Code(0)) => {
                link.send(&GuestMessage::FileEnd { id });
            }
            Ok(end) => send_failure(&link, id, failure_kind(end), message),
            Err(_) => send_failure(&link, id, FailureKind::Io, "file helper vanished".into()),
        }
    });
}

fn helper(args: &[&str]) -> Command {
    let mut command = Command::new(SELF_EXE);
    command
        .arg(HELPER_FLAG)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn send_failure(link: &Link, id: RequestId, kind: FailureKind, message: String) {
    link.send(&GuestMessage::Failed { id, kind, message });
}

fn failure_kind(end: ProcessEnd) -> FailureKind {
    match end {
        ProcessEnd::Code(code) if code == EXIT_NOT_FOUND as i32 => FailureKind::NotFound,
        ProcessEnd::Code(code) if code == EXIT_PERMISSION as i32 => FailureKind::PermissionDenied,
        ProcessEnd::Code(code) if code == EXIT_INVALID as i32 => FailureKind::InvalidRequest,
        _ => FailureKind::Io,
    }
}

fn read_bounded(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(1024).read_to_string(&mut text);
    }
    text.trim().to_string()
}

/// Entry point of `ztee-agent --file-helper (read PATH | write PATH MODE)`.
pub fn helper_main(args: &[String]) -> ExitCode {
    let result = match args {
        [op, path] if op == "read" => enter().and_then(|()| read_file(path)),
        [op, path, mode] if op == "write" => enter().and_then(|()| write_file(path, mode)),
        _ => Err((
            EXIT_INVALID,
            "usage: --file-helper read PATH | write PATH MODE".into(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

type HelperResult = Result<(), (u8, String)>;

fn enter() -> HelperResult {
    let root = CString::new(sandbox::ROOT).map_err(|e| (EXIT_IO, e.to_string()))?;
    sandbox::enter(&root, c"/").map_err(|e| (EXIT_IO, format!("cannot enter the sandbox: {e}")))
}

fn classify(path: &str, err: io::Error) -> (u8, String) {
    let code = match err.kind() {
        io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        io::ErrorKind::PermissionDenied => EXIT_PERMISSION,
        _ if err.raw_os_error() == Some(libc::EISDIR) => EXIT_INVALID,
        _ => EXIT_IO,
    };
    (code, format!("{path}: {err}"))
}

fn read_file(path: &str) -> HelperResult {
    let mut file = File::open(path).map_err(|e| classify(path, e))?;
    let meta = file.metadata().map_err(|e| classify(path, e))?;
    if !meta.is_file() {
        return Err((EXIT_INVALID, format!("{path}: not a regular file")));
    }
    io::copy(&mut file, &mut io::stdout().lock()).map_err(|e| classify(path, e))?;
    Ok(())
}

/// Writes to a temporary file next to `path` and renames it into place, so a failed or
/// interrupted upload never leaves a half-written file under the requested name.
fn write_file(path: &str, mode: &str) -> HelperResult {
    let mode = u32::from_str_radix(mode, 8).map_err(|_| (EXIT_INVALID, "bad mode".to_string()))?;
    let target = std::path::Path::new(path);
    let name = target
        .file_name()
        .ok_or_else(|| (EXIT_INVALID, format!("{path}: not a file path")))?;
    let dir = target.parent().unwrap_or(std::path::Path::new("/"));
    if target.is_dir() {
        return Err((EXIT_INVALID, format!("{path}: is a directory")));
    }
    let temp = dir.join(format!(
        ".{}.ztee-upload-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        io::copy(&mut io::stdin().lock(), &mut file)?;
        file.sync_all()?;
        fs::rename(&temp, target)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&temp);
        return Err(classify(path, err));
    }
    Ok(())
}
