//! What the gateway does before it knows who is calling.
//!
//! Every request first takes a token from its source address's bucket ([`SourceLimiter`]); over
//! the limit it is answered `429` with `Retry-After` before authentication, without touching the
//! audit trail. A request that then fails authentication is recorded per (address, reason) and
//! interval ([`AuthFailures`]): the first failure of an interval becomes an `auth.failure` event at
//! once, the rest are counted and recorded as one event when the interval ends. The event names
//! the route template (`/v1/sandboxes/{id}`), never the path the caller sent.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ztee_audit::{AuditEvent, DecisionKind, DecisionRecord, EventType, Outcome};

use crate::audit;
use crate::error::ActionError;
use crate::quota::source_key;
use crate::request_id::RequestId;
use crate::state::AppState;

/// Middleware: the per-source-address rate limit, before anything else looks at the request.
pub async fn layer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    if let Some(ip) = peer {
        if let Err(retry_after) = state.source_limiter.check(ip) {
            state.metrics.source_rate_limited();
            let q = &state.config.quotas;
            return ActionError::too_many_requests(
                format!(
                    "request rate limit of {}/s (burst {}) for this source address exceeded",
                    q.source_requests_per_second, q.source_burst
                ),
                retry_after,
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Routes recorded per aggregated event, at most.
const MAX_ROUTES: usize = 8;

struct Window {
    started: Instant,
    /// Failures after the first (which was recorded when it happened).
    counted: u64,
    routes: BTreeSet<String>,
}

/// A summary of failed authentications that is due to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `None`: more addresses failed than are tracked; their failures are counted together.
    pub origin_ip: Option<IpAddr>,
    pub reason: &'static str,
    pub count: u64,
    pub routes: Vec<String>,
}

/// Failed authentications per (source address, reason) and interval, in a bounded map.
pub struct AuthFailures {
    window: Duration,
    capacity: usize,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    windows: HashMap<(Option<IpAddr>, &'static str), Window>,
    /// Windows that ended while still in the map, waiting for [`AuthFailures::due`].
    ended: Vec<Summary>,
}

fn summary(key: (Option<IpAddr>, &'static str), window: Window) -> Option<Summary> {
    (window.counted > 0).then(|| Summary {
        origin_ip: key.0,
        reason: key.1,
        count: window.counted,
        routes: window.routes.into_iter().collect(),
    })
}

impl AuthFailures {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window: window.max(Duration::from_secs(1)),
            capacity: capacity.max(16),
            state: Mutex::new(Pending::default()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Notes one failure. True when it opens an interval and must be recorded now; false when it
    /// was counted into the interval's summary.
    pub fn note(&self, ip: Option<IpAddr>, reason: &'static str, route: &str) -> bool {
        let now = Instant::now();
        let Ok(mut pending) = self.state.lock() else {
            return true;
        };
        let mut key = (ip.map(source_key), reason);
        if !pending.windows.contains_key(&key) && pending.windows.len() >= self.capacity {
            key = (None, reason);
        }
        if let Some(window) = pending.windows.get(&key) {
            if now.duration_since(window.started) >= self.window {
                if let Some(window) = pending.windows.remove(&key) {
                    if let Some(s) = summary(key, window) {
                        pending.ended.push(s);
                    }
                }
            }
        }
        match pending.windows.get_mut(&key) {
            Some(window) => {
                window.counted += 1;
                if window.routes.len() < MAX_ROUTES {
                    window.routes.insert(route.to_owned());
                }
                false
            }
            None => {
                pending.windows.insert(
                    key,
                    Window {
                        started: now,
                        counted: 0,
                        routes: BTreeSet::new(),
                    },
                );
                true
            }
        }
    }

    /// Takes the summaries of intervals that have ended (all of them with `all`, at shutdown).
    pub fn due(&self, all: bool) -> Vec<Summary> {
        let now = Instant::now();
        let Ok(mut pending) = self.state.lock() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut pending.ended);
        let ended: Vec<_> = pending
            .windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.started) >= self.window)
            .map(|(k, _)| *k)
            .collect();
        for key in ended {
            if let Some(window) = pending.windows.remove(&key) {
                out.extend(summary(key, window));
            }
        }
        out
    }
}

fn failure_event(
    origin_ip: Option<IpAddr>,
    reason: &str,
    count: u64,
    window: Duration,
) -> AuditEvent {
    let mut event = AuditEvent::new(EventType::AuthFailure, Outcome::Denied, audit::anonymous())
        .with_decision(DecisionRecord {
            decision: DecisionKind::Deny,
            risk: if count > 1 { "MEDIUM" } else { "LOW" }.into(),
            rule_ids: vec![format!("auth.{reason}")],
            reasons: vec![
                format!("count={count}"),
                format!("window_s={}", window.as_secs()),
            ],
        });
    if let Some(ip) = origin_ip {
        event = event.with_origin_ip(ip);
    }
    event
}

/// Records a failed authentication: at once when it opens an interval for its (address,
/// reason), else counted for the interval's summary. `route` is the route template.
pub async fn auth_failed(
    state: &AppState,
    request_id: &RequestId,
    origin_ip: Option<IpAddr>,
    reason: &'static str,
    route: &str,
) {
    if !state.auth_failures.note(origin_ip, reason, route) {
        return;
    }
    let mut event = failure_event(origin_ip, reason, 1, state.auth_failures.window());
    if let Ok(e) = event.clone().with_request_id(request_id.as_str()) {
        event = e;
    }
    if let Ok(e) = event.clone().with_resource(route) {
        event = e;
    }
    // A failed login that cannot be recorded is still refused; the refusal is the safe outcome,
    // so the audit error is logged rather than turned into a 503.
    if let Err(e) = state.pipeline.audit.append(event).await {
        tracing::error!(error = %e, "could not record an authentication failure");
    }
}

/// Records the summaries that are due.
pub async fn flush(state: &AppState, all: bool) {
    let window = state.auth_failures.window();
    for s in state.auth_failures.due(all) {
        let mut event = failure_event(s.origin_ip, s.reason, s.count, window);
        if !s.routes.is_empty() {
            if let Ok(e) = event.clone().with_resource(s.routes.join(" ")) {
                event = e;
            }
        }
        if let Err(e) = state.pipeline.audit.append(event).await {
            tracing::error!(error = %e, "could not record a summary of authentication failures");
        }
    }
}

/// Records due summaries every half interval, for as long as the server's state lives.
pub fn spawn_flusher(state: Weak<AppState>, window: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((window / 2).max(Duration::from_millis(500)));
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            flush(&state, false).await;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_recorded_once_per_address_reason_and_interval_then_summed() {
        let f = AuthFailures::new(Duration::from_secs(60), 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(f.note(Some(a), "missing_credentials", "/v1/sandboxes/{id}"));
        for _ in 0..199 {
            assert!(!f.note(Some(a), "missing_credentials", "/v1/sandboxes/{id}"));
        }
        assert!(f.note(Some(a), "unknown_api_key", "/v1/run"));
        assert!(f.note(Some(b), "missing_credentials", "/v1/run"));
        assert!(f.due(false).is_empty());
        let mut due = f.due(true);
        due.sort_by_key(|s| s.count);
        assert_eq!(
            due,
            vec![Summary {
                origin_ip: Some(a),
                reason: "missing_credentials",
                count: 199,
                routes: vec!["/v1/sandboxes/{id}".into()],
            }]
        );
        // A new interval starts with a recorded failure again.
        assert!(f.note(Some(a), "missing_credentials", "/v1/run"));
    }

    #[test]
    fn addresses_beyond_the_bound_are_counted_together() {
        let f = AuthFailures::new(Duration::from_secs(60), 16);
        let mut recorded = 0;
        for i in 0..1000u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            recorded += u32::from(f.note(Some(ip), "missing_credentials", "/v1/run"));
        }
        // 16 tracked addresses plus one shared window for the rest.
        assert_eq!(recorded, 17);
        let due = f.due(true);
        let shared = due.iter().find(|s| s.origin_ip.is_none()).unwrap();
        assert_eq!(shared.count, 1000 - 17);
    }
}
