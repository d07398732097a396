//! The OpenAPI 3.0 document served at `/openapi.json`, written by hand so it says exactly what
//! the handlers do. A test parses it and checks that it covers every route in `api::ROUTES` and
//! `llm::LLM_ROUTES`.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn std_errors(mut responses: Value) -> Value {
    if let Some(map) = responses.as_object_mut() {
        map.insert(
            "400".into(),
            error_response("Invalid request (the message says which field)"),
        );
        map.insert(
            "401".into(),
            error_response("Missing or refused credentials"),
        );
        map.insert(
            "403".into(),
            error_response("Missing permission, or denied by policy"),
        );
        map.insert(
            "413".into(),
            error_response("Body larger than the configured limit"),
        );
        map.insert("415".into(), error_response("Body is not application/json"));
        map.insert(
            "422".into(),
            error_response("Body does not match the schema, or DLP blocked it"),
        );
        map.insert(
            "429".into(),
            error_response("Rate limit or tenant quota exceeded; see Retry-After"),
        );
        map.insert(
            "503".into(),
            error_response("VM engine or audit trail unavailable"),
        );
    }
    responses
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn path_param() -> Value {
    json!({"name": "path", "in": "query", "required": true, "description": "Absolute path in the guest", "schema": {"type": "string"}})
}

/// The approval and secret routes (a separate `json!` to stay within the macro's recursion
/// limit).
fn approval_and_secret_paths() -> Value {
    json!({
            "/v1/approvals": {
                "get": {"summary": "List approvals: an approver sees the tenant's, a requester their own",
                        "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "approved", "executed", "failed", "denied", "expired"]}}],
                        "responses": std_errors(json!({"200": {"description": "Approvals", "content": {"application/json": {"schema": {"type": "object", "properties": {"approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}}}}}}}}))}
            },
            "/v1/approvals/{id}": {
                "parameters": [id_param()],
                "get": {"summary": "Show an approval (DLP-masked request, decisions, result); ?wait=N long-polls up to 60 s for a final status",
                        "parameters": [{"name": "wait", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 60}}],
                        "responses": std_errors(json!({"200": ok_json("Approval", "Approval"), "404": error_response("No such approval (or not visible)")}))}
            },
            "/v1/approvals/{id}/approve": {
                "parameters": [id_param()],
                "post": {"summary": "Approve (needs approval:decide; never the requester)", "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalDecision"}}}},
                         "responses": std_errors(json!({"200": ok_json("Approval", "Approval"), "404": error_response("No such approval (or not visible)"), "409": error_response("Not pending, or already decided by this approver")}))}
            },
            "/v1/approvals/{id}/deny": {
                "parameters": [id_param()],
                "post": {"summary": "Deny (needs approval:decide)", "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalDecision"}}}},
                         "responses": std_errors(json!({"200": ok_json("Approval", "Approval"), "404": error_response("No such approval (or not visible)"), "409": error_response("Not pending")}))}
            },
            "/v1/approvals/{id}/callback": {
                "parameters": [id_param(),
                    {"name": "decision", "in": "query", "required": true, "schema": {"type": "string", "enum": ["approve", "deny"]}},
                    {"name": "approver", "in": "query", "required": true, "schema": {"type": "string"}, "description": "The API key subject (`apikey:<id>`) the link was minted for; bound in the signature"},
                    {"name": "expires", "in": "query", "required": true, "schema": {"type": "integer"}},
                    {"name": "sig", "in": "query", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "Confirmation page for a signed decision link (HTML; decides nothing, since mail scanners and chat previews follow links)", "security": [],
                        "responses": std_errors(json!({"200": {"description": "Confirmation page", "content": {"text/html": {}}}, "403": error_response("Bad or expired signature, or the approver's key is gone")}))},
                "post": {"summary": "Decide in the named approver's name with a signed link (the HMAC signature is the credential; the approver's key must still be active)", "security": [],
                         "responses": std_errors(json!({"200": {"description": "Decision recorded"}, "403": error_response("Bad or expired signature, the approver's key is gone, or the approver is the requester"), "409": error_response("Not pending, or already decided by this approver")}))}
            },
            "/v1/secrets": {
                "get": {"summary": "List secret names in the built-in store and Vault mappings (platform admin; never values)",
                        "responses": std_errors(json!({"200": ok_json("Secret names", "SecretList")}))}
            },
            "/v1/secrets/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"}}],
                "put": {"summary": "Store or replace a secret in the built-in store (platform admin)", "requestBody": json_body("PutSecret"),
                        "responses": std_errors(json!({"204": {"description": "Stored"}}))},
                "delete": {"summary": "Remove a secret from the built-in store (platform admin)",
                           "responses": std_errors(json!({"204": {"description": "Removed"}, "404": error_response("No such secret")}))}
            }
    })
}

