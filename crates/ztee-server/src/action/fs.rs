//! Filesystem operations in a sandbox beyond reading and writing a file: stat, list, make a
//! directory, move, remove, and watch a directory for changes. Each is an action like any
//! other (permission, the owner rule for sandboxes with secrets, inbound DLP and policy over the
//! paths, audit); the work is done inside the sandbox, as its user, by the filesystem helper
//! (`guest/fs.py`, one per sandbox, started on first use).
//!
//! A watch comes in two forms: a watcher the caller polls (`WatchStart`, `WatchPoll`,
//! `WatchStop`, each an action), and a streaming watch (`Watch`) that is decided and recorded
//! once, then delivers the changes the gateway polls for until the caller goes away.
//!
//! What the helper answers is untrusted: every string in it is masked, then it is parsed into
//! typed values.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use ztee_audit::EventType;

use super::checks::check_guest_path;
use super::helper::{Helper, Program};
use super::sandbox::{enter, Entered};
use super::{ActionError, Outcome};
use crate::auth::Caller;
use crate::pipeline::Work;
use crate::state::{AppState, LiveSandbox};

/// The helper's program text.
const PROGRAM: &str = include_str!("guest/fs.py");

/// Largest answer the helper may give in one line (a listing of many entries).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Deepest listing a caller may ask for.
pub const MAX_DEPTH: u32 = 16;

/// How often a streaming watch asks the helper for changes.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// What a streaming watch delivers: changes as they are seen, or the error that ended it.
pub type WatchStream = mpsc::Receiver<Result<Vec<WatchEvent>, ActionError>>;

/// One operation.
#[derive(Debug, Clone)]
pub enum FsOp {
    Stat {
        path: String,
    },
    List {
        path: String,
        depth: u32,
    },
    MakeDir {
        path: String,
    },
    Move {
        source: String,
        destination: String,
    },
    Remove {
        path: String,
    },
    WatchStart {
        path: String,
        recursive: bool,
    },
    WatchPoll {
        watcher: String,
    },
    WatchStop {
        watcher: String,
    },
    /// A streaming watch: the changes under `path` until the caller stops listening.
    Watch {
        path: String,
        recursive: bool,
    },
}

impl FsOp {
    /// The action's name in policy inputs: reads and changes are told apart.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Stat { .. } => "file.stat",
            FsOp::List { .. } => "file.list",
            FsOp::WatchStart { .. }
            | FsOp::WatchPoll { .. }
            | FsOp::WatchStop { .. }
            | FsOp::Watch { .. } => "file.watch",
            FsOp::MakeDir { .. } => "file.mkdir",
            FsOp::Move { .. } => "file.move",
            FsOp::Remove { .. } => "file.remove",
        }
    }

    fn event_type(&self) -> EventType {
        match self {
            FsOp::MakeDir { .. } | FsOp::Move { .. } | FsOp::Remove { .. } => EventType::FileWrite,
            _ => EventType::FileRead,
        }
    }

    fn paths(&self) -> Vec<&str> {
        match self {
            FsOp::Stat { path }
            | FsOp::List { path, .. }
            | FsOp::MakeDir { path }
            | FsOp::Remove { path }
            | FsOp::WatchStart { path, .. }
            | FsOp::Watch { path, .. } => vec![path],
            FsOp::Move {
                source,
                destination,
            } => vec![source, destination],
            FsOp::WatchPoll { .. } | FsOp::WatchStop { .. } => Vec::new(),
        }
    }

    fn request(&self) -> serde_json::Value {
        match self {
            FsOp::Stat { path } => serde_json::json!({"op": "stat", "path": path}),
            FsOp::List { path, depth } => {
                serde_json::json!({"op": "list", "path": path, "depth": depth})
            }
            FsOp::MakeDir { path } => serde_json::json!({"op": "mkdir", "path": path}),
            FsOp::Move {
                source,
                destination,
            } => serde_json::json!({"op": "move", "source": source, "destination": destination}),
            FsOp::Remove { path } => serde_json::json!({"op": "remove", "path": path}),
            FsOp::WatchStart { path, recursive } | FsOp::Watch { path, recursive } => {
                serde_json::json!({"op": "watch_start", "path": path, "recursive": recursive})
            }
            FsOp::WatchPoll { watcher } => {
                serde_json::json!({"op": "watch_poll", "watcher": watcher})
            }
            FsOp::WatchStop { watcher } => {
                serde_json::json!({"op": "watch_stop", "watcher": watcher})
            }
        }
    }
}

