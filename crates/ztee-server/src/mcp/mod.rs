//! ztee's tools over MCP (streamable HTTP, the `rmcp` crate), mounted at `/v1/mcp`.
//!
//! Each tool call is turned into the equivalent REST request and served by the gateway's own
//! router in process, with the caller's credentials and request id, so MCP goes through exactly
//! the same authentication, tenant scoping, policy, DLP and audit as the REST API:
//!
//! | tool | REST |
//! |---|---|
//! | `run_code` | `POST /v1/run` with `language` and `code` |
//! | `run_command` | `POST /v1/run` with `cmd` |
//! | `sandbox_create` | `POST /v1/sandboxes` |
//! | `sandbox_exec` | `POST /v1/sandboxes/{id}/commands` |
//! | `read_file` | `GET /v1/sandboxes/{id}/files?path=` |
//! | `write_file` | `PUT /v1/sandboxes/{id}/files?path=` |
//! | `sandbox_close` | `DELETE /v1/sandboxes/{id}` |

pub mod definitions;
pub mod guard;
pub mod pins;
pub mod stdio;
pub mod trace;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use http_body_util::BodyExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock as Content, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerInfo, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::error::ActionError;
use crate::request_id::RequestId;

/// Largest REST answer a tool returns (the REST layer caps command output already).
const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

