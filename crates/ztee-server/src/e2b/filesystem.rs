//! envd's `filesystem.Filesystem` service: each call one filesystem action of the core
//! (`action::fs`), its answer in envd's message shapes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::connect::{self, Code, ConnectError};
use super::connect::{keepalive, unary};
use super::{guest_path, SandboxCaller};
use crate::action::fs::{
    Entry, EntryKind, FsOp, FsResult, WatchEvent, WatchEventKind, WatchStream,
};
use crate::action::{self, Action, Delivery, Outcome};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct PathRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    depth: Option<u32>,
    #[serde(default)]
    recursive: bool,
}

#[derive(Debug, Deserialize)]
struct MoveRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatcherRequest {
    #[serde(default)]
    watcher_id: String,
}

/// envd's `EntryInfo` (proto3 JSON: camelCase names, 64-bit integers as strings).
fn entry_info(entry: &Entry) -> serde_json::Value {
    let kind = match entry.kind {
        EntryKind::File => "FILE_TYPE_FILE",
        EntryKind::Dir => "FILE_TYPE_DIRECTORY",
        EntryKind::Symlink => "FILE_TYPE_SYMLINK",
        EntryKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    serde_json::json!({
        "name": entry.name,
        "type": kind,
        "path": entry.path,
        "size": entry.size.to_string(),
        "mode": entry.mode,
        "permissions": entry.permissions,
        "owner": entry.owner,
        "group": entry.group,
        "modifiedTime": entry.modified_time,
        "symlinkTarget": entry.symlink_target,
        "isSymlink": entry.kind == EntryKind::Symlink,
    })
}

/// envd's `FilesystemEvent`.
fn filesystem_event(event: &WatchEvent) -> serde_json::Value {
    let kind = match event.kind {
        WatchEventKind::Create => "EVENT_TYPE_CREATE",
        WatchEventKind::Write => "EVENT_TYPE_WRITE",
        WatchEventKind::Remove => "EVENT_TYPE_REMOVE",
        WatchEventKind::Rename => "EVENT_TYPE_RENAME",
        WatchEventKind::Chmod => "EVENT_TYPE_CHMOD",
    };
    serde_json::json!({"name": event.name, "type": kind})
}

/// A streaming watch as envd's `WatchDirResponse` stream: `start`, then a `filesystem` message
/// per change, with keep-alives while nothing changes. A caller that goes away ends the watch.
fn watch_stream(changes: WatchStream, keepalive: Duration) -> Response {
    let message = |m: serde_json::Value| connect::message_frame(&m);
    connect::keepalive_stream(
        message(serde_json::json!({"start": {}})),
        changes,
        keepalive,
        message(serde_json::json!({"keepalive": {}})),
        move |next| match next {
            Some(Ok(events)) => {
                let frames = events
                    .iter()
                    .map(|e| message(serde_json::json!({"filesystem": filesystem_event(e)})))
                    .collect();
                (frames, false)
            }
            Some(Err(e)) => (vec![connect::end_frame(Some(&e.into()))], true),
            None => {
                let error =
                    ConnectError::new(Code::Unavailable, "the watch ended (the sandbox is gone)");
                (vec![connect::end_frame(Some(&error))], true)
            }
        },
    )
}

fn non_empty(field: &str, value: String) -> Result<String, ConnectError> {
    if value.is_empty() {
        return Err(ConnectError::invalid(format!("{field} is required")));
    }
    Ok(guest_path(&value))
}

pub(super) async fn call(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let SandboxCaller { caller, sandbox } = access;
    let run = |op: FsOp| {
        let (state, caller, sandbox) = (state.clone(), caller.clone(), sandbox.clone());
        async move {
            let action = Action::Filesystem { sandbox, op };
            match action::execute(&state, &caller, action, Delivery::Whole, None).await? {
                Outcome::Filesystem(result) => Ok(result),
                _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
            }
        }
    };
    match method.as_str() {
        "Stat" => {
            unary(&headers, &body, |r: PathRequest| async move {
                let path = non_empty("path", r.path)?;
                match run(FsOp::Stat { path }).await? {
                    FsResult::Entry(entry) => Ok(serde_json::json!({"entry": entry_info(&entry)})),
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "ListDir" => {
            unary(&headers, &body, |r: PathRequest| async move {
                let path = non_empty("path", r.path)?;
                let depth = r.depth.filter(|d| *d > 0).unwrap_or(1);
                match run(FsOp::List { path, depth }).await? {
                    FsResult::Entries(entries) => Ok(serde_json::json!({
                        "entries": entries.iter().map(entry_info).collect::<Vec<_>>()
                    })),
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "MakeDir" => {
            unary(&headers, &body, |r: PathRequest| async move {
                let path = non_empty("path", r.path)?;
                match run(FsOp::MakeDir { path: path.clone() }).await? {
                    // envd answers an existing directory with already_exists; the SDK turns
                    // that into `False`.
                    FsResult::MadeDir { created: false } => Err(ConnectError::new(
                        Code::AlreadyExists,
                        "the directory already exists",
                    )),
                    FsResult::MadeDir { created: true } => match run(FsOp::Stat { path }).await? {
                        FsResult::Entry(entry) => {
                            Ok(serde_json::json!({"entry": entry_info(&entry)}))
                        }
                        _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                    },
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "Move" => {
            unary(&headers, &body, |r: MoveRequest| async move {
                let op = FsOp::Move {
                    source: non_empty("source", r.source)?,
                    destination: non_empty("destination", r.destination)?,
                };
                match run(op).await? {
                    FsResult::Entry(entry) => Ok(serde_json::json!({"entry": entry_info(&entry)})),
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "Remove" => {
            unary(&headers, &body, |r: PathRequest| async move {
                let path = non_empty("path", r.path)?;
                run(FsOp::Remove { path }).await?;
                Ok(serde_json::json!({}))
            })
            .await
        }
        "CreateWatcher" => {
            unary(&headers, &body, |r: PathRequest| async move {
                let path = non_empty("path", r.path)?;
                match run(FsOp::WatchStart {
                    path,
                    recursive: r.recursive,
                })
                .await?
                {
                    FsResult::Watcher(id) => Ok(serde_json::json!({"watcherId": id})),
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "GetWatcherEvents" => {
            unary(&headers, &body, |r: WatcherRequest| async move {
                match run(FsOp::WatchPoll {
                    watcher: r.watcher_id,
                })
                .await?
                {
                    FsResult::Events(events) => Ok(serde_json::json!({
                        "events": events.iter().map(filesystem_event).collect::<Vec<_>>()
                    })),
                    _ => Err(ConnectError::new(Code::Internal, "unexpected answer")),
                }
            })
            .await
        }
        "RemoveWatcher" => {
            unary(&headers, &body, |r: WatcherRequest| async move {
                run(FsOp::WatchStop {
                    watcher: r.watcher_id,
                })
                .await?;
                Ok(serde_json::json!({}))
            })
            .await
        }
        "WatchDir" => {
            let request: PathRequest = match connect::stream_request(&headers, &body) {
                Ok(request) => request,
                Err(e) => return connect::stream_error(e),
            };
            let path = match non_empty("path", request.path) {
                Ok(path) => path,
                Err(e) => return connect::stream_error(e),
            };
            let op = FsOp::Watch {
                path,
                recursive: request.recursive,
            };
            let action = Action::Filesystem { sandbox, op };
            match action::execute(&state, &caller, action, Delivery::Stream, None).await {
                Ok(Outcome::Watch(changes)) => watch_stream(changes, keepalive(&headers)),
                Ok(_) => {
                    connect::stream_error(ConnectError::new(Code::Internal, "unexpected answer"))
                }
                Err(e) => connect::stream_error(e.into()),
            }
        }
        _ => ConnectError::new(
            Code::Unimplemented,
            "no such method of filesystem.Filesystem",
        )
        .into_response(),
    }
}
