//! envd, the agent inside an E2B sandbox, as the SDKs call it: the `process.Process` and
//! `filesystem.Filesystem` services over Connect, and the `/files` and `/health` routes.
//! Every call is an action of the core, made by the principal the access token names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::connect::{self, keepalive, unary, Code, ConnectError};
use super::{guest_path, E2bError, SandboxCaller};
use crate::action::{
    self, Action, ActionError, Cmd, Delivery, FileContent, Outcome, ProcessSelector, RunCommand,
    Signal,
};
use crate::auth::Caller;
use crate::pipeline::{Stdin, StreamEvent};
use crate::state::AppState;

pub(super) fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let json_limit = state.config.limits.max_json_body_bytes;
    let file_limit = state.config.limits.max_file_bytes;
    let rpc = Router::new()
        .route("/process.Process/{method}", post(process))
        .route(
            "/filesystem.Filesystem/{method}",
            post(super::filesystem::call),
        )
        .layer(axum::extract::DefaultBodyLimit::max(json_limit));
    let files = Router::new()
        .route("/files", get(read_file).post(write_files))
        .layer(axum::extract::DefaultBodyLimit::max(file_limit));
    rpc.merge(files).route("/health", get(health))
}

/// envd's health check: the SDKs ask it when a call fails, to tell a dead sandbox from a
/// failed call. It says only whether the named sandbox runs.
async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let sandbox = super::header_value(&headers, "e2b-sandbox-id").unwrap_or_default();
    if super::valid_sandbox_id(sandbox) && state.sandboxes.get(sandbox).is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        super::sandbox_gone(sandbox).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// process.Process

#[derive(Debug, Deserialize)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Pty {
    size: Option<PtySize>,
}

#[derive(Debug, Deserialize)]
struct PtySize {
    #[serde(default)]
    cols: u32,
    #[serde(default)]
    rows: u32,
}

/// Largest terminal side ztee accepts.
const MAX_TERMINAL_CELLS: u32 = 1000;