/// The MCP service for `/v1/mcp`; `gateway` is the REST router the tools call into.
pub fn service(gateway: Router) -> StreamableHttpService<ZteeTools, LocalSessionManager> {
    // Callers authenticate with bearer tokens on every request (no cookies), so the DNS
    // rebinding protection of the Host check adds nothing; the gateway's hostname is the
    // operator's to choose.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    StreamableHttpService::new(
        move || {
            Ok(ZteeTools {
                gateway: gateway.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

#[derive(Clone)]
pub struct ZteeTools {
    gateway: Router,
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn tool(name: &'static str, description: &'static str, input: Value) -> Tool {
    Tool::new(name, description, schema(input))
}

/// The tools, with their input schemas.
pub fn tools() -> Vec<Tool> {
    let cmd = json!({"description": "argv list, or one string run by /bin/sh -c",
        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]});
    let env = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let timeout = json!({"type": "integer", "minimum": 1, "description": "seconds"});
    let id = json!({"type": "string", "description": "sandbox id from sandbox_create"});
    let path = json!({"type": "string", "description": "absolute path in the sandbox"});
    vec![
        tool(
            "run_code",
            "Run source code in a fresh microVM that is destroyed afterwards. Returns stdout, stderr and exit code (card data masked).",
            json!({"type": "object", "required": ["language", "code"], "properties": {
                "language": {"type": "string", "description": "python, bash, sh or node"},
                "code": {"type": "string"}, "stdin": {"type": "string"}, "env": env,
                "timeout_s": timeout}}),
        ),
        tool(
            "run_command",
            "Run one command in a fresh microVM that is destroyed afterwards.",
            json!({"type": "object", "required": ["cmd"], "properties": {
                "cmd": cmd, "stdin": {"type": "string"}, "env": env, "timeout_s": timeout}}),
        ),
        tool(
            "sandbox_create",
            "Create a long-lived sandbox (microVM). Returns its id.",
            json!({"type": "object", "properties": {
                "image": {"type": "string"}, "memory_mib": {"type": "integer"},
                "vcpus": {"type": "integer"}, "timeout_s": timeout, "env": env}}),
        ),
        tool(
            "sandbox_exec",
            "Run a command in a sandbox.",
            json!({"type": "object", "required": ["sandbox_id", "cmd"], "properties": {
                "sandbox_id": id, "cmd": cmd, "stdin": {"type": "string"}, "env": env,
                "cwd": {"type": "string"}, "timeout_s": timeout}}),
        ),
        tool(
            "read_file",
            "Read a file from a sandbox (card data masked).",
            json!({"type": "object", "required": ["sandbox_id", "path"], "properties": {
                "sandbox_id": id, "path": path}}),
        ),
        tool(
            "write_file",
            "Write a text file into a sandbox.",
            json!({"type": "object", "required": ["sandbox_id", "path", "content"], "properties": {
                "sandbox_id": id, "path": path, "content": {"type": "string"}}}),
        ),
        tool(
            "sandbox_close",
            "Destroy a sandbox.",
            json!({"type": "object", "required": ["sandbox_id"], "properties": {"sandbox_id": id}}),
        ),
    ]
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `/` stay).
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The REST request a tool call stands for: method, path and body.
fn rest_request(name: &str, mut args: JsonObject) -> Result<(Method, String, Body), String> {
    let mut take_string = |key: &str| -> Result<String, String> {
        match args.remove(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("`{key}` must be a string")),
            None => Err(format!("`{key}` is required")),
        }
    };
    let sandbox = |id: String| -> Result<String, String> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(format!("/v1/sandboxes/{id}"))
        } else {
            Err("`sandbox_id` is not a sandbox id".into())
        }
    };
    let json_body = |args: JsonObject| Body::from(Value::Object(args).to_string());
    Ok(match name {
        "run_code" | "run_command" => (Method::POST, "/v1/run".into(), json_body(args)),
        "sandbox_create" => (Method::POST, "/v1/sandboxes".into(), json_body(args)),
        "sandbox_exec" => {
            let base = sandbox(take_string("sandbox_id")?)?;
            (Method::POST, format!("{base}/commands"), json_body(args))
        }
        "read_file" => {
            let base = sandbox(take_string("sandbox_id")?)?;
            let path = take_string("path")?;
            (
                Method::GET,
                format!("{base}/files?path={}", query_value(&path)),
                Body::empty(),
            )
        }
        "write_file" => {
            let base = sandbox(take_string("sandbox_id")?)?;
            let path = take_string("path")?;
            let content = take_string("content")?;
            (
                Method::PUT,
                format!("{base}/files?path={}", query_value(&path)),
                Body::from(content),
            )
        }
        "sandbox_close" => {
            let base = sandbox(take_string("sandbox_id")?)?;
            (Method::DELETE, base, Body::empty())
        }
        other => return Err(format!("no tool named {other:?}")),
    })
}

impl ZteeTools {
    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let args = request.arguments.unwrap_or_default();
        let (method, uri, body) = match rest_request(&request.name, args) {
            Ok(r) => r,
            Err(message) => return Err(McpError::invalid_params(message, None)),
        };
        let mut inner = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = parts.and_then(|p| p.headers.get(header::AUTHORIZATION)) {
            inner = inner.header(header::AUTHORIZATION, auth.clone());
        }
        let mut inner = inner
            .body(body)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let request_id = parts
            .and_then(|p| p.extensions.get::<RequestId>().cloned())
            .unwrap_or_else(RequestId::generate);
        inner.extensions_mut().insert(request_id.clone());
        if let Some(ci) = parts.and_then(|p| {
            p.extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .cloned()
        }) {
            inner.extensions_mut().insert(ci);
        }
        let response = match self.gateway.clone().oneshot(inner).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if let Some(err) = response.extensions().get::<ActionError>() {
            return Ok(CallToolResult::error(vec![Content::text(format!(
                "{} ({}): {} (request id {})",
                err.code,
                crate::error::status_of(err.kind).as_u16(),
                err.message,
                request_id.as_str()
            ))]));
        }
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESULT_BYTES)
            .collect()
            .await
            .map_err(|e| McpError::internal_error(format!("reading the result: {e}"), None))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            Ok(CallToolResult::success(vec![Content::text(text)]))
        } else {
            Ok(CallToolResult::error(vec![Content::text(format!(
                "{}: {text}",
                status.as_u16()
            ))]))
        }
    }
}

impl ServerHandler for ZteeTools {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "ztee runs code in ephemeral microVMs behind policy, DLP and an audit trail. \
             Card numbers in results are masked.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        self.call(request, context).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_map_to_rest_requests() {
        let args = |v: Value| v.as_object().unwrap().clone();
        let (m, uri, _) = rest_request(
            "read_file",
            args(json!({"sandbox_id": "sbx-1", "path": "/home/user/a b&c"})),
        )
        .unwrap();
        assert_eq!(m, Method::GET);
        assert_eq!(uri, "/v1/sandboxes/sbx-1/files?path=/home/user/a%20b%26c");
        let err = rest_request("sandbox_close", args(json!({"sandbox_id": "../x"}))).unwrap_err();
        assert!(err.contains("sandbox id"));
        assert!(rest_request("format_disk", JsonObject::new()).is_err());
        assert_eq!(tools().len(), 7);
    }
}
