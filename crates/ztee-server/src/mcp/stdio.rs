//! MCP servers that speak stdio, run by the guard inside a microVM.
//!
//! A third-party tool server is code like any other: the guard does not start it on the host.
//! For each tenant and stdio upstream it creates a sandbox through the core
//! (`Action::CreateSandbox`, the image admitted like any other), starts the server's command in
//! it with stdin held open (`Action::StartProcess`), and then relays newline-delimited
//! JSON-RPC: each message goes in as `Action::SendInput` (scanned, decided and recorded like any
//! input), and the server's output comes back through the core's outbound DLP.
//!
//! Many MCP clients share one server process, so the guard gives every request an id of its
//! own and puts the client's id back on the answer, and it answers a client's `initialize` from
//! the server's first answer (a stdio server expects one initialization per process). A server
//! that ends (its sandbox expired, the process crashed) fails its waiting requests and is
//! started again by the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::action::{Action, ActionError, Delivery, Outcome, ProcessSelector};
use crate::auth::Caller;
use crate::state::AppState;

/// How long a request waits for the server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line (one JSON-RPC message) a server may write.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The tag the server's process is started with in its sandbox.
const PROCESS_TAG: &str = "mcp-stdio";

/// Running stdio servers, per tenant and upstream.
#[derive(Default)]
pub struct StdioServers {
    servers: tokio::sync::Mutex<HashMap<(String, String), Arc<Server>>>,
}

struct Server {
    /// Whose sandbox it is: the caller that started it (its tenant's, for everyone of the
    /// tenant who uses the upstream).
    owner: Caller,
    sandbox: String,
    /// Answers awaited, by the guard's own request id.
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    next_id: AtomicU64,
    /// The server's answer to the first `initialize`, given to every later client.
    initialized: tokio::sync::Mutex<Option<Value>>,
    alive: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StdioServers {
    /// Relays `messages` (already decided and masked by the guard) to the upstream's server,
    /// starting it first if needed; returns the answers to the requests among them, in order.
    pub async fn exchange(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
        upstream: &str,
        command: &[String],
        image: Option<&str>,
        messages: Vec<Value>,
    ) -> Result<Vec<Value>, ActionError> {
        let server = self.server(state, caller, upstream, command, image).await?;
        let mut answers = Vec::new();
        for message in messages {
            let method = message.get("method").and_then(Value::as_str);
            let id = message.get("id").cloned();
            match (method, id) {
                (Some("initialize"), Some(id)) => {
                    answers.push(server.initialize(state, caller, message, id).await?)
                }
                // Sent once, by the guard, after the first `initialize`.
                (Some("notifications/initialized"), None) => {}
                (Some(_), Some(id)) => {
                    answers.push(server.request(state, caller, message, id).await?)
                }
                // A notification, or an answer to a request of the server's.
                _ => server.send(state, caller, &message).await?,
            }
        }
        Ok(answers)
    }

    /// The tenant's running server for `upstream`, started when there is none.
    async fn server(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
        upstream: &str,
        command: &[String],
        image: Option<&str>,
    ) -> Result<Arc<Server>, ActionError> {
        let key = (caller.principal.tenant.clone(), upstream.to_owned());
        let mut servers = self.servers.lock().await;
        if let Some(server) = servers.get(&key) {
            if server.alive.load(Ordering::SeqCst) && state.sandboxes.get(&server.sandbox).is_some()
            {
                return Ok(server.clone());
            }
            // Its process ended or misbehaved: its sandbox goes before a new one starts, so a
            // broken server never holds two of the tenant's sandboxes.
            server.retire(state, caller).await;
        }
        let server = start(state, caller, upstream, command, image).await?;
        servers.insert(key, server.clone());
        Ok(server)
    }
}

/// Creates the server's sandbox and starts its command, with a task that routes its answers.
async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    upstream: &str,
    command: &[String],
    image: Option<&str>,
) -> Result<Arc<Server>, ActionError> {
    let create = crate::action::CreateSandbox {
        image: image.map(str::to_owned),
        timeout_s: Some(state.config.limits.max_timeout_s),
        memory_mib: None,
        vcpus: None,
        env: Default::default(),
        metadata: [("mcp_upstream".to_owned(), upstream.to_owned())].into(),
        egress: Vec::new(),
        secrets: Vec::new(),
    };
    let sandbox = match crate::action::execute(
        state,
        caller,
        Action::CreateSandbox(create),
        Delivery::Whole,
        None,
    )
    .await?
    {
        Outcome::Created(view) => view.id,
        _ => return Err(unavailable(upstream, "its sandbox was not created")),
    };
    let started = crate::action::execute(
        state,
        caller,
        Action::StartProcess {
            sandbox: sandbox.clone(),
            command: crate::action::RunCommand {
                cmd: crate::action::Cmd::Argv(command.to_vec()),
                stdin: None,
                env: Default::default(),
                cwd: None,
                timeout_s: Some(state.config.limits.max_timeout_s),
            },
            tag: Some(PROCESS_TAG.to_owned()),
            stdin: crate::pipeline::Stdin::Open,
        },
        Delivery::Stream,
        None,
    )
    .await?;
    let Outcome::Process(attachment) = started else {
        return Err(unavailable(upstream, "its process did not start"));
    };
    let server = Arc::new(Server {
        owner: caller.clone(),
        sandbox,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        initialized: tokio::sync::Mutex::new(None),
        alive: AtomicBool::new(true),
    });
    tokio::spawn(route_answers(
        Arc::downgrade(&server),
        attachment.events,
        upstream.to_owned(),
    ));
    tracing::info!(upstream, sandbox = %server.sandbox, "started a stdio MCP server in a microVM");
    Ok(server)
}