/// A file, directory or link, as the helper saw it (strings masked).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub path: String,
    pub size: i64,
    pub mode: u32,
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified_time: Option<String>,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A change a watcher saw.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WatchEvent {
    /// The path relative to the watched directory (masked).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchEventKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// What an operation produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsResult {
    Entry(Entry),
    Entries(Vec<Entry>),
    MadeDir { created: bool },
    Removed,
    Watcher(String),
    Events(Vec<WatchEvent>),
    Unwatched,
}

/// Why the helper refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    InvalidArgument,
    NotADirectory,
    IsADirectory,
    Io,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum Answer {
    #[serde(rename = "ok")]
    Ok(serde_json::Value),
    #[serde(rename = "error")]
    Error { kind: FsErrorKind, message: String },
}

/// The sandbox's filesystem helper, started on first use and again if it ends.
#[derive(Default)]
pub struct FsHelper {
    helper: tokio::sync::Mutex<Option<Helper>>,
}

impl FsHelper {
    async fn call(
        &self,
        sandbox: &LiveSandbox,
        lifetime: Duration,
        request: serde_json::Value,
    ) -> Result<Answer, ActionError> {
        let mut slot = self.helper.lock().await;
        if slot.as_ref().is_none_or(Helper::exited) {
            let mut helper = Helper::start(
                sandbox.handle.as_ref(),
                Program::Python(PROGRAM),
                &[],
                Default::default(),
                None,
                lifetime,
                MAX_ANSWER,
            )
            .await?;
            match helper.next_line().await? {
                Some(ready) if ready.get("ready") == Some(&serde_json::Value::Bool(true)) => {}
                _ => return Err(ActionError::unavailable(
                    "the sandbox's filesystem helper did not start (does its image have python3?)",
                )),
            }
            *slot = Some(helper);
        }
        let helper = slot
            .as_mut()
            .ok_or_else(|| ActionError::internal("the filesystem helper vanished"))?;
        helper.send(&request).await?;
        let line = helper.next_line().await?.ok_or_else(|| {
            ActionError::unavailable("the sandbox's filesystem helper ended; try again")
        })?;
        serde_json::from_value(line)
            .map_err(|e| ActionError::internal(format!("the filesystem helper answered {e}")))
    }
}

