//! PID 1 reaps every process in the VM, including orphans of user code.
//!
//! The standard library reaps a child itself when its `exec` fails (to report the error), so
//! the reaper must not steal that status. It therefore only *peeks* at exited children
//! (`waitid(WNOWAIT)`), then takes the spawn lock, which `spawn` holds across `fork`/`exec` and
//! the registration of the new pid; by the time the reaper holds it, a failed child was reaped
//! by the standard library and a started one is registered.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    Code(i32),
    Signal(i32),
}

#[derive(Default)]
struct Reaper {
    spawn_lock: Mutex<()>,
    waiters: Mutex<HashMap<i32, Sender<ProcessEnd>>>,
    /// Counts spawns, so the reaper can sleep while there are no children without missing one.
    spawn_count: Mutex<u64>,
    children_appeared: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(Reaper::default)
}

pub fn start() {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| reap_forever(reaper()))
        .map(|_| ())
        .unwrap_or_else(|err| eprintln!("ztee-agent: cannot start the reaper: {err}"));
}

/// Starts `command` and returns the child with a receiver for its end.
pub fn spawn(command: &mut Command) -> std::io::Result<(Child, Receiver<ProcessEnd>)> {
    let reaper = reaper();
    let _guard = lock(&reaper.spawn_lock);
    let child = command.spawn()?;
    let (tx, rx) = channel();
    lock(&reaper.waiters).insert(child.id() as i32, tx);
    *lock(&reaper.spawn_count) += 1;
    reaper.children_appeared.notify_one();
    Ok((child, rx))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop PID 1 from reaping.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reap_forever(reaper: &Reaper) {
    loop {
        let spawns_seen = *lock(&reaper.spawn_count);
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                let _guard = lock(&reaper.spawn_lock);
                let end = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => ProcessEnd::Code(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => ProcessEnd::Signal(signal as i32),
                    // Reaped by the standard library after a failed exec, or not an exit.
                    _ => continue,
                };
                if let Some(tx) = lock(&reaper.waiters).remove(&pid_raw(pid)) {
                    let _ = tx.send(end);
                }
            }
            Err(Errno::ECHILD) => {
                let mut count = lock(&reaper.spawn_count);
                while *count == spawns_seen {
                    count = reaper
                        .children_appeared
                        .wait(count)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
            Err(_) => continue,
        }
    }
}

fn pid_raw(pid: Pid) -> i32 {
    pid.as_raw()
}
