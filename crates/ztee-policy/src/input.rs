//! What a policy decides on. The gateway fills a [`PolicyInput`] per request; the bundle sees it
//! as `input` (field names below are the Rego names).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Who is asking. Authentication and role checks happen in the gateway before policy runs; policy
/// sees the roles so it can route by them (e.g. approvers, break-glass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPrincipal {
    pub subject: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The tenant's tier, e.g. `standard` or `pci`; the bundle routes LLM providers by it.
    pub tier: String,
}

/// The action being decided. The default bundle denies any action it has no allow rule for, so
/// a new variant needs one (`policies/ztee/main.rego`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "sandbox.create")]
    SandboxCreate,
    #[serde(rename = "sandbox.exec")]
    SandboxExec,
    #[serde(rename = "sandbox.delete")]
    SandboxDelete,
    /// A file copied into a sandbox (upload).
    #[serde(rename = "file.write")]
    FileWrite,
    /// A file copied out of a sandbox (download).
    #[serde(rename = "file.read")]
    FileRead,
    #[serde(rename = "run")]
    Run,
    #[serde(rename = "llm.chat")]
    LlmChat,
    #[serde(rename = "tool.call")]
    ToolCall,
    #[serde(rename = "image.admit")]
    ImageAdmit,
    #[serde(rename = "egress")]
    Egress,
    #[serde(rename = "secret.use")]
    SecretUse,
    /// Text written to a running process's stdin.
    #[serde(rename = "sandbox.input")]
    SandboxInput,
    /// Looking at files inside a sandbox: an entry, a listing, changes as they happen.
    #[serde(rename = "file.stat")]
    FileStat,
    #[serde(rename = "file.list")]
    FileList,
    #[serde(rename = "file.watch")]
    FileWatch,
    /// Rearranging files inside a sandbox.
    #[serde(rename = "file.mkdir")]
    FileMkdir,
    #[serde(rename = "file.move")]
    FileMove,
    #[serde(rename = "file.remove")]
    FileRemove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SandboxCreate => "sandbox.create",
            Action::SandboxExec => "sandbox.exec",
            Action::SandboxDelete => "sandbox.delete",
            Action::FileWrite => "file.write",
            Action::FileRead => "file.read",
            Action::Run => "run",
            Action::LlmChat => "llm.chat",
            Action::ToolCall => "tool.call",
            Action::ImageAdmit => "image.admit",
            Action::Egress => "egress",
            Action::SecretUse => "secret.use",
            Action::SandboxInput => "sandbox.input",
            Action::FileStat => "file.stat",
            Action::FileList => "file.list",
            Action::FileWatch => "file.watch",
            Action::FileMkdir => "file.mkdir",
            Action::FileMove => "file.move",
            Action::FileRemove => "file.remove",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host and port the code or tool wants to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressTarget {
    pub host: String,
    pub port: u16,
}

/// A tool invocation (MCP or an LLM function call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

/// One chat message (OpenAI roles: system, user, assistant, tool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The LLM provider a chat request would go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    /// True when the endpoint is outside the operator's infrastructure.
    pub external: bool,
}

/// The request content. Everything is optional; the gateway fills what the action has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Source code to run (for `run` with a language).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Command line to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressTarget>,
    /// Names of secrets the action asks to have injected (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolCall>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Parts of an LLM request that DLP cannot read (images, audio, files): they could carry
    /// card data no scanner saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A part of a chat request that is not text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `image`, `audio` or `file`.
    pub kind: String,
    /// Where it is in the request, e.g. `messages[0].content[1]`.
    pub field: String,
}

/// What DLP found in the content as it would leave (after any tokenization the gateway applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpSummary {
    /// Findings per entity type, e.g. `{"CREDIT_CARD": 2, "EMAIL": 1}`.
    #[serde(default)]
    pub counts: BTreeMap<String, u32>,
    /// An unmasked, Luhn-valid PAN is present.
    #[serde(default)]
    pub raw_pan: bool,
    /// Sensitive authentication data (CVV, track data, PIN block) is present.
    #[serde(default)]
    pub sad: bool,
}

/// The prompt-injection detector's verdict on the request's text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionSummary {
    /// 0 (benign) to 1 (certainly an injection).
    pub score: f64,
    /// Rule families that matched, e.g. `instruction_override`.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// The complete input to a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub principal: PolicyPrincipal,
    pub action: Action,
    #[serde(default)]
    pub request: PolicyRequest,
    #[serde(default)]
    pub dlp: DlpSummary,
    #[serde(default)]
    pub injection: InjectionSummary,
    /// What happened before this action in the same conversation or tool session, oldest
    /// first and at most [`TRACE_WINDOW`] steps: for rules over sequences ("a tool result with an
    /// injection, then a tool that sends data out"). Facts only, never the content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<TraceStep>,
}

/// The most steps of a trace a policy input carries (the newest).
pub const TRACE_WINDOW: usize = 32;

/// One earlier step of an agent's conversation or tool session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStep {
    pub kind: TraceKind,
    /// The tool called, or whose result this is (empty when the conversation does not say).
    pub tool: String,
    /// What DLP found in the call's arguments or in the result.
    #[serde(default)]
    pub dlp: DlpSummary,
    /// The prompt-injection detector's verdict on a result.
    #[serde(default)]
    pub injection: InjectionSummary,
}

/// What a [`TraceStep`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A tool the model called.
    ToolCall,
    /// What a tool returned, which the model then read.
    ToolResult,
}