fn refused(kind: FsErrorKind, message: String) -> ActionError {
    use crate::error::ErrorKind;
    let (error_kind, code) = match kind {
        FsErrorKind::NotFound => (ErrorKind::NotFound, "not_found"),
        FsErrorKind::AlreadyExists => (ErrorKind::Conflict, "already_exists"),
        FsErrorKind::PermissionDenied => (ErrorKind::Forbidden, "permission_denied"),
        FsErrorKind::InvalidArgument => (ErrorKind::BadRequest, "invalid_argument"),
        FsErrorKind::NotADirectory => (ErrorKind::BadRequest, "not_a_directory"),
        FsErrorKind::IsADirectory => (ErrorKind::BadRequest, "is_a_directory"),
        FsErrorKind::Io => (ErrorKind::BadGateway, "io"),
    };
    ActionError::new(error_kind, code, message)
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ActionError> {
    serde_json::from_value(value)
        .map_err(|e| ActionError::internal(format!("the filesystem helper answered {e}")))
}

pub(super) async fn run(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    op: FsOp,
) -> Result<Outcome, ActionError> {
    for path in op.paths() {
        check_guest_path("path", path)?;
    }
    if let FsOp::List { depth, .. } = op {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(ActionError::bad_request(format!(
                "depth = {depth} is out of range; allowed: 1 to {MAX_DEPTH}"
            )));
        }
    }
    let Entered {
        record,
        sandbox,
        mut ctx,
    } = enter(state, caller, id, op.name(), op.event_type()).await?;
    ctx.resource = Some(format!(
        "sandbox/{}{}",
        record.id,
        op.paths().first().copied().unwrap_or("")
    ));
    let admitted = state
        .pipeline
        .admit(
            &mut ctx,
            Work {
                argv: op.paths().into_iter().map(str::to_owned).collect(),
                ..Work::default()
            },
        )
        .await?;
    let answer = sandbox
        .fs
        .call(
            &sandbox,
            Duration::from_secs(state.config.limits.max_timeout_s),
            op.request(),
        )
        .await;
    let done = matches!(answer, Ok(Answer::Ok(_)));
    state
        .pipeline
        .record_admitted(&ctx, &admitted, done)
        .await?;
    let value = masked(state.pipeline.dlp.as_ref(), &sandbox, answer)?;
    let result = match op {
        FsOp::Stat { .. } | FsOp::Move { .. } => FsResult::Entry(parse(value)?),
        FsOp::List { .. } => {
            #[derive(Deserialize)]
            struct Listing {
                entries: Vec<Entry>,
            }
            let listing: Listing = parse(value)?;
            FsResult::Entries(listing.entries)
        }
        FsOp::MakeDir { .. } => {
            #[derive(Deserialize)]
            struct Made {
                created: bool,
            }
            let made: Made = parse(value)?;
            FsResult::MadeDir {
                created: made.created,
            }
        }
        FsOp::Remove { .. } => FsResult::Removed,
        FsOp::WatchStart { .. } => FsResult::Watcher(parse_watcher(value)?),
        FsOp::Watch { .. } => {
            let watcher = parse_watcher(value)?;
            let limit = Duration::from_secs(state.config.limits.max_timeout_s);
            return Ok(Outcome::Watch(stream_watch(state, sandbox, watcher, limit)));
        }
        FsOp::WatchPoll { .. } => FsResult::Events(parse_events(value)?),
        FsOp::WatchStop { .. } => FsResult::Unwatched,
    };
    Ok(Outcome::Filesystem(result))
}

/// A helper's answer with every string in it masked (names, paths, owners, link targets, event
/// names, its error message) before anything parses it: nothing the helper says leaves
/// unscanned, whatever its shape.
fn masked(
    dlp: &dyn crate::dlp::DlpEngine,
    sandbox: &LiveSandbox,
    answer: Result<Answer, ActionError>,
) -> Result<serde_json::Value, ActionError> {
    let scope = sandbox.secrets.as_ref().and_then(|s| s.scope());
    match answer? {
        Answer::Ok(value) => Ok(crate::dlp::mask_json_strings(value, &mut |s| {
            dlp.redact_in(scope.as_ref(), s).text
        })),
        Answer::Error { kind, message } => {
            Err(refused(kind, dlp.redact_in(scope.as_ref(), &message).text))
        }
    }
}

fn parse_watcher(value: serde_json::Value) -> Result<String, ActionError> {
    #[derive(Deserialize)]
    struct Started {
        watcher: serde_json::Value,
    }
    let started: Started = parse(value)?;
    Ok(match started.watcher {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

fn parse_events(value: serde_json::Value) -> Result<Vec<WatchEvent>, ActionError> {
    #[derive(Deserialize)]
    struct Polled {
        events: Vec<WatchEvent>,
    }
    let polled: Polled = parse(value)?;
    Ok(polled.events)
}

/// Delivers a started watcher's changes, masked like every answer of the helper, until the
/// caller drops the stream (the watcher is then stopped) or the helper fails (the error is the
/// stream's last item). The watch was decided and recorded when it started: its deliveries are
/// not actions of their own.
fn stream_watch(
    state: &Arc<AppState>,
    sandbox: Arc<LiveSandbox>,
    watcher: String,
    limit: Duration,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(16);
    let dlp = state.pipeline.dlp.clone();
    tokio::spawn(async move {
        let poll = FsOp::WatchPoll {
            watcher: watcher.clone(),
        }
        .request();
        let mut ticks = tokio::time::interval(WATCH_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = ticks.tick() => {}
            }
            let answer = sandbox.fs.call(&sandbox, limit, poll.clone()).await;
            let events = masked(dlp.as_ref(), &sandbox, answer).and_then(parse_events);
            match events {
                Ok(events) if events.is_empty() => {}
                Ok(events) => {
                    if tx.send(Ok(events)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        let stop = FsOp::WatchStop { watcher }.request();
        let _ = sandbox.fs.call(&sandbox, limit, stop).await;
    });
    rx
}