impl Pty {
    fn size(&self) -> Result<ztee_wire::PtySize, ConnectError> {
        let size = self
            .size
            .as_ref()
            .ok_or_else(|| ConnectError::invalid("pty.size (cols, rows) is required"))?;
        let side = |n: u32| (1..=MAX_TERMINAL_CELLS).contains(&n).then_some(n as u16);
        match (side(size.cols), side(size.rows)) {
            (Some(cols), Some(rows)) => Ok(ztee_wire::PtySize { cols, rows }),
            _ => Err(ConnectError::invalid(format!(
                "pty.size {}x{} is out of range; cols and rows are 1 to {MAX_TERMINAL_CELLS}",
                size.cols, size.rows
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
struct UpdateRequest {
    process: Option<Selector>,
    pty: Option<Pty>,
}

#[derive(Debug, Deserialize)]
struct ProcessConfig {
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

impl Selector {
    fn parse(selector: Option<Selector>) -> Result<ProcessSelector, ConnectError> {
        match selector {
            Some(Selector {
                pid: Some(pid),
                tag: None,
            }) => Ok(ProcessSelector::Pid(pid)),
            Some(Selector {
                pid: None,
                tag: Some(tag),
            }) => Ok(ProcessSelector::Tag(tag)),
            _ => Err(ConnectError::invalid(
                "process must name exactly one of pid or tag",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
struct SelectRequest {
    process: Option<Selector>,
}

#[derive(Debug, Deserialize)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<ProcessInput>,
}

#[derive(Debug, Deserialize)]
struct ProcessInput {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: serde_json::Value,
}

async fn process(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let SandboxCaller { caller, sandbox } = access;
    match method.as_str() {
        "Start" => match connect::stream_request(&headers, &body) {
            Ok(request) => start(&state, &caller, sandbox, request, &headers).await,
            Err(e) => connect::stream_error(e),
        },
        "Connect" => match connect::stream_request::<SelectRequest>(&headers, &body)
            .and_then(|r| Selector::parse(r.process))
        {
            Ok(selector) => {
                let action = Action::ConnectProcess {
                    sandbox,
                    process: selector,
                };
                match action::execute(&state, &caller, action, Delivery::Stream, None).await {
                    Ok(Outcome::Process(attached)) => relay(
                        attached.pid,
                        attached.terminal,
                        attached.events,
                        keepalive(&headers),
                    ),
                    Ok(_) => connect::stream_error(unexpected()),
                    Err(e) => connect::stream_error(e.into()),
                }
            }
            Err(e) => connect::stream_error(e),
        },
        "List" => {
            unary(&headers, &body, |_: serde_json::Value| async {
                let action = Action::ListProcesses { sandbox };
                match action::execute(&state, &caller, action, Delivery::Whole, None).await? {
                    Outcome::Processes(processes) => Ok(serde_json::json!({
                        "processes": processes.iter().map(|p| serde_json::json!({
                            "config": {
                                "cmd": p.argv.first(),
                                "args": p.argv.get(1..).unwrap_or_default(),
                                "envs": p.env,
                                "cwd": p.cwd,
                            },
                            "pid": p.pid,
                            "tag": p.tag,
                        })).collect::<Vec<_>>(),
                    })),
                    _ => Err(unexpected()),
                }
            })
            .await
        }
        "SendInput" => {
            unary(&headers, &body, |request: SendInputRequest| async {
                let process = Selector::parse(request.process)?;
                // Typed into a terminal or written to stdin: the same input to the process.
                let data = match request.input {
                    Some(ProcessInput {
                        stdin: Some(data),
                        pty: None,
                    })
                    | Some(ProcessInput {
                        stdin: None,
                        pty: Some(data),
                    }) => data,
                    _ => return Err(ConnectError::invalid("input must hold one of stdin or pty")),
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| ConnectError::invalid("the input is not base64"))?;
                // DLP reads text: input that is not UTF-8 cannot be scanned, so it is not passed.
                let data = String::from_utf8(bytes).map_err(|_| {
                    ConnectError::invalid("input must be UTF-8 text: ztee scans it for card data")
                })?;
                let action = Action::SendInput {
                    sandbox,
                    process,
                    data,
                };
                done(action::execute(&state, &caller, action, Delivery::Whole, None).await)
            })
            .await
        }
        "CloseStdin" => {
            unary(&headers, &body, |request: SelectRequest| async {
                let action = Action::CloseStdin {
                    sandbox,
                    process: Selector::parse(request.process)?,
                };
                done(action::execute(&state, &caller, action, Delivery::Whole, None).await)
            })
            .await
        }
        "SendSignal" => {
            unary(&headers, &body, |request: SendSignalRequest| async move {
                let signal = match &request.signal {
                    serde_json::Value::String(s) if s == "SIGNAL_SIGKILL" => Signal::Kill,
                    serde_json::Value::String(s) if s == "SIGNAL_SIGTERM" => Signal::Terminate,
                    serde_json::Value::Number(n) if n.as_u64() == Some(9) => Signal::Kill,
                    serde_json::Value::Number(n) if n.as_u64() == Some(15) => Signal::Terminate,
                    _ => {
                        return Err(ConnectError::invalid(
                            "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
                        ))
                    }
                };
                let action = Action::SignalProcess {
                    sandbox,
                    process: Selector::parse(request.process)?,
                    signal,
                };
                done(action::execute(&state, &caller, action, Delivery::Whole, None).await)
            })
            .await
        }
        "Update" => {
            unary(&headers, &body, |request: UpdateRequest| async move {
                let size = request
                    .pty
                    .as_ref()
                    .ok_or_else(|| ConnectError::invalid("pty (the new size) is required"))?
                    .size()?;
                let action = Action::ResizeTerminal {
                    sandbox,
                    process: Selector::parse(request.process)?,
                    size,
                };
                done(action::execute(&state, &caller, action, Delivery::Whole, None).await)
            })
            .await
        }
        "StreamInput" => ConnectError::new(
            Code::Unimplemented,
            format!("process.Process/{method} is not supported by this gateway"),
        )
        .into_response(),
        _ => ConnectError::new(Code::Unimplemented, "no such method of process.Process")
            .into_response(),
    }
}

fn unexpected() -> ConnectError {
    ConnectError::from(ActionError::internal(
        "the action answered with something else",
    ))
}

fn done(result: Result<Outcome, ActionError>) -> Result<serde_json::Value, ConnectError> {
    result?;
    Ok(serde_json::json!({}))
}

async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    sandbox: String,
    request: StartRequest,
    headers: &HeaderMap,
) -> Response {
    let stdin = match &request.pty {
        Some(pty) => match pty.size() {
            Ok(size) => Stdin::Terminal(size),
            Err(e) => return connect::stream_error(e),
        },
        None if request.stdin == Some(true) => Stdin::Open,
        None => Stdin::Closed,
    };
    let terminal = matches!(stdin, Stdin::Terminal(_));
    let Some(config) = request.process else {
        return connect::stream_error(ConnectError::invalid("process (cmd, args) is required"));
    };
    let mut argv = vec![config.cmd];
    argv.extend(config.args);
    let command = RunCommand {
        cmd: Cmd::Argv(argv),
        stdin: None,
        env: config.envs,
        cwd: config.cwd.as_deref().map(guest_path),
        // A process lives as long as its sandbox may: the E2B call's own timeout bounds only
        // how long the caller listens.
        timeout_s: Some(state.config.limits.max_timeout_s),
    };
    let action = Action::StartProcess {
        sandbox,
        command,
        tag: request.tag,
        stdin,
    };
    match action::execute(state, caller, action, Delivery::Stream, None).await {
        Ok(Outcome::Process(attached)) => relay(
            attached.pid,
            attached.terminal,
            attached.events,
            keepalive(headers),
        ),
        // An engine that keeps no handle on its commands: the output still streams.
        Ok(Outcome::Streaming(events)) => relay(0, terminal, events, keepalive(headers)),
        Ok(_) => connect::stream_error(unexpected()),
        Err(e) => connect::stream_error(e.into()),
    }
}

/// A process's events as envd's `ProcessEvent` stream: `start`, then `data` (`pty` for a
/// terminal's output, else `stdout` and `stderr`), then `end`, with keep-alives while it is
/// quiet. A caller that goes away detaches; the process runs on.
fn relay(
    pid: u32,
    terminal: bool,
    events: mpsc::Receiver<StreamEvent>,
    keepalive: Duration,
) -> Response {
    let event = |e: serde_json::Value| connect::message_frame(&serde_json::json!({"event": e}));
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    connect::keepalive_stream(
        event(serde_json::json!({"start": {"pid": pid}})),
        events,
        keepalive,
        event(serde_json::json!({"keepalive": {}})),
        move |next| match next {
            Some(StreamEvent::Stdout { data }) => {
                let stream = if terminal { "pty" } else { "stdout" };
                let data = serde_json::json!({"data": {stream: b64(&data)}});
                (vec![event(data)], false)
            }
            Some(StreamEvent::Stderr { data }) => {
                let data = serde_json::json!({"data": {"stderr": b64(&data)}});
                (vec![event(data)], false)
            }
            Some(StreamEvent::Exit {
                exit_code,
                timed_out,
                ..
            }) => {
                let (code, status) = match (exit_code, timed_out) {
                    (_, true) => (-1, "killed: time limit reached".to_owned()),
                    (Some(code), false) => (code, format!("exit status {code}")),
                    (None, false) => (-1, "killed".to_owned()),
                };
                let mut end = serde_json::json!({
                    "exitCode": code,
                    "exited": exit_code.is_some() && !timed_out,
                    "status": status,
                });
                if timed_out {
                    end["error"] = "the process reached its time limit".into();
                }
                // An exit: the stream ends cleanly after it.
                let frames = vec![
                    event(serde_json::json!({"end": end})),
                    connect::end_frame(None),
                ];
                (frames, true)
            }
            Some(StreamEvent::Error { error }) => {
                let error = ConnectError::new(
                    Code::Internal,
                    format!(
                        "{} ({}; request {})",
                        error.message, error.code, error.request_id
                    ),
                );
                (vec![connect::end_frame(Some(&error))], true)
            }
            None => {
                let error = ConnectError::new(
                    Code::Unavailable,
                    "the process's stream ended without its exit (the sandbox is gone)",
                );
                (vec![connect::end_frame(Some(&error))], true)
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// /files

#[derive(Debug, Deserialize)]
struct FileQuery {
    path: Option<String>,
    /// envd's user to act as; ztee runs everything as the sandbox user and accepts only it.
    username: Option<String>,
}

fn check_user(query: &FileQuery) -> Result<(), E2bError> {
    match query.username.as_deref() {
        None | Some("user") => Ok(()),
        Some(_) => Err(ActionError::bad_request(
            "ztee runs everything in a sandbox as its user `user`; username may only be `user`",
        )
        .into()),
    }
}

async fn read_file(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Query(query): Query<FileQuery>,
) -> Result<Response, E2bError> {
    check_user(&query)?;
    let path = query
        .path
        .as_deref()
        .map(guest_path)
        .ok_or_else(|| ActionError::bad_request("path is required"))?;
    let action = Action::ReadFile {
        sandbox: access.sandbox,
        path,
    };
    match action::execute(&state, &access.caller, action, Delivery::Whole, None).await? {
        Outcome::File(FileContent::Whole { content, .. }) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            content,
        )
            .into_response()),
        Outcome::File(FileContent::Stream(rx)) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let item = rx.recv().await?;
                Some((item, rx))
            });
            Ok((
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Body::from_stream(stream),
            )
                .into_response())
        }
        _ => Err(ActionError::internal("a file read answered with something else").into()),
    }
}

/// `POST /files`: one file as `application/octet-stream` (`path` names it), or several as
/// `multipart/form-data` parts named `file` whose file names are their paths.
async fn write_files(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, E2bError> {
    check_user(&query)?;
    let caller = &access.caller;
    caller.require(crate::principal::Permission::SandboxRun)?;
    // Held while the body is read, and until the writes are done.
    let _permit = action::transfer::permit(&state, caller)?;
    let limit = state.config.limits.max_file_bytes;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut files = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut form = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
            .await
            .map_err(|e| ActionError::bad_request(format!("the multipart body: {e}")))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ActionError::bad_request(format!("the multipart body: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let name = field.file_name().map(str::to_owned);
            let content = field.bytes().await.map_err(|e| {
                ActionError::bad_request(format!("a file of the multipart body: {e}"))
            })?;
            let path = match (&query.path, name) {
                (Some(path), _) => path.clone(),
                (None, Some(name)) => name,
                (None, None) => {
                    return Err(ActionError::bad_request(
                        "a multipart file part has no file name and no path was given",
                    )
                    .into())
                }
            };
            files.push((guest_path(&path), content));
        }
    } else {
        let path = query
            .path
            .as_deref()
            .ok_or_else(|| ActionError::bad_request("path is required"))?;
        let body = crate::api::sandboxes::read_body(request.into_body(), limit).await?;
        files.push((guest_path(path), body));
    }
    if files.is_empty() {
        return Err(ActionError::bad_request("no file in the request").into());
    }
    if query.path.is_some() && files.len() > 1 {
        return Err(ActionError::bad_request(
            "path names one file, but the request holds several; name each by its part",
        )
        .into());
    }
    let mut written = Vec::new();
    for (path, content) in files {
        let action = Action::WriteFile {
            sandbox: access.sandbox.clone(),
            path,
            content,
        };
        match action::execute(&state, caller, action, Delivery::Whole, None).await? {
            Outcome::Written { path, .. } => {
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                written.push(serde_json::json!({"name": name, "type": "file", "path": path}));
            }
            _ => {
                return Err(
                    ActionError::internal("a file write answered with something else").into(),
                )
            }
        }
    }
    Ok(axum::Json(written).into_response())
}
