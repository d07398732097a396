//! `[quotas]`: request rates per principal and per source address, and what one tenant may hold.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sustained requests per second each principal may make.
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// Requests a principal may make in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Sandboxes one tenant may hold at once (one-shot runs count while they run).
    #[serde(default = "default_max_sandboxes")]
    pub max_sandboxes_per_tenant: u32,
    /// Guest memory one tenant may hold at once, in MiB.
    #[serde(default = "default_max_memory")]
    pub max_memory_mib_per_tenant: u64,
    /// Sustained requests per second one source address (an IPv6 /64) may make, checked before
    /// authentication.
    #[serde(default = "default_source_rate")]
    pub source_requests_per_second: f64,
    /// Requests one source address may make in a burst above its sustained rate.
    #[serde(default = "default_source_burst")]
    pub source_burst: u32,
    /// Source addresses tracked at once; beyond it the least recently seen are forgotten.
    #[serde(default = "default_max_sources")]
    pub max_tracked_sources: usize,
    /// Failed authentications from one address for one reason are recorded as one audit event
    /// per this many seconds, with their count.
    #[serde(default = "default_auth_failure_window")]
    pub auth_failure_window_s: u64,
    /// File transfers (sandbox file downloads and uploads) one principal may have in flight;
    /// one more is refused with 429 `transfer_limit`.
    #[serde(default = "default_transfers_per_principal")]
    pub max_transfers_per_principal: usize,
    /// File transfers in flight on this gateway, all principals together.
    #[serde(default = "default_transfers")]
    pub max_transfers: usize,
}

fn default_rate() -> f64 {
    20.0
}
fn default_burst() -> u32 {
    40
}
fn default_max_sandboxes() -> u32 {
    8
}
fn default_max_memory() -> u64 {
    2048
}
fn default_source_rate() -> f64 {
    50.0
}
fn default_source_burst() -> u32 {
    100
}
fn default_max_sources() -> usize {
    65_536
}
fn default_auth_failure_window() -> u64 {
    10
}
fn default_transfers_per_principal() -> usize {
    4
}
fn default_transfers() -> usize {
    32
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            requests_per_second: default_rate(),
            burst: default_burst(),
            max_sandboxes_per_tenant: default_max_sandboxes(),
            max_memory_mib_per_tenant: default_max_memory(),
            source_requests_per_second: default_source_rate(),
            source_burst: default_source_burst(),
            max_tracked_sources: default_max_sources(),
            auth_failure_window_s: default_auth_failure_window(),
            max_transfers_per_principal: default_transfers_per_principal(),
            max_transfers: default_transfers(),
        }
    }
}
