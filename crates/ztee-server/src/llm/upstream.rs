//! The upstream leg: one HTTP client, provider API keys loaded at start, bounded bodies.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;

use super::{Dialect, ProviderConfig, ProviderHeaders};

pub struct Upstream {
    /// Built on first use: loading the host's root certificates costs tens of milliseconds,
    /// which a host that never calls a provider (the command line) should not pay.
    client: std::sync::OnceLock<reqwest::Client>,
    /// Provider name -> API key (never logged).
    keys: BTreeMap<String, String>,
}

pub enum UpstreamReply {
    /// A complete body: a non-streaming answer, or an error the provider answered with.
    Whole { status: u16, body: Bytes },
    /// A successful streamed answer, read chunk by chunk by the caller.
    Stream {
        status: u16,
        response: reqwest::Response,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not reach it ({0})")]
    Connect(String),
    #[error("its answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading its answer failed ({0})")]
    Read(String),
}

impl Upstream {
    pub fn new(providers: &[ProviderConfig]) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for p in providers {
            let key = if let Some(var) = &p.api_key_env {
                Some(std::env::var(var).map_err(|_| {
                    format!(
                        "provider {:?}: environment variable {var} (api_key_env) is not set",
                        p.name
                    )
                })?)
            } else if let Some(path) = &p.api_key_file {
                Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            format!(
                                "provider {:?}: api_key_file {}: {e}",
                                p.name,
                                path.display()
                            )
                        })?
                        .trim_end()
                        .to_owned(),
                )
            } else {
                None
            };
            if let Some(key) = key {
                keys.insert(p.name.clone(), key);
            }
        }
        Ok(Self {
            client: std::sync::OnceLock::new(),
            keys,
        })
    }

    fn client(&self) -> Result<&reqwest::Client, UpstreamError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Connect(format!("building the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    pub async fn send<D: Dialect>(
        &self,
        provider: &ProviderConfig,
        body: Vec<u8>,
        headers: &ProviderHeaders,
        max_response_bytes: usize,
    ) -> Result<UpstreamReply, UpstreamError> {
        let url = format!(
            "{}{}",
            provider.base_url.trim_end_matches('/'),
            D::upstream_path()
        );
        let request = self
            .client()?
            .post(url)
            .timeout(Duration::from_secs(provider.timeout_s))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let request = D::upstream_request(
            request,
            self.keys.get(&provider.name).map(String::as_str),
            headers,
        );
        // Connection errors name the URL, never a key: the key is in a header.
        let mut response = request
            .send()
            .await
            .map_err(|e| UpstreamError::Connect(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_stream && response.status().is_success() {
            return Ok(UpstreamReply::Stream { status, response });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::Read(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > max_response_bytes {
                return Err(UpstreamError::TooLarge(max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamReply::Whole {
            status,
            body: Bytes::from(body),
        })
    }
}