/// The LLM proxy's routes. Their bodies are the providers' own (OpenAI, Anthropic), documented
/// by them; what ztee adds is said in each description.
fn llm_paths() -> Value {
    let provider_body =
        json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}}});
    let answer = json!({"description": "The provider's answer, masked (placeholders restored for pan:detokenize); with \"stream\": true, server-sent events in the provider's format",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}});
    let errors = json!({
        "400": {"description": "Malformed request, in the provider's error shape (nothing was forwarded)"},
        "401": error_response("Missing or refused credentials"),
        "403": {"description": "Missing llm:chat, or denied by policy (the rules are named), in the provider's error shape"},
        "404": {"description": "No provider of this shape is configured (or none by the x-ztee-provider name)"},
        "502": {"description": "The upstream provider failed"},
        "503": {"description": "The audit trail cannot be written; the answer is withheld"}});
    let chat = |summary: &str| {
        let mut responses = errors.clone();
        responses["200"] = answer.clone();
        json!({"post": {"summary": summary,
            "description": "Card data and secrets in every message, tool argument and tool result are tokenized before anything leaves; policy (llm.chat) picks the provider; tool calls in the answer are decided by policy (tool.call). Header x-ztee-provider pins a provider.",
            "requestBody": provider_body.clone(), "responses": responses}})
    };
    json!({
        "/v1/openai/chat/completions": chat("OpenAI chat completions through the guardrails"),
        "/v1/openai/responses": chat("OpenAI Responses API through the guardrails"),
        "/v1/anthropic/messages": chat("Anthropic messages through the guardrails (x-api-key accepted)"),
        "/v1/anthropic/v1/messages": chat("Anthropic messages, at the path the Anthropic SDK appends to its base URL"),
        "/v1/traces": {"get": {"summary": "Export LLM and tool-call traces (audit:read), JSON lines in OpenAI message format, masked",
            "responses": std_errors(json!({"200": {"description": "One trace per line", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}))}}
    })
}

fn approval_and_secret_schemas() -> Value {
    json!({
                "Approval": {"type": "object", "properties": {
                    "id": {"type": "string"}, "tenant": {"type": "string"}, "requester": {"type": "string"}, "action": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "approved", "executed", "failed", "denied", "expired"]},
                    "status_reason": {"type": "string"}, "created_at": {"type": "integer"}, "expires_at": {"type": "integer"},
                    "risk": {"type": "string"}, "rule_ids": {"type": "array", "items": {"type": "string"}}, "reasons": {"type": "array", "items": {"type": "string"}},
                    "required_approvals": {"type": "integer"}, "request": {"type": "object", "description": "The held request, DLP-masked"},
                    "decisions": {"type": "array", "items": {"type": "object", "properties": {"by": {"type": "string"}, "approve": {"type": "boolean"}, "comment": {"type": "string"}, "at": {"type": "integer"}}}},
                    "result": {"type": "object", "description": "CommandResult once executed, or {error}"}}},
                "ApprovalDecision": {"type": "object", "additionalProperties": false, "properties": {"comment": {"type": "string", "maxLength": 1000}}},
                "PutSecret": {"type": "object", "additionalProperties": false, "required": ["value"], "properties": {
                    "value": {"type": "string"}, "encoding": {"type": "string", "enum": ["utf-8", "base64"]}}},
                "SecretList": {"type": "object", "properties": {"secrets": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "source": {"type": "string", "enum": ["store", "vault"]}, "updated_at": {"type": "integer"}}}}}}
    })
}

