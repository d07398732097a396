//! `[mcp]`: the third-party MCP servers the MCP guard relays to.

use serde::Deserialize;

/// `[[mcp.upstreams]]` in the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardUpstream {
    /// Path segment: the guard serves it at `/v1/mcp-guard/{name}`.
    pub name: String,
    /// The upstream's streamable HTTP endpoint, e.g. `http://127.0.0.1:9000/mcp`.
    pub url: String,
    /// How its tool definitions come to be trusted: `approval` (the default: a person approves
    /// the first set and every change) or `first_use` (the first set is pinned as seen; every
    /// change still needs a person).
    #[serde(default)]
    pub pin: PinMode,
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
            let url = url::Url::parse(&u.url)
                .map_err(|e| format!("mcp.upstreams[{i}].url {:?}: {e}", u.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "mcp.upstreams[{i}].url must be http:// or https://"
                ));
            }
        }
        Ok(())
    }
}
