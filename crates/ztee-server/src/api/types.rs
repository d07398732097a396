//! Request and response bodies of the REST API. Unknown fields are refused so a typo is an
//! error, not a silently ignored setting. The bodies that are actions are the core's own
//! request types, re-exported here.

use serde::Deserialize;

pub use crate::action::request::{CreateSandbox, OneShotRun, RunCommand};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub request_id: Option<String>,
    pub principal: Option<String>,
    /// RFC 3339 time, e.g. `2026-01-31T00:00:00Z`.
    pub since: Option<String>,
    /// `sandbox.exec`, `run`, `auth.failure`, ...
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Most recent events to return (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Admins only: another tenant's events.
    pub tenant: Option<String>,
}
