//! The host side of ztee's controlled egress.
//!
//! A sandbox has no network device. When policy grants egress, the guest agent runs an HTTP proxy
//! on the guest's loopback and relays each connection over the authenticated agent channel to the
//! host, where [`EgressProxy::serve`] handles it as a proxy request and decides:
//!
//! 1. [`http`]: parse the proxy request (`CONNECT host:port` or an absolute-URI plain HTTP
//!    request), bounded in size;
//! 2. [`allowlist`]: the host name and port must match one of the sandbox's rules;
//! 3. [`resolver`] and [`address`]: the proxy resolves the name itself, refuses it when any
//!    answer is a private, loopback, link-local, CGNAT, unique-local or metadata address or one
//!    of the host's own interface addresses, and connects to the very address it checked (no
//!    second lookup: no DNS rebinding);
//! 4. [`sni`]: in a tunnel, the TLS ClientHello must name the same host as the CONNECT;
//! 5. plain HTTP requests (head and body) are scanned with ztee-dlp; card data does not leave;
//! 6. [`audit`]: every connection ends with one [`EgressRecord`].

pub mod address;
pub mod allowlist;
pub mod audit;
pub mod config;
pub mod http;
mod proxy;
pub mod resolver;
pub mod sni;
#[cfg(feature = "testing")]
pub mod testing;

pub use address::{
    classify, AddressClass, AddressPolicy, HostAddressError, HostAddresses, Refusal,
};
pub use allowlist::{Allowlist, EgressRule, Host, HostPattern};
pub use audit::{
    AuditUnavailable, Decision, EgressAudit, EgressLog, EgressRecord, EgressTracing, OpeningWrite,
};
pub use config::EgressConfig;
pub use proxy::{EgressGrant, EgressProxy};
pub use resolver::{DnsResolver, ResolveError, Resolver, SystemResolver};

/// Port of the proxy inside the guest (`127.0.0.1:3128`, the customary proxy port).
pub const GUEST_PROXY_PORT: u16 = 3128;

/// Environment a command gets when its sandbox has egress: the common spellings of the proxy
/// variables, so curl, Python, pip, npm and Go clients all use the proxy.
pub fn proxy_environment() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{GUEST_PROXY_PORT}");
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push((name.to_string(), url.clone()));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        env.push((name.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    env
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("invalid host {0:?}: expected a DNS name or an IP address")]
    InvalidHost(String),
    #[error("invalid egress target: {0}")]
    InvalidTarget(String),
    #[error("egress scanner: {0}")]
    Dlp(#[from] ztee_dlp::DlpError),
    #[error("egress proxy: {0}")]
    HostAddresses(#[from] HostAddressError),
}
