//! What a caller asks of the core, as every door hands it over: the REST API deserializes
//! these from its bodies (unknown fields are refused, so a typo is an error, not a silently
//! ignored setting); other doors build them from their own protocol. Values are checked by the
//! core ([`super::checks`]), whichever door they came through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    pub image: Option<String>,
    /// Lifetime in seconds; the sandbox is destroyed after it.
    pub timeout_s: Option<u64>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
    /// Environment for every command in the sandbox (a command's own env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels returned with the sandbox (at most 16 keys, 256 bytes per value).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Destinations the sandbox may reach through the egress proxy: `HOST:PORT` or
    /// `*.DOMAIN:PORT`. Empty (the default): no network at all. Policy decides (action `egress`).
    #[serde(default)]
    pub egress: Vec<String>,
    /// Secrets for every command in the sandbox: `NAME` or `NAME=ENVVAR`.
    #[serde(default)]
    pub secrets: Vec<ztee_secrets::SecretRequest>,
}

#[derive(Debug, Serialize)]
pub struct SandboxView {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub image: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub timeout_s: u64,
    pub created_at: String,
    pub metadata: serde_json::Value,
    /// When the sandbox ends (RFC 3339); present while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Engine facts (VM id, backend, accelerator); present while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<serde_json::Value>,
    /// Destinations granted through the egress proxy (`[]`: no network); present while the VM
    /// runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<ztee_egress::EgressRule>>,
    /// Secrets injected (names and environment variables, never values); present while the VM
    /// runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<ztee_secrets::SecretRequest>>,
}

/// A command: an argument vector, or a shell string run with `/bin/sh -c`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Cmd {
    Argv(Vec<String>),
    Shell(String),
}

impl Cmd {
    pub fn into_argv(self) -> Result<Vec<String>, &'static str> {
        match self {
            Cmd::Argv(argv) if argv.is_empty() => {
                Err("cmd is an empty list; give at least the program")
            }
            Cmd::Argv(argv) if argv[0].is_empty() => Err("cmd[0] (the program) is empty"),
            Cmd::Argv(argv) => Ok(argv),
            Cmd::Shell(s) if s.trim().is_empty() => Err("cmd is an empty string"),
            Cmd::Shell(s) => Ok(vec!["/bin/sh".into(), "-c".into(), s]),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    pub cmd: Cmd,
    pub stdin: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpload {
    pub path: String,
    /// The content: UTF-8 text in the REST API; the command line may send any bytes.
    #[serde(with = "text_or_bytes")]
    pub content: bytes::Bytes,
    /// Unix permission bits, e.g. `0o755` (493) for a script to execute; default 0o644.
    pub mode: Option<u32>,
}

/// File content as JSON: a string when it is UTF-8 text (what REST callers send), otherwise an
/// array of bytes, so a held action's binary file survives its sealing intact.
mod text_or_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(content: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(content) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(content),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        Ok(match Content::deserialize(d)? {
            Content::Text(text) => bytes::Bytes::from(text),
            Content::Bytes(bytes) => bytes::Bytes::from(bytes),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OneShotRun {
    pub cmd: Option<Cmd>,
    /// `python` or `sh`, with `code`.
    pub language: Option<String>,
    pub code: Option<String>,
    #[serde(default)]
    pub files: Vec<FileUpload>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub stdin: Option<String>,
    /// Working directory in the guest (default: the guest user's home).
    pub cwd: Option<String>,
    pub timeout_s: Option<u64>,
    pub image: Option<String>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
    /// Size of the writable scratch space (held in guest memory), in MiB; default: the
    /// engine's, at most half the memory.
    pub disk_mib: Option<u32>,
    /// Most processes the guest user may run at once; default: the engine's.
    pub max_processes: Option<u32>,
    /// Destinations the command may reach through the egress proxy, as for sandboxes.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Secrets for the command: `NAME` or `NAME=ENVVAR`.
    #[serde(default)]
    pub secrets: Vec<ztee_secrets::SecretRequest>,
}
