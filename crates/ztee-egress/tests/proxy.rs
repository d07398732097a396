//! The host-side proxy against real servers on loopback: a scripted DNS server, HTTP and HTTPS
//! origins, and a real TLS client through CONNECT. The sandbox side of each connection is an
//! in-memory pipe here; the VM tests in ztee-vm run the same checks from inside a microVM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use ztee_egress::testing::{Origin, TestDns};
use ztee_egress::{
    Allowlist, AuditUnavailable, Decision, DnsResolver, EgressAudit, EgressConfig, EgressGrant,
    EgressLog, EgressProxy, EgressRecord, OpeningWrite,
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOPBACK_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Setup {
    proxy: Arc<EgressProxy>,
    grant: EgressGrant,
    log: Arc<EgressLog>,
    dns: TestDns,
}

/// A proxy that resolves through `dns` and may reach 127.0.0.1 (only), with `rules`.
async fn setup(script: Vec<(&str, Vec<Vec<Ipv4Addr>>)>, rules: &[String]) -> Setup {
    setup_with_networks(script, rules, &[]).await
}

/// Like [`setup`], with `networks` allowed besides 127.0.0.1.
async fn setup_with_networks(
    script: Vec<(&str, Vec<Vec<Ipv4Addr>>)>,
    rules: &[String],
    networks: &[IpNet],
) -> Setup {
    let dns = TestDns::start(script).await;
    let mut allowed_networks: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
    allowed_networks.extend_from_slice(networks);
    let config = EgressConfig {
        allowed_networks,
        connect_timeout_secs: 5,
        ..EgressConfig::default()
    };
    let resolver = Arc::new(DnsResolver::new(&[dns.addr], Duration::from_secs(5)));
    let proxy = Arc::new(EgressProxy::new(config, resolver).unwrap());
    let log = Arc::new(EgressLog::default());
    let grant = EgressGrant {
        sandbox: "sbx-test".into(),
        allowlist: Allowlist::new(rules.iter().map(|r| r.parse().unwrap()).collect()),
        audit: log.clone(),
    };
    Setup {
        proxy,
        grant,
        log,
        dns,
    }
}

impl Setup {
    /// A new connection to the proxy, served in the background.
    fn connect(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let proxy = self.proxy.clone();
        let grant = self.grant.clone();
        tokio::spawn(async move { proxy.serve(&grant, server).await });
        client
    }

    /// Sends `request` and returns everything the proxy answered until it closed.
    async fn exchange(&self, request: &str) -> String {
        let mut client = self.connect();
        client.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The `n`th record (from 1), once it is written.
    async fn nth_record(&self, n: usize) -> EgressRecord {
        for _ in 0..500 {
            if let Some(record) = self.log.records().get(n - 1) {
                return record.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no audit record number {n}")
    }

    async fn last_record(&self) -> EgressRecord {
        for _ in 0..500 {
            if let Some(record) = self.log.records().last() {
                return record.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no audit record")
    }
}

fn get(host: &str, port: u16, path: &str) -> String {
    format!("GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n")
}

#[tokio::test]
async fn allowed_plain_http_reaches_the_origin_and_is_audited() {
    let origin = Origin::http(LOOPBACK, 0, "hello from origin").await;
    let port = origin.addr.port();
    let s = setup(
        vec![("api.test", vec![vec![Ipv4Addr::LOCALHOST]])],
        &[format!("api.test:{port}")],
    )
    .await;
    let response = s.exchange(&get("api.test", port, "/v1/x?y=1")).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hello from origin"), "{response}");
    let received = origin.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].head.starts_with("GET /v1/x?y=1 HTTP/1.1\r\n"));
    assert!(received[0]
        .head
        .contains(&format!("Host: api.test:{port}\r\n")));
    let record = s.last_record().await;
    assert_eq!(record.decision, Decision::Allowed);
    assert_eq!(record.host, "api.test");
    assert_eq!(record.port, port);
    assert_eq!(record.resolved, Some(LOOPBACK));
    assert_eq!(
        record.rule.as_deref(),
        Some(format!("api.test:{port}").as_str())
    );
    assert!(record.bytes_up > 0 && record.bytes_down as usize == response.len());
}

#[tokio::test]
async fn hosts_and_ports_off_the_list_are_refused_before_any_lookup() {
    let origin = Origin::http(LOOPBACK, 0, "x").await;
    let port = origin.addr.port();
    let s = setup(
        vec![
            ("api.test", vec![vec![Ipv4Addr::LOCALHOST]]),
            ("other.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ],
        &[format!("*.svc.test:{port}"), format!("api.test:{port}")],
    )
    .await;
    let response = s.exchange(&get("other.test", port, "/")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("not on this sandbox's egress allowlist"));
    // CONNECT to an allowed name on another port.
    let response = s
        .exchange("CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    // The bare domain of a wildcard rule.
    let response = s.exchange(&get("svc.test", port, "/")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(s.dns.queries("other.test"), 0);
    assert_eq!(origin.connections(), 0);
    let records = s.log.records();
    assert_eq!(records.len(), 3);
    assert!(records
        .iter()
        .all(|r| r.decision == Decision::Denied && r.resolved.is_none()));
}

#[tokio::test]
async fn forbidden_addresses_are_refused_unless_configured() {
    let s = setup(
        vec![
            ("internal.test", vec![vec![Ipv4Addr::new(127, 0, 0, 2)]]),
            (
                "metadata.test",
                vec![vec![Ipv4Addr::new(169, 254, 169, 254)]],
            ),
            (
                "mixed.test",
                vec![vec![
                    Ipv4Addr::new(93, 184, 216, 34),
                    Ipv4Addr::new(10, 0, 0, 5),
                ]],
            ),
        ],
        &[
            "internal.test:80".into(),
            "metadata.test:80".into(),
            "mixed.test:80".into(),
            "169.254.169.254:80".into(),
            "[fd00:ec2::254]:80".into(),
        ],
    )
    .await;
    for (host, class) in [
        ("internal.test", "127.0.0.2, a loopback address"),
        ("metadata.test", "169.254.169.254, a cloud metadata address"),
        ("mixed.test", "10.0.0.5, a private address"),
        (
            "169.254.169.254",
            "169.254.169.254, a cloud metadata address",
        ),
        ("[fd00:ec2::254]", "fd00:ec2::254, a cloud metadata address"),
    ] {
        let response = s.exchange(&get(host, 80, "/")).await;
        assert!(response.starts_with("HTTP/1.1 403"), "{host}: {response}");
        assert!(response.contains(class), "{host}: {response}");
    }
}

/// A non-loopback IPv4 address of one of this machine's interfaces (the test DNS server answers
/// A queries only).
fn own_ipv4() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|interface| Some(interface.address?.as_sockaddr_in()?.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// #20: an allowed name that resolves to one of the host's own addresses does not reach the
/// services listening on the host, even when the operator opened the network the host sits on;
/// naming the address itself (`/32`) still opens it on purpose.
#[tokio::test]
async fn the_hosts_own_addresses_are_refused() {
    let Some(own) = own_ipv4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address");
        return;
    };
    let origin = Origin::http(IpAddr::V4(own), 0, "a service on the host").await;
    let port = origin.addr.port();
    let script = || vec![("host.test", vec![vec![own]])];
    let rules = [format!("host.test:{port}"), format!("{own}:{port}")];
    // The network the host sits on, as an operator would open it for an internal mirror (or a
    // public address, which needs no opening at all).
    let network = IpNet::new(IpAddr::V4(own), 16).unwrap().trunc();
    let s = setup_with_networks(script(), &rules, &[network]).await;
    let reason = format!("{own}, one of this host's own addresses");
    let response = s.exchange(&get("host.test", port, "/")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains(&reason), "{response}");
    let record = s.nth_record(1).await;
    assert_eq!(record.decision, Decision::Denied);
    assert_eq!(record.resolved, Some(IpAddr::V4(own)));
    assert!(record.reason.contains(&reason), "{}", record.reason);
    let response = s
        .exchange(&format!(
            "CONNECT host.test:{port} HTTP/1.1\r\nHost: host.test:{port}\r\n\r\n"
        ))
        .await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains(&reason), "{response}");
    // By address, too.
    let response = s.exchange(&get(&own.to_string(), port, "/")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains(&reason), "{response}");
    assert_eq!(origin.connections(), 0);

    // The operator names the host's address itself: allowed.
    let own_only = IpNet::new(IpAddr::V4(own), 32).unwrap();
    let s = setup_with_networks(script(), &rules, &[own_only]).await;
    let response = s.exchange(&get("host.test", port, "/")).await;
    assert!(response.ends_with("a service on the host"), "{response}");
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn dns_rebinding_gains_nothing() {
    // The name answers 127.0.0.1 (allowed by configuration) first, then 127.0.0.2 (not allowed).
    let good = Origin::http(LOOPBACK, 0, "checked address").await;
    let port = good.addr.port();
    let evil = Origin::http(LOOPBACK_2, port, "rebound address").await;
    let s = setup(
        vec![(
            "rebind.test",
            vec![vec![Ipv4Addr::LOCALHOST], vec![Ipv4Addr::new(127, 0, 0, 2)]],
        )],
        &[format!("rebind.test:{port}")],
    )
    .await;
    let response = s.exchange(&get("rebind.test", port, "/")).await;
    assert!(response.ends_with("checked address"), "{response}");
    // One lookup per connection: the proxy connected to the address it checked.
    assert_eq!(s.dns.queries("rebind.test"), 1);
    let response = s.exchange(&get("rebind.test", port, "/")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(
        response.contains("127.0.0.2, a loopback address"),
        "{response}"
    );
    assert_eq!(evil.connections(), 0);
    assert_eq!(good.connections(), 1);
}

#[tokio::test]
async fn card_data_in_a_plain_request_does_not_leave() {
    let origin = Origin::http(LOOPBACK, 0, "ok").await;
    let port = origin.addr.port();
    let s = setup(
        vec![("api.test", vec![vec![Ipv4Addr::LOCALHOST]])],
        &[format!("api.test:{port}")],
    )
    .await;
    let body = "card=4111 1111 1111 1111&note=hi";
    let request = format!(
        "POST http://api.test:{port}/pay HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = s.exchange(&request).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("card data (CREDIT_CARD)"), "{response}");
    assert!(
        !response.contains("4111"),
        "the answer must not echo the PAN"
    );
    // In the URL too.
    let response = s
        .exchange(&get("api.test", port, "/q?pan=4111111111111111"))
        .await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(origin.connections(), 0);
    let records = s.log.records();
    assert!(records.iter().all(|r| !format!("{r:?}").contains("4111")));
    // An ordinary body passes.
    let body = r#"{"order": 1234, "amount": "10.00"}"#;
    let request = format!(
        "POST http://api.test:{port}/orders HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = s.exchange(&request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(origin.received()[0].body, body.as_bytes());
    // Bodies the proxy cannot scan up front are refused.
    let response = s
        .exchange(&format!(
            "POST http://api.test:{port}/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))
        .await;
    assert!(response.starts_with("HTTP/1.1 411"), "{response}");
}

/// Opens a CONNECT tunnel and runs a TLS client over it with `sni` as the server name.
async fn tls_through(s: &Setup, target: &str, sni: &str, ca_pem: &str) -> Result<String, String> {
    let mut client = s.connect();
    client
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap() == 0 {
            return Err(String::from_utf8_lossy(&head).into_owned());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head);
    }
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = connector
        .connect(name, client)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn connect_checks_the_tls_server_name() {
    let (origin, ca) = Origin::https(LOOPBACK, "secure.test", "secure hello").await;
    let port = origin.addr.port();
    let s = setup(
        vec![
            ("secure.test", vec![vec![Ipv4Addr::LOCALHOST]]),
            ("other.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ],
        &[format!("secure.test:{port}")],
    )
    .await;
    let target = format!("secure.test:{port}");
    let response = tls_through(&s, &target, "secure.test", &ca).await.unwrap();
    assert!(response.ends_with("secure hello"), "{response}");
    let record = s.last_record().await;
    assert_eq!(record.method, "CONNECT");
    assert_eq!(record.decision, Decision::Allowed);
    assert!(record.bytes_up > 0 && record.bytes_down > 0);

    // Same tunnel, TLS to another name on the same address: the proxy closes it.
    let err = tls_through(&s, &target, "other.test", &ca)
        .await
        .unwrap_err();
    assert!(err.starts_with("TLS"), "{err}");
    let record = s.nth_record(2).await;
    assert_eq!(record.decision, Decision::Denied);
    assert_eq!(
        record.reason,
        format!("TLS SNI other.test does not match the CONNECT host secure.test")
    );
    // The origin saw only the allowed connection.
    assert_eq!(origin.received().len(), 1);
}

#[tokio::test]
async fn tunnels_must_carry_tls() {
    let origin = Origin::http(LOOPBACK, 0, "plain").await;
    let port = origin.addr.port();
    let s = setup(
        vec![("api.test", vec![vec![Ipv4Addr::LOCALHOST]])],
        &[format!("api.test:{port}")],
    )
    .await;
    let response = s
        .exchange(&format!(
            "CONNECT api.test:{port} HTTP/1.1\r\n\r\nPOST /pay HTTP/1.1\r\nContent-Length: 16\r\n\r\n4111111111111111"
        ))
        .await;
    assert_eq!(response, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert!(origin.received().is_empty());
    let record = s.last_record().await;
    assert_eq!(
        record.reason,
        "the tunnel did not start with a TLS handshake"
    );
}

/// An audit trail that keeps final records but cannot record openings (a full disk, a broken
/// log): nothing may be relayed.
#[derive(Default)]
struct BrokenTrail {
    openings: std::sync::Mutex<usize>,
    log: EgressLog,
}

impl EgressAudit for BrokenTrail {
    fn opened<'a>(&'a self, record: &'a EgressRecord) -> OpeningWrite<'a> {
        assert_eq!(record.decision, Decision::Allowed);
        assert_eq!((record.bytes_up, record.bytes_down), (0, 0));
        *self.openings.lock().unwrap() += 1;
        Box::pin(async { Err(AuditUnavailable("disk full".into())) })
    }

    fn record(&self, record: &EgressRecord) {
        self.log.record(record);
    }
}

#[tokio::test]
async fn a_connection_the_audit_trail_cannot_record_is_refused_before_any_byte_leaves() {
    let origin = Origin::http(LOOPBACK, 0, "should not be reached").await;
    let port = origin.addr.port();
    let mut s = setup(
        vec![("api.test", vec![vec![Ipv4Addr::LOCALHOST]])],
        &[format!("api.test:{port}")],
    )
    .await;
    let trail = Arc::new(BrokenTrail::default());
    s.grant.audit = trail.clone();

    let response = s.exchange(&get("api.test", port, "/")).await;
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{response}"
    );
    assert!(response.contains("the audit trail cannot record this connection"));
    assert!(
        !response.contains("disk full"),
        "internal detail leaked: {response}"
    );
    let response = s
        .exchange(&format!(
            "CONNECT api.test:{port} HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05hello"
        ))
        .await;
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable"),
        "a tunnel is not established: {response}"
    );
    assert_eq!(*trail.openings.lock().unwrap(), 2);
    assert!(
        origin.received().is_empty(),
        "no request reached the origin"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while trail.log.records().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = trail.log.records();
    assert_eq!(records.len(), 2);
    for record in records {
        assert_eq!(record.decision, Decision::Denied);
        assert_eq!(
            record.reason,
            "the audit trail cannot record this connection; it was refused"
        );
    }
}
