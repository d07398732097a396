//! HashiCorp Vault / OpenBao over their HTTP API: KV version 2 reads, dynamic secrets with lease
//! revocation, token or AppRole authentication.
//!
//! Endpoints used (identical in Vault and OpenBao):
//! - `POST /v1/auth/<mount>/login` with `{"role_id", "secret_id"}` (AppRole) -> `auth.client_token`
//! - `GET  /v1/<kv mount>/data/<path>` -> `data.data.<field>` (KV v2)
//! - `GET  /v1/<dynamic path>` -> `lease_id`, `data.<field>` (e.g. `database/creds/<role>`)
//! - `PUT  /v1/sys/leases/revoke` with `{"lease_id"}`
//!
//! Every request carries `X-Vault-Token` (and `X-Vault-Namespace` when configured).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{SecretError, SecretName, SecretValue};

/// `[secrets.vault]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base URL, e.g. `https://vault.internal:8200`. Plain `http://` only to a loopback host;
    /// no user name or password in it.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    /// Which ztee secret name comes from where in Vault.
    #[serde(default)]
    pub secrets: BTreeMap<SecretName, VaultMapping>,
    /// Seconds per HTTP request (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    10
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// How ztee logs in to Vault.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum VaultAuth {
    /// A token from an environment variable or a file (one of them).
    Token {
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// AppRole: a role id and a secret id (from an environment variable or a file).
    #[serde(rename = "approle")]
    AppRole {
        role_id: String,
        #[serde(default)]
        secret_id_env: Option<String>,
        #[serde(default)]
        secret_id_file: Option<PathBuf>,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
}

/// Where one secret lives in Vault.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum VaultMapping {
    /// A field of a KV v2 secret: `{ kv = "payments/db", field = "password" }`.
    Kv {
        kv: String,
        field: String,
        #[serde(default = "default_kv_mount")]
        mount: String,
    },
    /// A field of a dynamic secret read from `path`, whose lease is revoked when the sandbox
    /// ends: `{ dynamic = "database/creds/readonly", field = "password" }`.
    Dynamic { dynamic: String, field: String },
}

/// A value read from Vault, with the lease to revoke for a dynamic secret.
#[derive(Debug)]
pub struct VaultSecret {
    pub value: SecretValue,
    pub lease_id: Option<String>,
}

pub struct VaultClient {
    config: VaultConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<Zeroizing<String>>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("address", &self.config.address)
            .finish()
    }
}

#[derive(Deserialize)]
struct LoginResponse {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: String,
}

#[derive(Deserialize)]
struct ReadResponse {
    #[serde(default)]
    lease_id: String,
    data: serde_json::Value,
}

impl VaultConfig {
    /// Checks what serde cannot: `address` is `https://` (plain `http://` only to a loopback host:
    /// the token travels in every request) and carries no user name or password (Vault takes
    /// its token in a header; the address also appears in errors and logs).
    pub fn validate(&self) -> Result<(), SecretError> {
        const KEY: &str = "secrets.vault.address";
        let url = crate::endpoint::check_endpoint(KEY, &self.address)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(crate::endpoint::EndpointError::Credentials { key: KEY.into() }.into());
        }
        Ok(())
    }
}