pub fn document() -> Value {
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    // Destinations for the egress proxy; policy (action `egress`) decides. Empty: no network.
    let egress = json!({"type": "array", "maxItems": 32, "items": {"type": "string",
        "description": "HOST:PORT or *.DOMAIN:PORT", "example": "pypi.org:443"}});
    let cmd = json!({"oneOf": [
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "argv"},
        {"type": "string", "description": "run with /bin/sh -c"}
    ]});
    let secret_requests = json!({"type": "array", "maxItems": 16, "items": {"type": "string"},
        "description": "Secrets to inject: \"NAME\" (file /run/secrets/NAME) or \"NAME=ENVVAR\" (file and environment variable); policy action secret.use decides"});
    let extra_paths = approval_and_secret_paths();
    let redactions = json!({"type": "object", "additionalProperties": {"type": "integer"}, "description": "Redacted values per entity type, e.g. {\"CREDIT_CARD\": 2}"});
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ztee gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Authenticated, policy-enforcing, DLP-scanning API for ephemeral microVM sandboxes. Every response carries X-Request-ID."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Process is up"}}}},
            "/readyz": {"get": {"summary": "Readiness (state database); answers {\"status\": \"ready\"} and nothing else", "security": [], "responses": {"200": {"description": "Ready"}, "503": error_response("Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics, for every tenant: needs `metrics:read` (role `metrics` for a scraper's API key, or `platform-admin`)",
                                 "responses": {"200": {"description": "OpenMetrics text", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}},
                                               "401": error_response("Missing or refused credentials"),
                                               "403": error_response("The caller lacks `metrics:read`"),
                                               "429": error_response("Rate limited")}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.0 document"}}}},
            "/v1/sandboxes": {
                "get": {"summary": "List visible sandboxes", "responses": std_errors(json!({"200": ok_json("Sandboxes", "SandboxList")}))},
                "post": {"summary": "Create a sandbox (boots a microVM)", "requestBody": json_body("CreateSandbox"),
                         "responses": std_errors(json!({"201": ok_json("Created", "Sandbox"),
                             "202": {"description": "Held for a human approval: {\"approval\": {id, status, link, wait, ...}}; Location is the approval"}}))}
            },
            "/v1/sandboxes/{id}": {
                "parameters": [id_param()],
                "get": {"summary": "Show a sandbox", "responses": std_errors(json!({"200": ok_json("Sandbox", "Sandbox"), "404": error_response("No such sandbox (or not visible)")}))},
                "delete": {"summary": "Destroy a sandbox", "responses": std_errors(json!({"204": {"description": "Destroyed"}, "404": error_response("No such sandbox (or not visible)")}))}
            },
            "/v1/sandboxes/{id}/commands": {
                "parameters": [id_param()],
                "post": {"summary": "Run a command in the sandbox",
                         "description": "With `Accept: application/x-ndjson` the answer is a stream of StreamEvent lines.",
                         "requestBody": json_body("RunCommand"),
                         "responses": std_errors(json!({
                             "200": {"description": "Result, or a stream", "content": {
                                 "application/json": {"schema": {"$ref": "#/components/schemas/CommandResult"}},
                                 "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}}},
                             "202": {"description": "Held for a human approval: {\"approval\": {id, status, link, wait, ...}}; Location is the approval"},
                             "404": error_response("No such sandbox (or not visible)")}))}
            },
            "/v1/sandboxes/{id}/files": {
                "parameters": [id_param(), path_param()],
                "get": {"summary": "Download a file (masked by outbound DLP)",
                        "responses": std_errors(json!({"200": {"description": "File content; X-Ztee-Redactions lists what was masked",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                            "404": error_response("No such sandbox (or not visible)")}))},
                "put": {"summary": "Upload a file (scanned by inbound DLP)",
                        "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                        "responses": std_errors(json!({"200": ok_json("Written", "FileWritten"), "404": error_response("No such sandbox (or not visible)")}))}
            },
            "/v1/run": {
                "post": {"summary": "Run once in a fresh microVM that is destroyed afterwards",
                         "requestBody": json_body("Run"),
                         "responses": std_errors(json!({"200": {"description": "Result, or a stream", "content": {
                             "application/json": {"schema": {"$ref": "#/components/schemas/CommandResult"}},
                             "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}}},
                             "202": {"description": "Held for a human approval: {\"approval\": {id, status, link, wait, ...}}; Location is the approval"}}))}
            },
            "/v1/audit": {
                "get": {"summary": "Read the tenant's audit events (needs audit:read; the read is audited)",
                        "parameters": [
                            {"name": "request_id", "in": "query", "schema": {"type": "string"}},
                            {"name": "principal", "in": "query", "schema": {"type": "string"}},
                            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                            {"name": "type", "in": "query", "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                            {"name": "tenant", "in": "query", "description": "another tenant: platform admins only", "schema": {"type": "string"}}
                        ],
                        "responses": std_errors(json!({"200": {"description": "Events", "content": {"application/json": {"schema": {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "object"}}}}}}}}))}
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "OIDC access token (JWT) or ztee API key (ztee_...)"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}}},
                "CreateSandbox": {"type": "object", "additionalProperties": false, "properties": {
                    "image": {"type": "string"}, "timeout_s": {"type": "integer", "minimum": 1},
                    "memory_mib": {"type": "integer", "minimum": 64}, "vcpus": {"type": "integer", "minimum": 1},
                    "env": string_map.clone(), "metadata": string_map.clone(), "egress": egress.clone(),
                    "secrets": secret_requests.clone()}},
                "Sandbox": {"type": "object", "properties": {
                    "id": {"type": "string"}, "tenant": {"type": "string"}, "owner": {"type": "string"}, "image": {"type": "string"},
                    "memory_mib": {"type": "integer"}, "vcpus": {"type": "integer"}, "timeout_s": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"}, "metadata": {"type": "object"}, "vm": {"type": "object"},
                    "egress": {"type": "array", "items": {"type": "string"}, "description": "granted destinations while the sandbox runs; [] means no network"},
                    "secrets": {"type": "array", "description": "secrets injected while the sandbox runs, by name; never values",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}, "env": {"type": "string", "nullable": true}}}}}},
                "SandboxList": {"type": "object", "properties": {"sandboxes": {"type": "array", "items": {"$ref": "#/components/schemas/Sandbox"}}}},
                "RunCommand": {"type": "object", "additionalProperties": false, "required": ["cmd"], "properties": {
                    "cmd": cmd.clone(), "stdin": {"type": "string"}, "env": string_map.clone(), "cwd": {"type": "string"},
                    "timeout_s": {"type": "integer", "minimum": 1}}},
                "Run": {"type": "object", "additionalProperties": false, "properties": {
                    "cmd": cmd, "language": {"type": "string", "enum": ["python", "sh"]}, "code": {"type": "string"},
                    "files": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["path", "content"],
                        "properties": {"path": {"type": "string"},
                            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}]},
                            "mode": {"type": "integer", "minimum": 0, "maximum": 511}}}},
                    "env": string_map, "stdin": {"type": "string"}, "cwd": {"type": "string"},
                    "timeout_s": {"type": "integer", "minimum": 1},
                    "image": {"type": "string"}, "memory_mib": {"type": "integer"}, "vcpus": {"type": "integer"},
                    "disk_mib": {"type": "integer", "minimum": 8}, "max_processes": {"type": "integer", "minimum": 16, "maximum": 65536},
                    "egress": egress, "secrets": secret_requests}},
                "CommandResult": {"type": "object", "properties": {
                    "stdout": {"type": "string"}, "stderr": {"type": "string"},
                    "exit_code": {"type": "integer", "nullable": true}, "timed_out": {"type": "boolean"},
                    "duration_ms": {"type": "integer"}, "redactions": redactions.clone(), "truncated": {"type": "boolean"}}},
                "StreamEvent": {"type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string", "enum": ["stdout", "stderr", "exit", "error"]},
                    "data": {"type": "string"}, "exit_code": {"type": "integer", "nullable": true},
                    "timed_out": {"type": "boolean"}, "duration_ms": {"type": "integer"}, "redactions": redactions,
                    "error": {"type": "object"}}},
                "FileWritten": {"type": "object", "properties": {"path": {"type": "string"}, "size": {"type": "integer"}, "redactions": {"type": "object"}}}
            }
        }
    });
    for extra in [extra_paths, llm_paths()] {
        if let (Some(paths), Value::Object(extra)) = (doc["paths"].as_object_mut(), extra) {
            paths.extend(extra);
        }
    }
    if let (Some(schemas), Value::Object(extra)) = (
        doc["components"]["schemas"].as_object_mut(),
        approval_and_secret_schemas(),
    ) {
        schemas.extend(extra);
    }
    doc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn document_is_valid_openapi_and_covers_every_route() {
        let doc: openapiv3::OpenAPI = serde_json::from_value(document()).unwrap();
        for (method, path) in crate::api::ROUTES.iter().chain(crate::llm::LLM_ROUTES) {
            let item = doc
                .paths
                .paths
                .get(*path)
                .and_then(|p| p.as_item())
                .unwrap_or_else(|| panic!("{path} is not documented"));
            let op = match *method {
                "get" => item.get.as_ref(),
                "post" => item.post.as_ref(),
                "put" => item.put.as_ref(),
                "delete" => item.delete.as_ref(),
                _ => None,
            };
            assert!(op.is_some(), "{method} {path} is not documented");
        }
        assert_eq!(doc.paths.paths.len(), 22);
        // Every $ref points at a defined schema.
        let text = document().to_string();
        let schemas = doc.components.unwrap().schemas;
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "undefined schema {name}");
        }
    }
}
