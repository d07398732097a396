//! `ztee approvals`: list, inspect and decide requests the gateway holds for a human approver.
//! Talks to a running gateway over its API.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::globals::{Format, GlobalArgs};
use crate::output;

/// Examples:
///   export ZTEE_GATEWAY=https://ztee.internal:8443 ZTEE_API_KEY_FILE=~/.config/ztee/approver.key
///   ztee approvals ls
///   ztee approvals show apr_3f9a...
///   ztee approvals approve apr_3f9a... --comment "reviewed the job"
///   ztee approvals deny apr_3f9a... --comment "card data must not leave the CDE"
///
/// Approving and denying need a key with the `approval:decide` permission (role approver,
/// admin or platform-admin); nobody can approve their own request.
#[derive(Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// List approvals (pending ones by default).
    Ls {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// pending, approved, executed, failed, denied, expired, or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Show one approval: the held request (DLP-masked), reasons, decisions, result.
    Show {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Wait up to this many seconds (at most 60) for a final status.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Approve a held request.
    Approve {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a held request.
    Deny {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        comment: Option<String>,
    },
}

/// Which gateway, and the API key to call it with (never taken from the command line).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Gateway")]
pub struct GatewayArgs {
    /// The gateway's base URL.
    #[arg(long, env = "ZTEE_GATEWAY", default_value = "http://127.0.0.1:8443")]
    pub gateway: String,
    /// File holding the API key (else the ZTEE_API_KEY environment variable).
    #[arg(long, env = "ZTEE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
}

impl GatewayArgs {
    fn key(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.api_key_file {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file {}", path.display()))?;
            return Ok(key.trim().to_owned());
        }
        match std::env::var("ZTEE_API_KEY") {
            Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
            _ => bail!("no API key: set ZTEE_API_KEY or give --api-key-file"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.trim_end_matches('/'))
    }
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(command, globals))
}

async fn call(
    gateway: &GatewayArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(90))
        .build()?;
    let mut request = client
        .request(method, gateway.url(path))
        .bearer_auth(gateway.key()?);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", gateway.gateway))?;
    let status = response.status();
    let value: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("no error message");
        let code = value["error"]["code"].as_str().unwrap_or("error");
        bail!("the gateway answered {} {code}: {message}", status.as_u16());
    }
    Ok(value)
}

fn when(secs: &serde_json::Value) -> String {
    secs.as_u64()
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_default()
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn run_async(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Ls { gateway, status } => {
            let path = if status == "all" {
                "/v1/approvals".to_owned()
            } else {
                format!("/v1/approvals?status={status}")
            };
            let list = call(&gateway, reqwest::Method::GET, &path, None).await?;
            let rows = list["approvals"].as_array().cloned().unwrap_or_default();
            output::print_list(
                globals.format,
                &["ID", "STATUS", "REQUESTER", "ACTION", "RULES", "EXPIRES"],
                &rows,
                |r| {
                    vec![
                        text(&r["id"]),
                        text(&r["status"]),
                        text(&r["requester"]),
                        text(&r["action"]),
                        r["rule_ids"]
                            .as_array()
                            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default(),
                        when(&r["expires_at"]),
                    ]
                },
            )?;
            Ok(0)
        }
        Command::Show { id, gateway, wait } => {
            let path = match wait {
                Some(w) => format!("/v1/approvals/{id}?wait={w}"),
                None => format!("/v1/approvals/{id}"),
            };
            let r = call(&gateway, reqwest::Method::GET, &path, None).await?;
            print_approval(globals.format, &r)?;
            Ok(0)
        }
        Command::Approve {
            id,
            gateway,
            comment,
        } => decide(globals, &gateway, &id, "approve", comment).await,
        Command::Deny {
            id,
            gateway,
            comment,
        } => decide(globals, &gateway, &id, "deny", comment).await,
    }
}

async fn decide(
    globals: &GlobalArgs,
    gateway: &GatewayArgs,
    id: &str,
    verb: &str,
    comment: Option<String>,
) -> anyhow::Result<u8> {
    let r = call(
        gateway,
        reqwest::Method::POST,
        &format!("/v1/approvals/{id}/{verb}"),
        Some(serde_json::json!({ "comment": comment })),
    )
    .await?;
    print_approval(globals.format, &r)?;
    Ok(0)
}

/// The files a held sandbox command is bound to, one per line: what the approver approves
/// together with the command text (the run is refused if any of them changes).
fn inputs(r: &serde_json::Value) -> String {
    r["inputs"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .map(|f| {
                    format!(
                        "{}  {} bytes  {}",
                        text(&f["digest"]),
                        text(&f["size"]),
                        text(&f["path"])
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|lines| !lines.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

fn print_approval(format: Format, r: &serde_json::Value) -> anyhow::Result<()> {
    let decisions = r["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        text(&d["by"]),
                        if d["approve"] == true {
                            "approved"
                        } else {
                            "denied"
                        },
                        d["comment"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    output::print_object(
        format,
        r,
        &[
            ("id", text(&r["id"])),
            ("status", text(&r["status"])),
            ("reason", text(&r["status_reason"])),
            ("requester", text(&r["requester"])),
            ("tenant", text(&r["tenant"])),
            ("action", text(&r["action"])),
            ("risk", text(&r["risk"])),
            (
                "why",
                r["reasons"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default(),
            ),
            (
                "approvals",
                format!(
                    "{} of {}",
                    r["decisions"]
                        .as_array()
                        .map(|d| d.iter().filter(|d| d["approve"] == true).count())
                        .unwrap_or(0),
                    text(&r["required_approvals"])
                ),
            ),
            ("decisions", decisions),
            ("expires", when(&r["expires_at"])),
            (
                "request (masked)",
                serde_json::to_string_pretty(&r["request"])?,
            ),
            ("inputs (bound)", inputs(r)),
            ("result", serde_json::to_string_pretty(&r["result"])?),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_inputs_are_shown_with_digest_size_and_path() {
        let r = serde_json::json!({"inputs": [
            {"path": "/home/user/x.sh", "digest": "hmac-sha256:ab12", "size": 21},
            {"path": "/work/data.csv", "digest": "hmac-sha256:cd34", "size": 7},
        ]});
        assert_eq!(
            inputs(&r),
            "hmac-sha256:ab12  21 bytes  /home/user/x.sh\nhmac-sha256:cd34  7 bytes  /work/data.csv"
        );
        assert_eq!(inputs(&serde_json::json!({})), "-");
    }
}
