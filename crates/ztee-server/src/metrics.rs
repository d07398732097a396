//! Prometheus metrics, served at `/metrics` in the text exposition format to callers with
//! `metrics:read`.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedactionLabels {
    entity: String,
    direction: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<HttpLabels, Counter>,
    request_seconds: Histogram,
    auth_failures: Family<ReasonLabels, Counter>,
    rate_limited: Counter,
    source_rate_limited: Counter,
    decisions: Family<DecisionLabels, Counter>,
    redactions: Family<RedactionLabels, Counter>,
    pub sandboxes_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ztee");
        let requests = Family::<HttpLabels, Counter>::default();
        let request_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        let rate_limited = Counter::default();
        let source_rate_limited = Counter::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let redactions = Family::<RedactionLabels, Counter>::default();
        let sandboxes_active = Gauge::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (streams: until headers)",
            request_seconds.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused authentications by reason",
            auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-principal rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "source_rate_limited",
            "Requests refused by the per-source-address rate limit, before authentication",
            source_rate_limited.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions by outcome",
            decisions.clone(),
        );
        registry.register(
            "dlp_redactions",
            "Values redacted by entity and direction",
            redactions.clone(),
        );
        registry.register(
            "sandboxes_active",
            "Sandboxes currently running",
            sandboxes_active.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            request_seconds,
            auth_failures,
            rate_limited,
            source_rate_limited,
            decisions,
            redactions,
            sandboxes_active,
        }
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn source_rate_limited(&self) {
        self.source_rate_limited.inc();
    }

    pub fn decision(&self, decision: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: decision.to_owned(),
            })
            .inc();
    }

    pub fn redactions(&self, direction: &str, counts: &crate::dlp::RedactionCounts) {
        for (entity, n) in counts {
            self.redactions
                .get_or_create(&RedactionLabels {
                    entity: entity.clone(),
                    direction: direction.to_owned(),
                })
                .inc_by(*n);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                tracing::error!(error = %e, "encoding metrics");
            }
        }
        text
    }
}

/// Middleware counting requests by route template (never the raw path, which holds ids).
pub async fn layer(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .request_seconds
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