/// Reads the server's output line by line and hands each answer to the request that waits.
async fn route_answers(
    server: std::sync::Weak<Server>,
    mut events: tokio::sync::mpsc::Receiver<crate::pipeline::StreamEvent>,
    upstream: String,
) {
    use crate::pipeline::StreamEvent;
    let mut line = String::new();
    while let Some(event) = events.recv().await {
        let data = match event {
            StreamEvent::Stdout { data } => data,
            StreamEvent::Stderr { .. } => continue,
            StreamEvent::Exit { .. } | StreamEvent::Error { .. } => break,
        };
        let Some(server) = server.upgrade() else {
            return;
        };
        line.push_str(&data);
        if line.len() > MAX_LINE_BYTES && !line.contains('\n') {
            // A server that writes without end is cut off, not buffered without bound.
            tracing::warn!(
                upstream,
                "a stdio MCP server wrote a line longer than the limit; it is stopped"
            );
            break;
        }
        while let Some(end) = line.find('\n') {
            let text: String = line.drain(..=end).collect();
            let Ok(answer) = serde_json::from_str::<Value>(text.trim()) else {
                tracing::debug!(upstream, "a stdio MCP server wrote a line that is not JSON");
                continue;
            };
            let waiting = answer
                .get("id")
                .map(Value::to_string)
                .and_then(|id| lock(&server.pending).remove(&id));
            match waiting {
                Some(tx) => {
                    let _ = tx.send(answer);
                }
                None => {
                    tracing::debug!(upstream, "a stdio MCP server message no request waits for")
                }
            }
        }
    }
    if let Some(server) = server.upgrade() {
        server.alive.store(false, Ordering::SeqCst);
        // Dropping the senders fails every waiting request.
        lock(&server.pending).clear();
        tracing::warn!(upstream, sandbox = %server.sandbox, "a stdio MCP server ended");
    }
}

impl Server {
    /// Deletes the server's sandbox (if it still runs), as its owner.
    async fn retire(&self, state: &Arc<AppState>, caller: &Caller) {
        if state.sandboxes.get(&self.sandbox).is_none() {
            return;
        }
        let as_owner = caller.with_principal(self.owner.principal.clone());
        if let Err(e) = crate::action::execute(
            state,
            &as_owner,
            Action::DeleteSandbox {
                sandbox: self.sandbox.clone(),
            },
            Delivery::Whole,
            None,
        )
        .await
        {
            tracing::warn!(sandbox = %self.sandbox, error = %e.message, "deleting a stdio MCP server's sandbox");
        }
    }

    /// Writes one message to the server's stdin, through the core (`sandbox.input`), under the
    /// owner of its sandbox and the current request.
    async fn send(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
        message: &Value,
    ) -> Result<(), ActionError> {
        let as_owner = caller.with_principal(self.owner.principal.clone());
        crate::action::execute(
            state,
            &as_owner,
            Action::SendInput {
                sandbox: self.sandbox.clone(),
                process: ProcessSelector::Tag(PROCESS_TAG.to_owned()),
                data: format!("{message}\n"),
            },
            Delivery::Whole,
            None,
        )
        .await
        .map(|_| ())
    }

    /// Sends a request under an id of the guard's and returns the answer with the client's id.
    async fn request(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
        mut message: Value,
        client_id: Value,
    ) -> Result<Value, ActionError> {
        let own_id = format!("ztee-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(Value::from(own_id.clone()).to_string(), tx);
        message["id"] = Value::from(own_id.clone());
        if let Err(e) = self.send(state, caller, &message).await {
            lock(&self.pending).remove(&Value::from(own_id).to_string());
            return Err(e);
        }
        let mut answer = match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Ok(error_answer(
                    &client_id,
                    "the stdio MCP server ended before it answered",
                ))
            }
            Err(_) => {
                lock(&self.pending).remove(&Value::from(own_id).to_string());
                return Ok(error_answer(
                    &client_id,
                    "the stdio MCP server did not answer in time",
                ));
            }
        };
        answer["id"] = client_id;
        Ok(answer)
    }

    /// The server's answer to `initialize`: asked once per process, then given to every client.
    async fn initialize(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
        message: Value,
        client_id: Value,
    ) -> Result<Value, ActionError> {
        let mut initialized = self.initialized.lock().await;
        if initialized.is_none() {
            let answer = self.request(state, caller, message, Value::Null).await?;
            if answer.get("result").is_none() {
                let mut answer = answer;
                answer["id"] = client_id;
                return Ok(answer);
            }
            self.send(
                state,
                caller,
                &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await?;
            *initialized = Some(answer);
        }
        let mut answer = initialized.clone().unwrap_or(Value::Null);
        answer["id"] = client_id;
        Ok(answer)
    }
}

fn error_answer(id: &Value, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}})
}

fn unavailable(upstream: &str, why: &str) -> ActionError {
    ActionError::unavailable(format!(
        "the stdio MCP server {upstream:?} is not running: {why}"
    ))
}
