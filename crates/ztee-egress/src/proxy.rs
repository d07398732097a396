//! One relayed connection, from the proxy request to the audit record.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use ztee_dlp::{Entity, Scanner, ScannerConfig};

use crate::address::AddressPolicy;
use crate::allowlist::{Allowlist, Host};
use crate::audit::{Decision, EgressAudit, EgressRecord};
use crate::config::EgressConfig;
use crate::http::{self, PlainRequest, ProxyRequest, MAX_HEAD};
use crate::resolver::{DnsResolver, Resolver, SystemResolver};
use crate::sni;
use crate::EgressError;

/// How long a program may take to send its proxy request, or its ClientHello after CONNECT.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const RELAY_CHUNK: usize = 16 * 1024;

/// Entities that must not leave in a plain HTTP request: PAN and sensitive authentication data.
/// (Card expiry dates alone are too common in ordinary traffic to block on.)
const BLOCKED_ENTITIES: [Entity; 4] = [
    Entity::CreditCard,
    Entity::CardTrackData,
    Entity::CardVerificationCode,
    Entity::CardPinBlock,
];

/// The shared proxy: operator settings, resolver and scanner. One per process.
pub struct EgressProxy {
    config: EgressConfig,
    addresses: AddressPolicy,
    resolver: Arc<dyn Resolver>,
    scanner: Arc<Scanner>,
}

/// What one sandbox may reach and where its records go.
#[derive(Clone)]
pub struct EgressGrant {
    pub sandbox: String,
    pub allowlist: Allowlist,
    pub audit: Arc<dyn EgressAudit>,
}

/// A refusal: the status to answer with (none once a tunnel is established) and the reason.
struct Denial {
    status: Option<(u16, &'static str)>,
    reason: String,
}

impl Denial {
    fn http(status: u16, text: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status: Some((status, text)),
            reason: reason.into(),
        }
    }

    fn forbidden(reason: impl Into<String>) -> Self {
        Self::http(403, "Forbidden", reason)
    }

    fn in_tunnel(reason: impl Into<String>) -> Self {
        Self {
            status: None,
            reason: reason.into(),
        }
    }
}

impl EgressProxy {
    /// A proxy with the resolver `config` names and a scanner for card data.
    pub fn from_config(config: EgressConfig) -> Result<Self, EgressError> {
        let resolver: Arc<dyn Resolver> = if config.dns_servers.is_empty() {
            Arc::new(SystemResolver)
        } else {
            Arc::new(DnsResolver::new(
                &config.dns_servers,
                config.connect_timeout(),
            ))
        };
        Self::new(config, resolver)
    }

    /// A proxy that resolves names with `resolver` (tests point it at their own DNS server).
    pub fn new(config: EgressConfig, resolver: Arc<dyn Resolver>) -> Result<Self, EgressError> {
        let scanner = Scanner::new(ScannerConfig {
            entities: BLOCKED_ENTITIES.to_vec(),
            ..ScannerConfig::default()
        })?;
        let addresses = AddressPolicy::new(config.allowed_networks.clone());
        // Listed again at every connection; listing once here makes a host where that cannot
        // work fail at start rather than refuse every connection later.
        let own = addresses.host_addresses().list()?;
        tracing::debug!(target: "ztee::egress", addresses = own.len(), "the host's own addresses are refused");
        Ok(Self {
            addresses,
            config,
            resolver,
            scanner: Arc::new(scanner),
        })
    }

    pub fn config(&self) -> &EgressConfig {
        &self.config
    }

    /// Handles one connection from a sandbox program until it ends, then records it.
    pub async fn serve<S>(&self, grant: &EgressGrant, client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let started = Instant::now();
        let mut record = EgressRecord {
            sandbox: grant.sandbox.clone(),
            method: String::new(),
            host: String::new(),
            port: 0,
            resolved: None,
            rule: None,
            bytes_up: 0,
            bytes_down: 0,
            decision: Decision::Denied,
            reason: String::new(),
            duration_ms: 0,
        };
        let mut client = client;
        match self.handle(grant, &mut client, &mut record).await {
            Ok(ending) => {
                record.decision = Decision::Allowed;
                record.reason = ending;
            }
            Err(denial) => {
                record.decision = Decision::Denied;
                if let Some((code, text)) = denial.status {
                    let body = format!("ztee egress: {}\n", denial.reason);
                    let response = format!(
                        "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(response.as_bytes()).await;
                    let _ = client.shutdown().await;
                }
                record.reason = denial.reason;
            }
        }
        record.duration_ms = started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        grant.audit.record(&record);
    }

    async fn handle<S>(
        &self,
        grant: &EgressGrant,
        client: &mut S,
        record: &mut EgressRecord,
    ) -> Result<String, Denial>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = Vec::with_capacity(4096);
        let (request, head_len) = read_head(client, &mut buf).await?;
        let leftover = buf.split_off(head_len);
        match request {
            ProxyRequest::Connect { host, port } => {
                record.method = "CONNECT".into();
                self.admit(grant, &host, port, record)?;
                let upstream = self.connect(&host, port, record).await?;
                audit_opening(grant, record).await?;
                self.tunnel(client, upstream, &host, leftover, record).await
            }
            ProxyRequest::Plain(request) => {
                record.method = request.method.clone();
                self.admit(grant, &request.host, request.port, record)?;
                self.forward(grant, client, request, leftover, record).await
            }
        }
    }