impl VaultClient {
    pub fn new(config: VaultConfig) -> Result<Self, SecretError> {
        config.validate()?;
        let address = config.address.trim_end_matches('/').to_owned();
        for (name, mapping) in &config.secrets {
            let path = match mapping {
                VaultMapping::Kv { kv, mount, .. } => format!("{mount}/{kv}"),
                VaultMapping::Dynamic { dynamic, .. } => dynamic.clone(),
            };
            if path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(SecretError::Vault {
                    address,
                    message: format!(
                        "secret {name}: path {path:?} has an empty, `.` or `..` segment"
                    ),
                });
            }
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(config.timeout_s.max(1)))
            .build()
            .map_err(|e| SecretError::Vault {
                address: address.clone(),
                message: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            config: VaultConfig { address, ..config },
            http,
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub fn address(&self) -> &str {
        &self.config.address
    }

    pub fn serves(&self, name: &SecretName) -> bool {
        self.config.secrets.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &SecretName> {
        self.config.secrets.keys()
    }

    fn error(&self, message: impl Into<String>) -> SecretError {
        SecretError::Vault {
            address: self.config.address.clone(),
            message: message.into(),
        }
    }

    /// Reads the secret `name` is mapped to.
    pub async fn read(&self, name: &SecretName) -> Result<VaultSecret, SecretError> {
        let mapping = self
            .config
            .secrets
            .get(name)
            .ok_or_else(|| SecretError::Unavailable(name.to_string()))?;
        let (path, field, dynamic) = match mapping {
            VaultMapping::Kv { kv, field, mount } => (format!("{mount}/data/{kv}"), field, false),
            VaultMapping::Dynamic { dynamic, field } => (dynamic.clone(), field, true),
        };
        let body: ReadResponse = self
            .authenticated(|token| self.request(reqwest::Method::GET, &path, token))
            .await?
            .json()
            .await
            .map_err(|e| self.error(format!("reading {path}: unexpected response: {e}")))?;
        let fields = if dynamic {
            &body.data
        } else {
            body.data.get("data").unwrap_or(&serde_json::Value::Null)
        };
        let value = match fields.get(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(self.error(format!("{path}: field {field:?} is not a string"))),
            None => return Err(self.error(format!("{path}: no field {field:?}"))),
        };
        let value = SecretValue::new(value.into_bytes())?;
        let lease_id = (dynamic && !body.lease_id.is_empty()).then_some(body.lease_id);
        Ok(VaultSecret { value, lease_id })
    }

    /// Revokes a dynamic secret's lease at once.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), SecretError> {
        let body = serde_json::json!({ "lease_id": lease_id });
        self.authenticated(|token| {
            self.request(reqwest::Method::PUT, "sys/leases/revoke", token)
                .json(&body)
        })
        .await?;
        Ok(())
    }

    fn request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.config.address))
            .header("X-Vault-Token", token);
        if let Some(ns) = &self.config.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        req
    }

    /// Sends a request with the current token; with AppRole, logs in first and once more if
    /// the token was refused (it may have expired).
    async fn authenticated(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SecretError> {
        for attempt in 0..2 {
            let token = self.token(attempt > 0).await?;
            let resp = build(&token)
                .send()
                .await
                .map_err(|e| self.error(format!("request failed: {}", without_url(&e))))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let retry = status == reqwest::StatusCode::FORBIDDEN
                && attempt == 0
                && matches!(self.config.auth, VaultAuth::AppRole { .. });
            if !retry {
                return Err(self.error(format!(
                    "{} {}",
                    status.as_u16(),
                    vault_errors(resp).await
                )));
            }
        }
        Err(self.error("permission denied after a fresh AppRole login"))
    }

    async fn token(&self, refresh: bool) -> Result<Zeroizing<String>, SecretError> {
        let mut cached = self.token.lock().await;
        if let (Some(token), false) = (cached.as_ref(), refresh) {
            return Ok(token.clone());
        }
        let token = match &self.config.auth {
            VaultAuth::Token {
                token_env,
                token_file,
            } => Zeroizing::new(read_credential("token", token_env, token_file)?),
            VaultAuth::AppRole {
                role_id,
                secret_id_env,
                secret_id_file,
                mount,
            } => {
                let secret_id = Zeroizing::new(read_credential(
                    "AppRole secret_id",
                    secret_id_env,
                    secret_id_file,
                )?);
                let resp = self
                    .http
                    .post(format!("{}/v1/auth/{mount}/login", self.config.address))
                    .json(&serde_json::json!({"role_id": role_id, "secret_id": secret_id.as_str()}))
                    .send()
                    .await
                    .map_err(|e| self.error(format!("AppRole login: {}", without_url(&e))))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(self.error(format!(
                        "AppRole login refused: {} {}",
                        status.as_u16(),
                        vault_errors(resp).await
                    )));
                }
                let login: LoginResponse = resp
                    .json()
                    .await
                    .map_err(|e| self.error(format!("AppRole login: unexpected response: {e}")))?;
                Zeroizing::new(login.auth.client_token)
            }
        };
        *cached = Some(token.clone());
        Ok(token)
    }
}

fn read_credential(
    what: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<String, SecretError> {
    let missing = |m: String| SecretError::Vault {
        address: String::from("(configuration)"),
        message: m,
    };
    match (env, file) {
        (Some(var), None) => std::env::var(var)
            .map(|t| t.trim().to_owned())
            .map_err(|_| missing(format!("{what}: environment variable {var} is not set"))),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| missing(format!("{what}: {}: {e}", path.display()))),
        _ => Err(missing(format!(
            "{what}: give exactly one of the environment variable or the file setting"
        ))),
    }
}

/// Vault's `{"errors": [...]}` text (never holds secret values), at most 300 characters.
async fn vault_errors(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let errors = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .map(|e| e.to_string())
        .unwrap_or_default();
    errors.chars().take(300).collect()
}

/// reqwest errors print the URL; ours is the configured address, so only the cause matters.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "");
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect ({msg})")
    } else {
        msg
    }
}
