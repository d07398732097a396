//! The action core: what every door hands over once it has parsed its protocol, and the one
//! path that runs it.
//!
//! A door (the REST API in `api/`, the approval gate resuming a held action, the MCP tools, the
//! E2B-compatible API) authenticates its caller, turns its request into an [`Action`] and calls
//! [`execute`]. Everything after that is the same for every door, in this order:
//!
//! ```text
//! execute(caller, action)
//!   -> permission          (the action's permission, checked here once)
//!   -> shape checks        checks.rs (ceilings, env names, guest paths, image references)
//!   -> inbound DLP         Pipeline::admit_or_hold (every string, fail closed)
//!   -> policy              one input builder (policy_input + the DLP summary)
//!   -> approval hold       the typed action itself is parked (approvals::park) and resumed
//!                          through execute with `Approved`
//!   -> image admission     image_admission::admit, before any secret is leased
//!   -> secrets lease       secrets::checkout
//!   -> provisioning        provision.rs (quota, VM, egress, secret files; one rollback)
//!   -> execution           Pipeline::collect / stream, transfer.rs for files
//!   -> outbound DLP        pipeline::Outbound, transfer.rs
//!   -> audit               Pipeline::record, one record per decision
//! ```
//!
//! Nothing here knows about HTTP: refusals are [`ActionError`]s with an [`ErrorKind`] that each
//! door maps to its protocol, and results are [`Outcome`]s each door renders.

pub mod checks;
pub mod code;
pub mod error;
pub mod fs;
mod helper;
pub mod llm;
mod mcp;
pub mod process;
mod provision;
pub mod request;
mod run;
pub(crate) mod sandbox;
pub(crate) mod transfer;

use std::sync::Arc;

use bytes::Bytes;

pub use error::{ActionError, ErrorKind};
pub(crate) use mcp::safe_name as mcp_safe_name;
pub use process::ProcessSelector;
pub use request::{Cmd, CreateSandbox, FileUpload, OneShotRun, RunCommand, SandboxView};
pub use sandbox::policy_input;
pub use transfer::FileContent;

use crate::approvals::inputs::Bound;
use crate::auth::Caller;
use crate::dlp::RedactionCounts;
use crate::exec::CommandResult;
use crate::principal::Permission;
use crate::state::AppState;

/// One thing a principal asks ztee to do. Not `Debug`: it holds caller content (code, files)
/// that must never reach a log unmasked.
#[derive(Clone)]
pub enum Action {
    /// One command in a fresh VM that is destroyed afterwards.
    Run(OneShotRun),
    /// A long-lived sandbox.
    CreateSandbox(CreateSandbox),
    /// A command in an existing sandbox.
    Exec {
        sandbox: String,
        command: RunCommand,
    },
    DeleteSandbox {
        sandbox: String,
    },
    /// The sandboxes the caller may see.
    ListSandboxes,
    ShowSandbox {
        sandbox: String,
    },
    /// A file written into a sandbox, scanned and decided like any other input.
    WriteFile {
        sandbox: String,
        path: String,
        content: Bytes,
    },
    /// A file of a sandbox, masked on its way out.
    ReadFile {
        sandbox: String,
        path: String,
    },
    /// A command that stays reachable while it runs: the caller is attached to its events,
    /// others may attach later (`ConnectProcess`), write to it and signal it.
    StartProcess {
        sandbox: String,
        command: RunCommand,
        /// A caller's name for the process, to find it by later.
        tag: Option<String>,
        /// What it reads: stdin kept open for `SendInput`, or a pseudo-terminal.
        stdin: crate::pipeline::Stdin,
    },
    /// Attaches to a running process's events from now on.
    ConnectProcess {
        sandbox: String,
        process: ProcessSelector,
    },
    ListProcesses {
        sandbox: String,
    },
    /// Text for a running process's stdin, scanned and decided like any input.
    SendInput {
        sandbox: String,
        process: ProcessSelector,
        data: String,
    },
    CloseStdin {
        sandbox: String,
        process: ProcessSelector,
    },
    /// A new size for a running process's pseudo-terminal.
    ResizeTerminal {
        sandbox: String,
        process: ProcessSelector,
        size: ztee_wire::PtySize,
    },
    SignalProcess {
        sandbox: String,
        process: ProcessSelector,
        signal: Signal,
    },
    /// Sets a sandbox's remaining life to `timeout_s` from now.
    SetTimeout {
        sandbox: String,
        timeout_s: u64,
    },
    /// Code run in a code context that keeps its state between runs.
    RunCode {
        sandbox: String,
        run: code::RunCode,
    },
    CreateContext {
        sandbox: String,
        language: code::Language,
        cwd: Option<String>,
    },
    ListContexts {
        sandbox: String,
    },
    RemoveContext {
        sandbox: String,
        context: String,
    },
    RestartContext {
        sandbox: String,
        context: String,
    },
    /// Stat, list, make a directory, move, remove or watch, inside the sandbox.
    Filesystem {
        sandbox: String,
        op: fs::FsOp,
    },
    /// A request for a model's answer, through the LLM proxy.
    LlmExchange(llm::LlmExchange),
    /// A call to a tool of a third-party MCP server, through the MCP guard.
    McpToolCall(McpToolCall),
    /// A tool server's new or changed tool definitions: held for a person; once approved (or
    /// trusted on first use, where configured) the upstream is pinned to exactly that set.
    PinMcpTools(McpToolSet),
}

