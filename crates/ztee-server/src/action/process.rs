//! Commands that outlive the call that started them: a sandbox's running processes, which a
//! caller may reconnect to, list, write to and signal.
//!
//! A process is started like any command (`sandbox::exec`, with every stage) and its masked
//! events are relayed from the pipeline's stream to whoever is attached: the caller that
//! started it, and any caller that connects later. Attached callers see events from the moment
//! they attach; a caller that goes away detaches and the process runs on, bounded by its time
//! limit and by the sandbox's life. The record of the command is written when it ends, as for
//! every streamed command.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::exec::ProcessControl;
use crate::pipeline::{StreamEvent, Streaming};

/// How many events wait for an attached caller before the process's output waits for it.
const ATTACH_DEPTH: usize = 64;

/// Most processes one sandbox keeps track of at once.
pub const MAX_PROCESSES: usize = 256;

/// The running processes of one sandbox, by pid.
#[derive(Default)]
pub struct Processes {
    inner: Mutex<BTreeMap<u32, Arc<Process>>>,
}

/// What a caller is shown about a running process. The command line and working directory
/// are shown as they passed inbound DLP (masked under `redact`).
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// The command's own environment, as admitted (never the sandbox's secrets).
    pub env: BTreeMap<String, String>,
    /// It runs on a pseudo-terminal.
    pub terminal: bool,
}

/// Which process a caller means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

/// A caller attached to a process: its pid and the events from now on.
pub struct Attachment {
    pub pid: u32,
    /// It runs on a pseudo-terminal (its output is the terminal's).
    pub terminal: bool,
    pub events: mpsc::Receiver<StreamEvent>,
}

struct Process {
    info: ProcessInfo,
    control: Arc<dyn ProcessControl>,
    attached: Mutex<Vec<mpsc::Sender<StreamEvent>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Processes {
    /// Takes over a started command's events and relays them to attached callers until it
    /// ends. Returns the first attachment (the caller that started it), or the stream back
    /// when the engine cannot reach the command while it runs.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        info: ProcessInfo,
        streaming: Streaming,
    ) -> Result<Attachment, Streaming> {
        let Some(running) = streaming.process.clone() else {
            return Err(streaming);
        };
        let pid = running.pid;
        let terminal = info.terminal;
        let (tx, rx) = mpsc::channel(ATTACH_DEPTH);
        let process = Arc::new(Process {
            info: ProcessInfo { pid, ..info },
            control: running.control,
            attached: Mutex::new(vec![tx]),
        });
        lock(&self.inner).insert(pid, process.clone());
        let table = Arc::downgrade(self);
        let mut events = streaming.events;
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let last = matches!(event, StreamEvent::Exit { .. } | StreamEvent::Error { .. });
                if last {
                    // Nobody attaches to a process that has ended.
                    if let Some(table) = table.upgrade() {
                        lock(&table.inner).remove(&pid);
                    }
                }
                let receivers: Vec<_> = lock(&process.attached).clone();
                let mut detached = false;
                for tx in &receivers {
                    detached |= tx.send(event.clone()).await.is_err();
                }
                if detached {
                    lock(&process.attached).retain(|tx| !tx.is_closed());
                }
            }
            if let Some(table) = table.upgrade() {
                lock(&table.inner).remove(&pid);
            }
        });
        Ok(Attachment {
            pid,
            terminal,
            events: rx,
        })
    }

    /// Whether another process may start (see [`MAX_PROCESSES`]).
    pub fn has_room(&self) -> bool {
        lock(&self.inner).len() < MAX_PROCESSES
    }

    fn find(&self, selector: &ProcessSelector) -> Option<Arc<Process>> {
        let map = lock(&self.inner);
        match selector {
            ProcessSelector::Pid(pid) => map.get(pid).cloned(),
            ProcessSelector::Tag(tag) => map
                .values()
                .find(|p| p.info.tag.as_deref() == Some(tag.as_str()))
                .cloned(),
        }
    }

    /// Attaches a caller to a running process: its events from now on.
    pub fn attach(&self, selector: &ProcessSelector) -> Option<Attachment> {
        let process = self.find(selector)?;
        let (tx, rx) = mpsc::channel(ATTACH_DEPTH);
        lock(&process.attached).push(tx);
        Some(Attachment {
            pid: process.info.pid,
            terminal: process.info.terminal,
            events: rx,
        })
    }

    /// The control of a running process.
    pub fn control(&self, selector: &ProcessSelector) -> Option<(u32, Arc<dyn ProcessControl>)> {
        self.find(selector).map(|p| (p.info.pid, p.control.clone()))
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        lock(&self.inner).values().map(|p| p.info.clone()).collect()
    }
}

