//! Notifications: a signed JSON POST per approval event, in ztee's own format (for n8n's
//! Webhook node or any HTTP receiver) or as a Slack incoming-webhook message.
//!
//! Every POST carries `X-Ztee-Event`, `X-Ztee-Timestamp` (seconds since the Unix epoch) and
//! `X-Ztee-Signature: sha256=<hex>`, the HMAC-SHA-256 under the webhook's secret of
//! `<timestamp>.<body>`. Delivery is attempted three times (1 s, 5 s apart) and logged.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;
use ztee_state::config::{WebhookConfig, WebhookFormat};

use super::record::ApprovalRecord;

pub struct Webhook {
    url: String,
    secret: Zeroizing<Vec<u8>>,
    format: WebhookFormat,
    http: reqwest::Client,
    pub approver: Option<String>,
}

/// Links a notification carries.
pub struct Links {
    pub view: String,
    pub approve: Option<String>,
    pub deny: Option<String>,
    /// Whom `approve` and `deny` act for.
    pub approver: Option<String>,
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> Result<Self, String> {
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(format!(
                "webhook url {:?} is not an http(s) URL",
                config.url
            ));
        }
        let secret = match (&config.secret_env, &config.secret_file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| format!("webhook {}: environment variable {var} is not set", config.url))?
                .into_bytes(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("webhook {}: {}: {e}", config.url, path.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
            _ => {
                return Err(format!(
                    "webhook {}: give exactly one of secret_env and secret_file (payloads are always signed)",
                    config.url
                ))
            }
        };
        if let Some(approver) = &config.approver {
            if !super::callback::valid_approver(approver) {
                return Err(format!(
                    "webhook {}: approver {approver:?} is not an API key subject (apikey:<12 hex digits>); signed links act only for API keys",
                    config.url
                ));
            }
        }
        if secret.len() < 16 {
            return Err(format!(
                "webhook {}: the secret must be at least 16 bytes",
                config.url
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: config.url.clone(),
            secret: Zeroizing::new(secret),
            format: config.format,
            http,
            approver: config.approver.clone(),
        })
    }

    pub fn payload(&self, kind: &str, record: &ApprovalRecord, links: &Links) -> serde_json::Value {
        match self.format {
            WebhookFormat::Json => serde_json::json!({
                "type": kind,
                "approval": record,
                "links": {"view": links.view, "approve": links.approve, "deny": links.deny,
                          "approver": links.approver},
            }),
            WebhookFormat::Slack => {
                let mut text = format!(
                    "*ztee approval {}* `{}` ({}): {} by `{}` in tenant `{}`\nWhy: {}",
                    record.status.as_str(),
                    record.id,
                    kind,
                    record.action,
                    record.requester,
                    record.tenant,
                    record.reasons.join("; ")
                );
                // What a held command is bound to is part of what is approved.
                for input in &record.inputs {
                    text.push_str(&format!(
                        "\nRuns on: `{}` {} ({} bytes)",
                        input.path, input.digest, input.size
                    ));
                }
                if let (Some(a), Some(d), Some(who)) =
                    (&links.approve, &links.deny, &links.approver)
                {
                    text.push_str(&format!(
                        "\n<{a}|Approve> · <{d}|Deny> (as `{who}`; the link asks before it decides) · <{}|Details>",
                        links.view
                    ));
                }
                serde_json::json!({
                    "text": text,
                    "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                })
            }
        }
    }

    /// Delivers in the background; failures are logged, never block the request.
    pub fn send(&self, kind: &'static str, record: &ApprovalRecord, links: &Links) {
        let body = self.payload(kind, record, links).to_string().into_bytes();
        let url = self.url.clone();
        let http = self.http.clone();
        let secret = self.secret.clone();
        tokio::spawn(async move {
            for (attempt, pause) in [0u64, 1, 5].into_iter().enumerate() {
                tokio::time::sleep(Duration::from_secs(pause)).await;
                let timestamp = super::now();
                let result = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-ztee-event", kind)
                    .header("x-ztee-timestamp", timestamp.to_string())
                    .header("x-ztee-signature", signature(&secret, timestamp, &body))
                    .body(body.clone())
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(%url, status = r.status().as_u16(), attempt, "webhook refused")
                    }
                    Err(e) => tracing::warn!(%url, error = %e, attempt, "webhook delivery failed"),
                }
            }
        });
    }
}