/// A set of tool definitions one MCP upstream offered, by digest.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct McpToolSet {
    pub upstream: String,
    /// `sha256:<hex>` over the definitions (see `mcp/definitions.rs`).
    pub digest: String,
    /// The tools' names, sorted.
    pub tools: Vec<String>,
    /// The digest the upstream was pinned to before, if any.
    pub previous: Option<String>,
    /// Pin without a person when the upstream has no pin yet (`pin = "first_use"`).
    pub trust_first_use: bool,
}

/// A tool call on its way to a third-party MCP server: decided and recorded by the core; the
/// guard relays it only when the core allows it.
#[derive(Clone)]
pub struct McpToolCall {
    /// The configured upstream's name (`[[mcp.upstreams]]`).
    pub upstream: String,
    pub tool: String,
    pub arguments: serde_json::Value,
}

/// The signals a caller may send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Terminate => libc_signal::SIGTERM,
            Signal::Kill => libc_signal::SIGKILL,
        }
    }
}

/// Linux signal numbers (the guest is Linux whatever the host is).
mod libc_signal {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

impl Action {
    /// The action's name in policy inputs, approvals and audit.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Run(_) => "run",
            Action::CreateSandbox(_) => "sandbox.create",
            Action::Exec { .. } => "sandbox.exec",
            Action::DeleteSandbox { .. } => "sandbox.delete",
            Action::ListSandboxes => "sandbox.list",
            Action::ShowSandbox { .. } => "sandbox.show",
            Action::WriteFile { .. } => "file.write",
            Action::ReadFile { .. } => "file.read",
            Action::StartProcess { .. } => "sandbox.exec",
            Action::ConnectProcess { .. } => "process.connect",
            Action::ListProcesses { .. } => "process.list",
            Action::SendInput { .. } => "sandbox.input",
            Action::CloseStdin { .. } => "process.close_stdin",
            Action::ResizeTerminal { .. } => "process.resize",
            Action::SignalProcess { .. } => "sandbox.signal",
            Action::SetTimeout { .. } => "sandbox.timeout",
            Action::RunCode { .. } => "sandbox.exec",
            Action::CreateContext { .. } => "context.create",
            Action::ListContexts { .. } => "context.list",
            Action::RemoveContext { .. } => "context.remove",
            Action::RestartContext { .. } => "context.restart",
            Action::Filesystem { op, .. } => op.name(),
            Action::LlmExchange(_) => "llm.chat",
            Action::McpToolCall(_) => "tool.call",
            Action::PinMcpTools(_) => "tool.pin",
        }
    }

    /// What the caller must hold to ask for it at all (policy decides after that).
    fn permission(&self) -> Permission {
        match self {
            Action::LlmExchange(_) => Permission::LlmChat,
            _ => Permission::SandboxRun,
        }
    }
}

/// How a command's output reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One result once the command has ended.
    Whole,
    /// Events as the command produces them. A stream cannot wait for a human: a command that
    /// policy holds is refused (403) rather than parked.
    Stream,
}

/// An approved action being resumed by the approval gate.
#[derive(Clone, Copy)]
pub struct Approved<'a> {
    /// The approval that allowed it.
    pub id: &'a str,
    /// For a command: the files it was bound to when it was held.
    pub bound: &'a [Bound],
    /// The subjects that approved it, in the order they decided.
    pub approved_by: &'a [String],
}

impl Approved<'_> {
    /// How the records of the resumed action name the approval.
    pub fn grant(self) -> ztee_audit::ApprovalGrant {
        ztee_audit::ApprovalGrant {
            id: self.id.to_owned(),
            approved_by: self.approved_by.to_vec(),
        }
    }
}

/// An action parked for a human decision: the typed action itself, and for a command the files
/// its argv names, bound by digest when it was held.
#[derive(Clone)]
pub struct HeldAction {
    pub action: Action,
    pub bound: Vec<Bound>,
}

