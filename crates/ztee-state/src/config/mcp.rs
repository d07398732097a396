//! `[mcp]`: the third-party MCP servers the MCP guard relays to.

use serde::Deserialize;

/// `[[mcp.upstreams]]` in the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardUpstream {
    /// Path segment: the guard serves it at `/v1/mcp-guard/{name}`.
    pub name: String,
    /// The upstream's streamable HTTP endpoint, e.g. `http://127.0.0.1:9000/mcp`. Give this or
    /// `command`.
    #[serde(default)]
    pub url: Option<String>,
    /// A server that speaks MCP over stdio, started by ztee in a microVM of its own (one per
    /// tenant), e.g. `["python3", "/opt/server.py"]`. Give this or `url`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The image the stdio server's microVM boots (admitted like any other); default: the
    /// node's default image.
    #[serde(default)]
    pub image: Option<String>,
    /// How its tool definitions come to be trusted: `approval` (the default: a person approves
    /// the first set and every change) or `first_use` (the first set is pinned as seen; every
    /// change still needs a person).
    #[serde(default)]
    pub pin: PinMode,
}

/// How the guard reaches an upstream.
pub enum Transport<'a> {
    /// Streamable HTTP at this URL.
    Http(&'a str),
    /// A process in a microVM, speaking newline-delimited JSON-RPC on stdin and stdout.
    Stdio {
        command: &'a [String],
        image: Option<&'a str>,
    },
}

impl GuardUpstream {
    /// The transport; `None` only for a configuration [`McpConfig::validate`] refuses.
    pub fn transport(&self) -> Option<Transport<'_>> {
        match (&self.url, &self.command) {
            (Some(url), None) => Some(Transport::Http(url)),
            (None, Some(command)) => Some(Transport::Stdio {
                command,
                image: self.image.as_deref(),
            }),
            _ => None,
        }
    }
}

/// See [`GuardUpstream::pin`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    #[default]
    Approval,
    FirstUse,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub upstreams: Vec<GuardUpstream>,
}

impl McpConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let ok = !u.name.is_empty()
                && u.name.len() <= 64
                && u.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "mcp.upstreams[{i}].name {:?} must be 1 to 64 of A-Z a-z 0-9 - _",
                    u.name
                ));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(format!(
                    "mcp.upstreams[{i}].name {:?} is used twice",
                    u.name
                ));
            }
            match (&u.url, &u.command) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(format!(
                        "mcp.upstreams[{i}] needs exactly one of url (streamable HTTP) or command (stdio, run in a microVM)"
                    ))
                }
                (Some(text), None) => {
                    let url = url::Url::parse(text)
                        .map_err(|e| format!("mcp.upstreams[{i}].url {text:?}: {e}"))?;
                    if !matches!(url.scheme(), "http" | "https") {
                        return Err(format!(
                            "mcp.upstreams[{i}].url must be http:// or https://"
                        ));
                    }
                    if u.image.is_some() {
                        return Err(format!(
                            "mcp.upstreams[{i}].image applies only to a stdio server (command)"
                        ));
                    }
                }
                (None, Some(command)) => {
                    if command.first().is_none_or(|p| p.is_empty())
                        || command.iter().any(|a| a.contains('\0'))
                    {
                        return Err(format!(
                            "mcp.upstreams[{i}].command must name a program (a non-empty list without NUL)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
