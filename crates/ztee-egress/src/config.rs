//! Operator settings of the egress proxy, shared by every sandbox.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Deserializable from the gateway's config file (`[egress]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Non-public networks the proxy may connect to anyway, e.g. `["10.20.0.0/16"]` for an
    /// internal mirror. Empty by default: only public addresses.
    pub allowed_networks: Vec<IpNet>,
    /// DNS servers to ask (`IP:PORT`); empty means the host's resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Seconds to wait for a DNS answer or a TCP connection.
    pub connect_timeout_secs: u64,
    /// Largest plain-HTTP request body the proxy buffers and scans; larger bodies are refused.
    pub max_body_bytes: usize,
    /// Seconds a connection may stay idle (no bytes either way) before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allowed_networks: Vec::new(),
            dns_servers: Vec::new(),
            connect_timeout_secs: 10,
            max_body_bytes: 1024 * 1024,
            idle_timeout_secs: 300,
        }
    }
}

impl EgressConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
}
