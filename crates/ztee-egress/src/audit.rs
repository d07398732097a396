//! One record per relayed connection, allowed or not. Records hold destinations, sizes and
//! reasons, never payload bytes: a refused body with card data is reported as "card data in the
//! request", not quoted.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;

use serde::Serialize;

/// What the proxy decided for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
}

/// Everything known about one connection when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRecord {
    /// Sandbox the connection came from.
    pub sandbox: String,
    /// `CONNECT` for tunnels, otherwise the HTTP method of a plain request; empty when the
    /// request could not be parsed.
    pub method: String,
    /// Host as the client named it (lower case); empty when the request could not be parsed.
    pub host: String,
    pub port: u16,
    /// Address the proxy connected to (or refused).
    pub resolved: Option<IpAddr>,
    /// Allowlist rule that matched.
    pub rule: Option<String>,
    /// Bytes from the sandbox to the destination (after the proxy request itself).
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    pub decision: Decision,
    /// Why it was denied, or how an allowed connection ended.
    pub reason: String,
    pub duration_ms: u64,
}

/// The audit trail could not record that a connection opened; the connection is refused.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot record the connection: {0}")]
pub struct AuditUnavailable(pub String);

/// The pending write of an opening record.
pub type OpeningWrite<'a> = Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send + 'a>>;

/// Where records go: the gateway's audit trail, a log, a test's list.
pub trait EgressAudit: Send + Sync {
    /// Called when a connection is admitted and connected, before any byte is relayed. An error
    /// refuses the connection: what the audit trail cannot record does not leave. Sinks that
    /// only log accept every opening.
    fn opened<'a>(&'a self, _record: &'a EgressRecord) -> OpeningWrite<'a> {
        Box::pin(async { Ok(()) })
    }

    /// Called once when the connection has ended or was refused, with the totals.
    fn record(&self, record: &EgressRecord);
}

/// Logs every record with `tracing` and keeps them for a summary (the CLI prints one after a run).
#[derive(Debug, Default)]
pub struct EgressLog {
    records: Mutex<Vec<EgressRecord>>,
}

impl EgressLog {
    pub fn records(&self) -> Vec<EgressRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl EgressAudit for EgressLog {
    fn record(&self, record: &EgressRecord) {
        log_record(record);
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
    }
}

/// Logs every record with `tracing` (target `ztee::egress`) and keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct EgressTracing;

impl EgressAudit for EgressTracing {
    fn record(&self, record: &EgressRecord) {
        log_record(record);
    }
}

/// The structured log line every sink writes.
pub fn log_record(record: &EgressRecord) {
    let resolved = record.resolved.map(|ip| ip.to_string()).unwrap_or_default();
    match record.decision {
        Decision::Allowed => tracing::info!(
            target: "ztee::egress",
            sandbox = %record.sandbox, method = %record.method, host = %record.host,
            port = record.port, resolved = %resolved, bytes_up = record.bytes_up,
            bytes_down = record.bytes_down, reason = %record.reason, "egress allowed"
        ),
        Decision::Denied => tracing::warn!(
            target: "ztee::egress",
            sandbox = %record.sandbox, method = %record.method, host = %record.host,
            port = record.port, resolved = %resolved, reason = %record.reason, "egress denied"
        ),
    }
}
