//! Egress from inside real microVMs: Python's urllib in the guest goes through the agent's proxy
//! and the agent channel to the host-side egress proxy, which reaches servers the test runs on
//! loopback (names resolved by a DNS server the test also runs on loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use ztee_egress::testing::{Origin, TestDns};
use ztee_egress::{
    Allowlist, Decision, DnsResolver, EgressConfig, EgressGrant, EgressLog, EgressProxy,
};
use ztee_vm::{ExecSpec, ExitStatus, Sandbox, SandboxSpec};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Fetches each argument (`URL` or `URL|POST-BODY`) with urllib, which takes the proxy from the
/// environment, and prints one line per URL: `STATUS BODY`, or `ERROR <reason>` when no HTTP
/// answer came back. One process for many requests: Python starts slowly under TCG.
const FETCH: &str = r#"
import sys, ssl, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile="/home/user/ca.pem")
for arg in sys.argv[1:]:
    url, _, data = arg.partition("|")
    try:
        with urllib.request.urlopen(url, data=data.encode() or None, timeout=60, context=ctx) as r:
            print(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
    except Exception as e:
        print("ERROR", e)
"#;

/// Opens a CONNECT tunnel by hand for each `HOST:PORT|SNI` argument and starts TLS with that
/// server name; prints `OK <response>` or `ERROR <reason>` per argument.
const TUNNEL: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile="/home/user/ca.pem")
ctx.check_hostname = False
def attempt(target, sni):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=60)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b: break
        head += b
    if not head.startswith(b"HTTP/1.1 200"):
        return "ERROR " + (head.decode().splitlines()[0] if head else "closed")
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return "OK " + t.recv(4096).decode().split("\r\n\r\n")[-1]
    except Exception as e:
        return "ERROR " + type(e).__name__
for arg in sys.argv[1:]:
    print(attempt(*arg.split("|")))
"#;