/// What an action produced, for the door to render.
pub enum Outcome {
    /// A command ended; its output is masked.
    Ran(CommandResult),
    /// A command's events (`{"stream", "data"}` chunks, then `{"exit_code", ...}` or
    /// `{"error"}`), masked as they pass.
    Streaming(tokio::sync::mpsc::Receiver<crate::pipeline::StreamEvent>),
    /// Parked for approval.
    Held(crate::approvals::Ticket),
    Created(SandboxView),
    Deleted,
    Sandboxes(Vec<SandboxView>),
    Sandbox(SandboxView),
    Written {
        path: String,
        size: usize,
        redactions: RedactionCounts,
    },
    File(FileContent),
    /// Attached to a running process.
    Process(process::Attachment),
    Processes(Vec<process::ProcessInfo>),
    /// A code run's events, masked as they pass.
    CodeRun(tokio::sync::mpsc::Receiver<code::CodeEvent>),
    Context(code::ContextInfo),
    Contexts(Vec<code::ContextInfo>),
    Filesystem(fs::FsResult),
    /// A streaming watch's changes, masked, as they are seen.
    Watch(fs::WatchStream),
    /// A model's answer, masked.
    Llm(llm::LlmAnswer),
    /// An upstream's tool definitions are pinned to this set.
    ToolsPinned(McpToolSet),
    /// Done; nothing to show.
    Done,
}

/// Runs `action` for `caller` through every stage, in order (see the module comment). `approved`
/// is set only by the approval gate, for an action an approver allowed.
pub async fn execute(
    state: &Arc<AppState>,
    caller: &Caller,
    action: Action,
    delivery: Delivery,
    approved: Option<Approved<'_>>,
) -> Result<Outcome, ActionError> {
    caller.require(action.permission())?;
    match action {
        Action::Run(request) => run::run(state, caller, request, delivery, approved).await,
        Action::CreateSandbox(request) => sandbox::create(state, caller, request, approved).await,
        Action::Exec { sandbox, command } => {
            let mode = match delivery {
                Delivery::Whole => sandbox::ExecMode::Whole,
                Delivery::Stream => sandbox::ExecMode::Stream,
            };
            sandbox::exec(state, caller, &sandbox, command, mode, approved).await
        }
        Action::StartProcess {
            sandbox,
            command,
            tag,
            stdin,
        } => {
            let mode = sandbox::ExecMode::Process { tag, stdin };
            sandbox::exec(state, caller, &sandbox, command, mode, approved).await
        }
        Action::ConnectProcess { sandbox, process } => {
            process::connect(state, caller, &sandbox, &process).await
        }
        Action::ListProcesses { sandbox } => process::list(state, caller, &sandbox).await,
        Action::SendInput {
            sandbox,
            process,
            data,
        } => process::send_input(state, caller, &sandbox, &process, data).await,
        Action::CloseStdin { sandbox, process } => {
            process::close_stdin(state, caller, &sandbox, &process).await
        }
        Action::ResizeTerminal {
            sandbox,
            process,
            size,
        } => process::resize(state, caller, &sandbox, &process, size).await,
        Action::SignalProcess {
            sandbox,
            process,
            signal,
        } => process::signal(state, caller, &sandbox, &process, signal).await,
        Action::SetTimeout { sandbox, timeout_s } => {
            sandbox::set_timeout(state, caller, &sandbox, timeout_s).await
        }
        Action::RunCode { sandbox, run } => code::run(state, caller, &sandbox, run).await,
        Action::CreateContext {
            sandbox,
            language,
            cwd,
        } => code::create_context(state, caller, &sandbox, language, cwd).await,
        Action::ListContexts { sandbox } => code::list_contexts(state, caller, &sandbox).await,
        Action::RemoveContext { sandbox, context } => {
            code::remove_context(state, caller, &sandbox, &context).await
        }
        Action::RestartContext { sandbox, context } => {
            code::restart_context(state, caller, &sandbox, &context).await
        }
        Action::Filesystem { sandbox, op } => fs::run(state, caller, &sandbox, op).await,
        Action::DeleteSandbox { sandbox } => sandbox::delete(state, caller, &sandbox).await,
        Action::ListSandboxes => sandbox::list(state, caller).await,
        Action::ShowSandbox { sandbox } => sandbox::show(state, caller, &sandbox).await,
        Action::WriteFile {
            sandbox,
            path,
            content,
        } => sandbox::write_file(state, caller, &sandbox, path, content).await,
        Action::ReadFile { sandbox, path } => {
            sandbox::read_file(state, caller, &sandbox, path).await
        }
        Action::LlmExchange(request) => llm::exchange(state, caller, request).await,
        Action::McpToolCall(call) => mcp::tool_call(state, caller, call).await,
        Action::PinMcpTools(set) => mcp::pin_tools(state, caller, set, approved).await,
    }
}

/// The principal as every policy input names it: subject, tenant, roles, and the tenant's tier
/// (`[llm] default_tier` and `tenant_tiers`), the same for every action and door.
pub fn policy_principal(state: &AppState, caller: &Caller) -> ztee_policy::PolicyPrincipal {
    ztee_policy::PolicyPrincipal {
        subject: caller.principal.subject.clone(),
        tenant: caller.principal.tenant.clone(),
        roles: caller.principal.roles.clone(),
        tier: state
            .llm
            .config
            .tier_of(&caller.principal.tenant)
            .to_owned(),
    }
}
