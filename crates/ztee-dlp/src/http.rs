//! The Presidio-compatible REST API, as an axum [`Router`] that `ztee dlp serve` serves and the
//! gateway mounts: existing Presidio clients (analyzer and anonymizer) can point at it unchanged.
//!
//! | Presidio endpoint | here |
//! |---|---|
//! | `POST /analyze` `{text, language, entities?, score_threshold?, allow_list?}` | same; findings in Presidio's shape |
//! | `POST /anonymize` `{text, analyzer_results, anonymizers}` | same; operators `replace`, `redact`, `mask`, `hash`, `encrypt`, `keep`, plus `tokenize` and `mask` with `"mode": "pci"` |
//! | `POST /deanonymize` `{text, anonymizer_results, deanonymizers}` | `decrypt` |
//! | `GET /supportedentities`, `GET /recognizers`, `GET /health` | same |
//!
//! Errors are JSON `{"error": "..."}` with a 4xx status for bad requests. Request texts are never
//! logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::crypto::{EncryptionKey, KeyedHasher};
use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::Finding;
use crate::operators::{anonymize, deanonymize, MaskStyle, Operator, Operators};
use crate::scanner::Scanner;

/// Largest request body accepted, in bytes.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// What the API serves with. Keys come from the operator's configuration, never from logs.
pub struct DlpState {
    pub scanner: Arc<Scanner>,
    /// Key of the `hash` operator (keyed HMAC-SHA-256); without it `hash` is refused.
    pub hash_key: Option<KeyedHasher>,
    /// Default key of `encrypt`/`decrypt` when a request gives none.
    pub encryption_key: Option<EncryptionKey>,
    pub max_body: usize,
}