async fn run(sandbox: &Sandbox, argv: &[&str]) -> String {
    let mut spec = ExecSpec::new(argv.iter().map(|s| s.to_string()).collect());
    spec.timeout = Some(Duration::from_secs(120));
    let out = sandbox.exec(spec).await.unwrap().output().await.unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Code(0),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_through_the_agent_channel() {
    let Some(env) = common::env() else { return };
    let origin = Origin::http(LOOPBACK, 0, "hello from origin").await;
    let http_port = origin.addr.port();
    let (secure, ca_pem) = Origin::https(LOOPBACK, "secure.test", "secure hello").await;
    let tls_port = secure.addr.port();
    let big_body: &'static str = Box::leak("0123456789abcdef".repeat(65536).into_boxed_str());
    let big = Origin::http(LOOPBACK, 0, big_body).await;
    let big_port = big.addr.port();
    let evil = Origin::http(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        http_port,
        "rebound",
    )
    .await;
    let dns = TestDns::start(vec![
        ("allowed.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ("secure.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ("denied.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ("private.test", vec![vec![Ipv4Addr::new(127, 0, 0, 2)]]),
        (
            "rebind.test",
            vec![vec![Ipv4Addr::LOCALHOST], vec![Ipv4Addr::new(127, 0, 0, 2)]],
        ),
    ])
    .await;
    let config = EgressConfig {
        // The test's servers listen on 127.0.0.1: allowed explicitly, as an operator would allow
        // an internal mirror. 127.0.0.2 stays forbidden.
        allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        connect_timeout_secs: 10,
        ..EgressConfig::default()
    };
    let resolver = Arc::new(DnsResolver::new(&[dns.addr], Duration::from_secs(10)));
    let proxy = Arc::new(EgressProxy::new(config, resolver).unwrap());
    let log = Arc::new(EgressLog::default());
    let rules = [
        format!("allowed.test:{http_port}"),
        format!("secure.test:{tls_port}"),
        format!("private.test:{http_port}"),
        format!("rebind.test:{http_port}"),
        format!("allowed.test:{big_port}"),
    ];

    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
    // Before the grant: no proxy in the environment.
    let before = run(&sandbox, &["sh", "-c", "env | grep -ci proxy || true"]).await;
    assert_eq!(before, "0");
    sandbox
        .enable_egress(
            proxy,
            EgressGrant {
                sandbox: sandbox.id().to_string(),
                allowlist: Allowlist::new(rules.iter().map(|r| r.parse().unwrap()).collect()),
                audit: log.clone(),
            },
        )
        .await
        .unwrap();
    sandbox
        .write_file("fetch.py", FETCH.as_bytes(), 0o644)
        .await
        .unwrap();
    sandbox
        .write_file("tunnel.py", TUNNEL.as_bytes(), 0o644)
        .await
        .unwrap();
    sandbox
        .write_file("ca.pem", ca_pem.as_bytes(), 0o644)
        .await
        .unwrap();
    let env_vars = run(&sandbox, &["sh", "-c", "echo $HTTP_PROXY $https_proxy"]).await;
    assert_eq!(env_vars, "http://127.0.0.1:3128 http://127.0.0.1:3128");

    let urls = [
        // Plain HTTP to an allowed name.
        format!("http://allowed.test:{http_port}/hello"),
        // HTTPS (CONNECT) to an allowed name, verified by the guest against the test CA.
        format!("https://secure.test:{tls_port}/"),
        // A name that is not on the list.
        format!("http://denied.test:{http_port}/"),
        // CONNECT to an allowed name on a port that is not allowed for it.
        format!("https://secure.test:{http_port}/"),
        // A name that resolves to a forbidden address.
        format!("http://private.test:{http_port}/"),
        // DNS rebinding: the first lookup says 127.0.0.1, every later one 127.0.0.2.
        format!("http://rebind.test:{http_port}/"),
        format!("http://rebind.test:{http_port}/"),
        // A PAN in a POST body stays in the sandbox; an ordinary body goes through.
        format!("http://allowed.test:{http_port}/pay|card=4111111111111111&amount=10"),
        format!("http://allowed.test:{http_port}/pay|order=1234&amount=10"),
    ];
    let mut argv = vec!["python3", "fetch.py"];
    argv.extend(urls.iter().map(String::as_str));
    let out = run(&sandbox, &argv).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), urls.len(), "{out}");
    assert_eq!(lines[0], "200 hello from origin", "{:#?}", log.records());
    assert!(origin.received()[0].head.starts_with("GET /hello HTTP/1.1"));
    assert_eq!(lines[1], "200 secure hello");
    assert_eq!(
        lines[2],
        format!(
            "403 ztee egress: denied.test:{http_port} is not on this sandbox's egress allowlist"
        )
    );
    assert!(
        lines[3].starts_with("ERROR") && lines[3].contains("403"),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4],
        "403 ztee egress: private.test resolves to 127.0.0.2, a loopback address"
    );
    assert_eq!(lines[5], "200 hello from origin");
    assert_eq!(
        lines[6],
        "403 ztee egress: rebind.test resolves to 127.0.0.2, a loopback address"
    );
    assert_eq!(dns.queries("rebind.test"), 2, "one lookup per connection");
    assert_eq!(evil.connections(), 0);
    assert_eq!(
        lines[7],
        "403 ztee egress: card data (CREDIT_CARD) in the request; blocked by DLP"
    );
    assert_eq!(lines[8], "200 hello from origin");
    let bodies: Vec<Vec<u8>> = origin.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.iter().filter(|b| !b.is_empty()).count(), 1);
    assert!(bodies.contains(&b"order=1234&amount=10".to_vec()));

    // TLS to another name through a tunnel opened for an allowed one; then the right name.
    let out = run(
        &sandbox,
        &[
            "python3",
            "tunnel.py",
            &format!("secure.test:{tls_port}|other.test"),
            &format!("secure.test:{tls_port}|secure.test"),
        ],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ERROR"), "{out}");
    assert_eq!(lines[1], "OK secure hello");

    // A download four times the stream window arrives whole while another command prints.
    let download = format!(
        "import hashlib, urllib.request; b = urllib.request.urlopen('http://allowed.test:{big_port}/big', timeout=120).read(); print(len(b), hashlib.sha256(b).hexdigest())"
    );
    let download_argv = ["python3", "-c", download.as_str()];
    let print_argv = ["sh", "-c", "for i in $(seq 1 300); do echo line$i; done"];
    let (out, lines) = tokio::join!(run(&sandbox, &download_argv), run(&sandbox, &print_argv));
    let digest = sha2::Sha256::digest(big_body.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(out, format!("{} {hex}", big_body.len()));
    assert_eq!(lines.lines().count(), 300);

    // Every connection has a record: destination, address, bytes, decision, reason. A record is
    // written as its connection ends, which may trail the program's exit on a busy host.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.records().len() < 12 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = log.records();
    let allowed: Vec<_> = records
        .iter()
        .filter(|r| r.decision == Decision::Allowed)
        .collect();
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.decision == Decision::Denied)
        .collect();
    assert_eq!(allowed.len(), 6, "{records:#?}");
    assert_eq!(denied.len(), 6, "{records:#?}");
    let first = allowed[0];
    assert_eq!(first.host, "allowed.test");
    assert_eq!(first.port, http_port);
    assert_eq!(first.resolved, Some(LOOPBACK));
    assert!(first.bytes_up > 0 && first.bytes_down > 0);
    assert!(denied
        .iter()
        .any(|r| r.reason == "TLS SNI other.test does not match the CONNECT host secure.test"));
    assert!(records.iter().all(|r| r.sandbox == sandbox.id()));
    assert!(!format!("{records:?}").contains("4111"));
    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn no_egress_means_no_proxy_and_no_network() {
    let Some(env) = common::env() else { return };
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
    let script = r#"
import os, socket
print(sorted(k for k in os.environ if "proxy" in k.lower()))
print(sorted(name for _, name in socket.if_nameindex()))
for addr in [("127.0.0.1", 3128), ("93.184.216.34", 80), ("10.0.2.2", 80)]:
    try:
        socket.create_connection(addr, timeout=5)
        print("connected", addr[0])
    except OSError as e:
        print("refused" if isinstance(e, ConnectionRefusedError) else "unreachable")
"#;
    let out = run(&sandbox, &["python3", "-c", script]).await;
    assert_eq!(out, "[]\n['lo']\nrefused\nunreachable\nunreachable");
    sandbox.destroy().await.unwrap();
}
