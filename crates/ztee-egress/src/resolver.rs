//! Name resolution, done by the proxy itself: the addresses it checks are the addresses it
//! connects to, so a name that answers differently the second time (DNS rebinding) gains nothing.
//!
//! [`Resolver`] is a trait so the operator (or a test) can choose the DNS servers:
//! [`SystemResolver`] asks the host's resolver (getaddrinfo), [`DnsResolver`] asks given DNS
//! servers directly over UDP/TCP, without the hosts file and without a cache.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

/// Why a name did not resolve. Holds no more than the resolver's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send + 'a>>;

/// Turns a host name into every address it currently has.
pub trait Resolver: Send + Sync {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// The host's own resolver (`/etc/resolv.conf`, `/etc/hosts`, nsswitch) through getaddrinfo.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, 0))
                .await
                .map_err(|e| ResolveError(e.to_string()))?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Asks the given DNS servers directly (UDP, TCP on truncation); no hosts file, no cache.
pub struct DnsResolver {
    inner: TokioResolver,
}

impl DnsResolver {
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        let mut config = ResolverConfig::new();
        for server in servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = timeout;
        options.attempts = 1;
        options.ndots = 0;
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
        Self { inner }
    }
}

impl Resolver for DnsResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            // A trailing dot makes the name absolute: no search domains are tried.
            let absolute = format!("{name}.");
            let lookup = self
                .inner
                .lookup_ip(absolute.as_str())
                .await
                .map_err(|e| ResolveError(e.to_string()))?;
            Ok(lookup.iter().collect())
        })
    }
}