impl DlpState {
    pub fn new(scanner: Arc<Scanner>) -> DlpState {
        DlpState {
            scanner,
            hash_key: None,
            encryption_key: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

pub fn router(state: Arc<DlpState>) -> Router {
    let limit = state.max_body;
    Router::new()
        .route("/analyze", post(analyze))
        .route("/anonymize", post(anonymize_handler))
        .route("/deanonymize", post(deanonymize_handler))
        .route("/supportedentities", get(supported_entities))
        .route("/recognizers", get(recognizers))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A request failure: status and a message that names what was wrong.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<DlpError> for ApiError {
    fn from(e: DlpError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// A request body, or why it could not be read (too large, broken connection) as a JSON error.
type Body = Result<Bytes, BytesRejection>;

/// Parses a JSON body ourselves so malformed input gets a JSON error naming line and column.
fn parse_body<T: DeserializeOwned>(body: &Body) -> Result<T, ApiError> {
    let body = body.as_ref().map_err(|rejection| ApiError {
        status: rejection.status(),
        message: rejection.body_text(),
    })?;
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid request body at line {}, column {}: {}",
            e.line(),
            e.column(),
            e
        ))
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the scan worker failed".to_string(),
    })?
}

#[derive(Deserialize)]
struct AnalyzeRequest {
    text: String,
    language: String,
    #[serde(default)]
    entities: Option<Vec<String>>,
    #[serde(default)]
    score_threshold: Option<f64>,
    #[serde(default)]
    allow_list: Option<Vec<String>>,
    #[serde(default)]
    ad_hoc_recognizers: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    correlation_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    return_decision_process: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    context: Option<Vec<String>>,
}

#[derive(Serialize)]
struct RecognizerMetadata {
    recognizer_name: String,
    recognizer_identifier: String,
}

#[derive(Serialize)]
struct AnalyzerResult {
    entity_type: Entity,
    start: usize,
    end: usize,
    score: f64,
    analysis_explanation: Option<Value>,
    recognition_metadata: RecognizerMetadata,
}

fn parse_entities(names: &[String]) -> Result<Vec<Entity>, ApiError> {
    names
        .iter()
        .map(|n| n.parse::<Entity>().map_err(ApiError::from))
        .collect()
}

async fn analyze(State(state): State<Arc<DlpState>>, body: Body) -> Result<Response, ApiError> {
    let req: AnalyzeRequest = parse_body(&body)?;
    if req.language.trim().is_empty() {
        return Err(ApiError::bad_request("`language` must not be empty"));
    }
    if req
        .ad_hoc_recognizers
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::bad_request(
            "`ad_hoc_recognizers` is not supported: ztee's recognizers are built in",
        ));
    }
    let entities = match &req.entities {
        Some(list) if !list.is_empty() => Some(parse_entities(list)?),
        _ => None,
    };
    let results = blocking(move || {
        let findings =
            state
                .scanner
                .scan_with(&req.text, entities.as_deref(), req.score_threshold)?;
        let allow = req.allow_list.unwrap_or_default();
        Ok(findings
            .into_iter()
            .filter(|f| {
                allow.is_empty()
                    || !allow
                        .iter()
                        .any(|a| a == &req.text[f.byte_start..f.byte_end])
            })
            .map(|f| AnalyzerResult {
                entity_type: f.entity_type,
                start: f.start,
                end: f.end,
                score: f.score,
                analysis_explanation: None,
                recognition_metadata: RecognizerMetadata {
                    recognizer_name: f.rule_id.clone(),
                    recognizer_identifier: f.rule_id,
                },
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(results).into_response())
}

#[derive(Deserialize)]
struct AnalyzerResultIn {
    start: usize,
    end: usize,
    entity_type: String,
    #[serde(default = "one")]
    score: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
struct AnonymizeRequest {
    text: String,
    #[serde(default)]
    analyzer_results: Vec<AnalyzerResultIn>,
    #[serde(default)]
    anonymizers: BTreeMap<String, OperatorConfig>,
}

/// Presidio's operator configuration object.
#[derive(Deserialize)]
struct OperatorConfig {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    new_value: Option<String>,
    #[serde(default)]
    masking_char: Option<String>,
    #[serde(default)]
    chars_to_mask: Option<usize>,
    #[serde(default)]
    from_end: Option<bool>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    hash_type: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

fn build_operator(
    name: &str,
    cfg: &OperatorConfig,
    operators: &mut Operators,
) -> Result<Operator, ApiError> {
    let at = |msg: String| ApiError::bad_request(format!("anonymizers.{name}: {msg}"));
    Ok(match cfg.kind.as_str() {
        "replace" => Operator::Replace {
            new_value: cfg.new_value.clone(),
        },
        "redact" => Operator::Redact,
        "keep" => Operator::Keep,
        "tokenize" => Operator::Tokenize,
        "mask" => {
            if cfg.mode.as_deref() == Some("pci") {
                Operator::Mask(MaskStyle::Pci)
            } else if let Some(mode) = &cfg.mode {
                return Err(at(format!("unknown mask mode `{mode}` (supported: pci)")));
            } else {
                let masking_char = cfg.masking_char.as_deref().unwrap_or("*");
                let mut chars = masking_char.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return Err(at("`masking_char` must be exactly one character".into()));
                };
                let chars_to_mask = cfg
                    .chars_to_mask
                    .ok_or_else(|| at("`chars_to_mask` is required for mask".into()))?;
                Operator::Mask(MaskStyle::Chars {
                    masking_char: c,
                    chars_to_mask,
                    from_end: cfg.from_end.unwrap_or(false),
                })
            }
        }
        "hash" => {
            if let Some(t) = &cfg.hash_type {
                if t != "sha256" {
                    return Err(at(format!(
                        "hash_type `{t}` is not supported: hashes are keyed HMAC-SHA-256 (sha256)"
                    )));
                }
            }
            if operators.hash_key.is_none() {
                return Err(at(
                    "hash needs a hash key configured on the server (PCI DSS 3.5.1.1: hashes of PANs must be keyed)".into(),
                ));
            }
            Operator::Hash
        }
        "encrypt" => {
            if let Some(key) = &cfg.key {
                operators.encryption_key = Some(EncryptionKey::new(key.as_bytes())?);
            }
            if operators.encryption_key.is_none() {
                return Err(at("encrypt needs a `key` (16 or 32 characters)".into()));
            }
            Operator::Encrypt
        }
        other => {
            return Err(at(format!(
                "unknown operator type `{other}` (supported: replace, redact, mask, hash, encrypt, keep, tokenize)"
            )))
        }
    })
}

/// Char offsets (Presidio's) to a Finding with byte offsets, or a 400 naming the bad result.
fn to_finding(
    text: &str,
    char_to_byte: &[usize],
    index: usize,
    r: &AnalyzerResultIn,
) -> Result<Finding, ApiError> {
    let entity: Entity = r
        .entity_type
        .parse()
        .map_err(|e: DlpError| ApiError::bad_request(format!("analyzer_results[{index}]: {e}")))?;
    let (Some(&bs), Some(&be)) = (char_to_byte.get(r.start), char_to_byte.get(r.end)) else {
        return Err(ApiError::bad_request(format!(
            "analyzer_results[{index}]: {}..{} is outside the text ({} characters)",
            r.start,
            r.end,
            char_to_byte.len() - 1
        )));
    };
    if r.start >= r.end || bs > text.len() {
        return Err(ApiError::bad_request(format!(
            "analyzer_results[{index}]: start {} must be before end {}",
            r.start, r.end
        )));
    }
    Ok(Finding {
        entity_type: entity,
        start: r.start,
        end: r.end,
        byte_start: bs,
        byte_end: be,
        score: r.score,
        rule_id: "request".to_string(),
    })
}

fn char_to_byte_table(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect()
}

async fn anonymize_handler(
    State(state): State<Arc<DlpState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AnonymizeRequest = parse_body(&body)?;
    let mut operators = Operators {
        hash_key: state.hash_key.clone(),
        encryption_key: state.encryption_key.clone(),
        ..Operators::default()
    };
    for (name, cfg) in &req.anonymizers {
        let op = build_operator(name, cfg, &mut operators)?;
        if name == "DEFAULT" {
            operators.default = op;
        } else {
            let entity: Entity = name
                .parse()
                .map_err(|e: DlpError| ApiError::bad_request(format!("anonymizers: {e}")))?;
            operators.per_entity.insert(entity, op);
        }
    }
    let table = char_to_byte_table(&req.text);
    let findings = req
        .analyzer_results
        .iter()
        .enumerate()
        .map(|(i, r)| to_finding(&req.text, &table, i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let out = blocking(move || Ok(anonymize(&req.text, &findings, &operators)?)).await?;
    Ok(Json(json!({ "text": out.text, "items": out.items })).into_response())
}

#[derive(Deserialize)]
struct DeanonymizeRequest {
    text: String,
    #[serde(default)]
    anonymizer_results: Vec<AnalyzerResultIn>,
    #[serde(default)]
    deanonymizers: BTreeMap<String, OperatorConfig>,
}

async fn deanonymize_handler(
    State(state): State<Arc<DlpState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: DeanonymizeRequest = parse_body(&body)?;
    let mut key = state.encryption_key.clone();
    for (name, cfg) in &req.deanonymizers {
        if cfg.kind != "decrypt" {
            return Err(ApiError::bad_request(format!(
                "deanonymizers.{name}: unknown type `{}` (supported: decrypt)",
                cfg.kind
            )));
        }
        if let Some(k) = &cfg.key {
            key = Some(EncryptionKey::new(k.as_bytes())?);
        }
    }
    let key = key.ok_or_else(|| ApiError::bad_request("decrypt needs a `key`"))?;
    let table = char_to_byte_table(&req.text);
    let mut spans = Vec::new();
    let mut items = Vec::new();
    for (i, r) in req.anonymizer_results.iter().enumerate() {
        let f = to_finding(&req.text, &table, i, r)?;
        spans.push((f.start, f.end));
        items.push(json!({"entity_type": f.entity_type, "operator": "decrypt"}));
    }
    let text = deanonymize(&req.text, &spans, &key)?;
    Ok(Json(json!({ "text": text, "items": items })).into_response())
}

async fn supported_entities(State(state): State<Arc<DlpState>>) -> Json<Vec<&'static str>> {
    let _ = &state;
    Json(Entity::ALL.iter().map(|e| e.as_str()).collect())
}

async fn recognizers() -> Json<Vec<&'static str>> {
    Json(vec![
        "CreditCardRecognizer",
        "CardTrackDataRecognizer",
        "CardVerificationCodeRecognizer",
        "CardExpiryRecognizer",
        "CardPinBlockRecognizer",
        "IbanRecognizer",
        "UsSsnRecognizer",
        "EmailRecognizer",
        "PhoneRecognizer",
        "UsBankRecognizer",
        "AbaRoutingRecognizer",
        "IpRecognizer",
        "SecretRecognizer",
    ])
}

async fn health() -> &'static str {
    "ztee DLP service is up"
}

/// Serves the API on `addr` until `shutdown` completes. For callers that own no server of their
/// own (`ztee dlp serve`); the gateway mounts [`router`] instead.
pub async fn serve(
    addr: std::net::SocketAddr,
    state: Arc<DlpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "DLP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