impl std::fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessSelector::Pid(pid) => write!(f, "pid {pid}"),
            // A tag is caller text: it is shown only as its length, never in an error or log.
            ProcessSelector::Tag(tag) => {
                write!(f, "the process with the given tag ({} bytes)", tag.len())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actions on running processes. Each needs what a command in the sandbox needs: the caller
// sees the sandbox, and where it holds secrets, is its owner.

use ztee_audit::{EventType, Outcome as AuditOutcome};

use super::sandbox::{enter, Entered};
use super::{ActionError, Outcome, Signal};
use crate::auth::Caller;
use crate::pipeline::{exec_error, Work};
use crate::state::AppState;

fn no_process(selector: &ProcessSelector) -> ActionError {
    ActionError::not_found(format!("no running process with {selector}"))
}

pub(super) async fn connect(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    selector: &ProcessSelector,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } =
        enter(state, caller, id, "process.connect", EventType::SandboxExec).await?;
    sandbox
        .processes
        .attach(selector)
        .map(Outcome::Process)
        .ok_or_else(|| no_process(selector))
}

pub(super) async fn list(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } =
        enter(state, caller, id, "process.list", EventType::SandboxExec).await?;
    Ok(Outcome::Processes(sandbox.processes.list()))
}

/// Input for a running process: scanned like a command's stdin (a card number in it is
/// masked or refused by policy, and nobody can approve a keystroke, so a hold is a refusal),
/// then recorded.
pub(super) async fn send_input(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    selector: &ProcessSelector,
    data: String,
) -> Result<Outcome, ActionError> {
    let Entered {
        sandbox, mut ctx, ..
    } = enter(state, caller, id, "sandbox.input", EventType::SandboxInput).await?;
    let (_, control) = sandbox
        .processes
        .control(selector)
        .ok_or_else(|| no_process(selector))?;
    let admitted = state
        .pipeline
        .admit(
            &mut ctx,
            Work {
                stdin: Some(data),
                ..Work::default()
            },
        )
        .await?;
    let text = admitted.work.stdin.clone().unwrap_or_default();
    let written = control.write_stdin(bytes::Bytes::from(text)).await;
    state
        .pipeline
        .record_admitted(&ctx, &admitted, written.is_ok())
        .await?;
    written.map_err(exec_error)?;
    Ok(Outcome::Done)
}

pub(super) async fn close_stdin(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    selector: &ProcessSelector,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } = enter(
        state,
        caller,
        id,
        "process.close_stdin",
        EventType::SandboxInput,
    )
    .await?;
    let (_, control) = sandbox
        .processes
        .control(selector)
        .ok_or_else(|| no_process(selector))?;
    control.close_stdin().await.map_err(exec_error)?;
    Ok(Outcome::Done)
}

/// A new size for a running process's pseudo-terminal.
pub(super) async fn resize(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    selector: &ProcessSelector,
    size: ztee_wire::PtySize,
) -> Result<Outcome, ActionError> {
    if size.cols == 0 || size.rows == 0 {
        return Err(ActionError::bad_request(
            "a terminal size needs at least one column and one row",
        ));
    }
    let Entered { sandbox, .. } =
        enter(state, caller, id, "process.resize", EventType::SandboxInput).await?;
    let (_, control) = sandbox
        .processes
        .control(selector)
        .ok_or_else(|| no_process(selector))?;
    control.resize(size).await.map_err(exec_error)?;
    Ok(Outcome::Done)
}

/// A signal to a running process's process group, recorded with the pid and the signal.
pub(super) async fn signal(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    selector: &ProcessSelector,
    signal: Signal,
) -> Result<Outcome, ActionError> {
    let Entered {
        record,
        sandbox,
        mut ctx,
    } = enter(
        state,
        caller,
        id,
        "sandbox.signal",
        EventType::SandboxSignal,
    )
    .await?;
    let (pid, control) = sandbox
        .processes
        .control(selector)
        .ok_or_else(|| no_process(selector))?;
    ctx.resource = Some(format!(
        "sandbox/{}/process/{pid}/signal/{}",
        record.id,
        signal.number()
    ));
    let sent = control.signal(signal.number()).await;
    let outcome = if sent.is_ok() {
        AuditOutcome::Success
    } else {
        AuditOutcome::Failure
    };
    state
        .pipeline
        .record(state.pipeline.event(&ctx, outcome))
        .await?;
    sent.map_err(exec_error)?;
    Ok(Outcome::Done)
}