    /// The allowlist check, by the name the client used.
    fn admit(
        &self,
        grant: &EgressGrant,
        host: &Host,
        port: u16,
        record: &mut EgressRecord,
    ) -> Result<(), Denial> {
        record.host = host.to_string();
        record.port = port;
        match grant.allowlist.allows(host, port) {
            Some(rule) => {
                record.rule = Some(rule.to_string());
                Ok(())
            }
            None => Err(Denial::forbidden(format!(
                "{host}:{port} is not on this sandbox's egress allowlist"
            ))),
        }
    }

    /// Resolves once, checks every answer, connects to a checked address.
    async fn connect(
        &self,
        host: &Host,
        port: u16,
        record: &mut EgressRecord,
    ) -> Result<TcpStream, Denial> {
        let addresses: Vec<IpAddr> = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                match tokio::time::timeout(
                    self.config.connect_timeout(),
                    self.resolver.resolve(name),
                )
                .await
                {
                    Ok(Ok(addresses)) => addresses,
                    Ok(Err(err)) => {
                        return Err(Denial::http(
                            502,
                            "Bad Gateway",
                            format!("cannot resolve {name}: {err}"),
                        ))
                    }
                    Err(_) => {
                        return Err(Denial::http(
                            504,
                            "Gateway Timeout",
                            format!("resolving {name} timed out"),
                        ))
                    }
                }
            }
        };
        if addresses.is_empty() {
            return Err(Denial::http(
                502,
                "Bad Gateway",
                format!("{host} has no addresses"),
            ));
        }
        // One forbidden answer refuses the name: mixing public and internal answers is how
        // rebinding attacks start.
        if let Err((ip, refusal)) = self.addresses.check_all(&addresses) {
            record.resolved = Some(ip);
            return Err(Denial::forbidden(format!(
                "{host} resolves to {ip}, {refusal}"
            )));
        }
        let mut last_error = String::new();
        for ip in addresses {
            record.resolved = Some(ip);
            match tokio::time::timeout(
                self.config.connect_timeout(),
                TcpStream::connect((ip, port)),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(err)) => last_error = err.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
        }
        Err(Denial::http(
            502,
            "Bad Gateway",
            format!("cannot connect to {host}:{port}: {last_error}"),
        ))
    }

    /// CONNECT: answer 200, check the ClientHello's SNI, then relay bytes both ways.
    async fn tunnel<S>(
        &self,
        client: &mut S,
        mut upstream: TcpStream,
        host: &Host,
        mut first: Vec<u8>,
        record: &mut EgressRecord,
    ) -> Result<String, Denial>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .map_err(|_| Denial::in_tunnel("the sandbox program went away"))?;
        let hello_len = read_client_hello(client, &mut first).await?;
        let sni = sni::server_name(&first[..hello_len])
            .map_err(|err| Denial::in_tunnel(err.to_string()))?;
        match (host, sni) {
            (Host::Name(name), Some(sni)) if sni == *name => {}
            (Host::Name(name), Some(sni)) => {
                let shown = Host::parse(&sni)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "an invalid name".into());
                return Err(Denial::in_tunnel(format!(
                    "TLS SNI {shown} does not match the CONNECT host {name}"
                )));
            }
            (Host::Name(name), None) => {
                return Err(Denial::in_tunnel(format!(
                    "TLS ClientHello without SNI for the named host {name}"
                )))
            }
            (Host::Ip(_), None) => {}
            (Host::Ip(ip), Some(_)) => {
                return Err(Denial::in_tunnel(format!(
                    "TLS SNI names a host, but the CONNECT target is the address {ip}"
                )))
            }
        }
        upstream
            .write_all(&first)
            .await
            .map_err(|err| Denial::in_tunnel(format!("upstream write failed: {err}")))?;
        record.bytes_up = first.len() as u64;
        let (up, down) = relay(client, upstream, self.config.idle_timeout()).await;
        record.bytes_up += up;
        record.bytes_down = down;
        Ok("tunnel closed".into())
    }

    /// Plain HTTP: read and scan the whole request, then send it and relay the response.
    async fn forward<S>(
        &self,
        grant: &EgressGrant,
        client: &mut S,
        request: PlainRequest,
        mut body: Vec<u8>,
        record: &mut EgressRecord,
    ) -> Result<String, Denial>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if request.content_length > self.config.max_body_bytes as u64 {
            return Err(Denial::http(
                413,
                "Content Too Large",
                format!(
                    "request body of {} bytes is larger than the {} bytes the proxy scans",
                    request.content_length, self.config.max_body_bytes
                ),
            ));
        }
        let length = request.content_length as usize;
        while body.len() < length {
            let mut chunk = vec![0u8; (length - body.len()).min(RELAY_CHUNK)];
            let n = match tokio::time::timeout(REQUEST_TIMEOUT, client.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => 0,
            };
            if n == 0 {
                return Err(Denial::http(
                    400,
                    "Bad Request",
                    "the request body ended before its Content-Length",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        // Anything after the body (a pipelined request) is not forwarded.
        body.truncate(length);
        let head = request.upstream_head();
        let blocked: Vec<&'static str> = [&head[..], &body[..]]
            .iter()
            .flat_map(|part| self.scanner.scan(&String::from_utf8_lossy(part)))
            .map(|finding| finding.entity_type.as_str())
            .collect();
        if !blocked.is_empty() {
            let mut kinds = blocked;
            kinds.sort_unstable();
            kinds.dedup();
            return Err(Denial::forbidden(format!(
                "card data ({}) in the request; blocked by DLP",
                kinds.join(", ")
            )));
        }
        let upstream = self.connect(&request.host, request.port, record).await?;
        audit_opening(grant, record).await?;
        let (read_half, mut write_half) = upstream.into_split();
        let sent = async {
            write_half.write_all(&head).await?;
            write_half.write_all(&body).await?;
            write_half.flush().await
        }
        .await;
        if let Err(err) = sent {
            return Err(Denial::http(
                502,
                "Bad Gateway",
                format!("upstream write failed: {err}"),
            ));
        }
        record.bytes_up = (head.len() + body.len()) as u64;
        let idle = self.config.idle_timeout();
        let mut read_half = read_half;
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            let n = match tokio::time::timeout(idle, read_half.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => break,
                Err(_) => return Ok("closed after the idle timeout".into()),
            };
            if n == 0 || client.write_all(&buf[..n]).await.is_err() {
                break;
            }
            record.bytes_down += n as u64;
        }
        let _ = client.shutdown().await;
        Ok("response relayed".into())
    }
}

/// Records that an admitted, connected connection opens; refuses it when that cannot be
/// recorded. The sandbox program learns only that the audit trail is unavailable.
async fn audit_opening(grant: &EgressGrant, record: &EgressRecord) -> Result<(), Denial> {
    let mut opening = record.clone();
    opening.decision = Decision::Allowed;
    opening.reason = "connection opened".into();
    grant.audit.opened(&opening).await.map_err(|err| {
        tracing::error!(
            target: "ztee::egress", sandbox = %record.sandbox, host = %record.host,
            port = record.port, error = %err, "refusing a connection the audit trail cannot record"
        );
        Denial::http(
            503,
            "Service Unavailable",
            "the audit trail cannot record this connection; it was refused",
        )
    })
}

async fn read_head<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(ProxyRequest, usize), Denial> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = vec![0u8; 4096];
    loop {
        match http::parse(buf) {
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) => {}
            Err(err) => {
                let (code, text) = err.status();
                return Err(Denial::http(code, text, err.to_string()));
            }
        }
        let room = (MAX_HEAD + 1).saturating_sub(buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => {
                return Err(Denial::http(
                    408,
                    "Request Timeout",
                    "no complete proxy request in time",
                ))
            }
        };
        if n == 0 {
            return Err(Denial::in_tunnel(
                "the connection closed before a complete proxy request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `first` holds the whole first TLS record; returns its length.
async fn read_client_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    first: &mut Vec<u8>,
) -> Result<usize, Denial> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = vec![0u8; 4096];
    loop {
        if first.len() >= sni::RECORD_HEADER {
            let len = sni::record_len(first).map_err(|e| Denial::in_tunnel(e.to_string()))?;
            if first.len() >= len {
                return Ok(len);
            }
        }
        let n = match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => return Err(Denial::in_tunnel("no TLS ClientHello in time")),
        };
        if n == 0 {
            return Err(Denial::in_tunnel(
                "the tunnel closed before a TLS ClientHello",
            ));
        }
        first.extend_from_slice(&chunk[..n]);
    }
}

/// Copies both ways until both directions ended, or nothing moved for `idle`. Returns the bytes
/// copied (client to upstream, upstream to client).
async fn relay<S>(client: &mut S, upstream: TcpStream, idle: Duration) -> (u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let clock = Activity {
        started,
        last: &last_activity,
        idle,
    };
    tokio::join!(
        copy_one(&mut client_read, &mut upstream_write, &up, &clock),
        copy_one(&mut upstream_read, &mut client_write, &down, &clock),
    );
    (up.into_inner(), down.into_inner())
}

/// When either direction of a relay last moved bytes.
struct Activity<'a> {
    started: Instant,
    last: &'a AtomicU64,
    idle: Duration,
}

impl Activity<'_> {
    fn touch(&self) {
        let now = self.started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle_for_long(&self) -> bool {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) >= self.idle
    }
}

async fn copy_one<R, W>(from: &mut R, to: &mut W, counter: &AtomicU64, activity: &Activity<'_>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        let n = match tokio::time::timeout(activity.idle, from.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            // Quiet here, but the other direction may be busy (a long download).
            Err(_) if !activity.idle_for_long() => continue,
            Err(_) => 0,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}
