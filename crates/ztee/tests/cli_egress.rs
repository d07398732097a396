//! `ztee run --allow-egress` and `ztee sandbox create --allow-egress` as a user runs them: the
//! real binary and real microVMs, reaching HTTP servers the test runs on loopback by names a DNS
//! server on loopback resolves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output, Stdio};

use ztee_egress::testing::{Origin, TestDns};

const FETCH: &str = "import sys, urllib.request, urllib.error
for url in sys.argv[1:]:
    try:
        print(urllib.request.urlopen(url, timeout=60).read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
";

struct Fixture {
    _runtime: tokio::runtime::Runtime,
    origin: Origin,
    dns: TestDns,
    data_dir: tempfile::TempDir,
}

fn fixture() -> Option<Fixture> {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return None;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (origin, dns) = runtime.block_on(async {
        let origin = Origin::http(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, "hello via egress").await;
        let dns = TestDns::start(vec![
            ("mirror.test", vec![vec![Ipv4Addr::LOCALHOST]]),
            ("other.test", vec![vec![Ipv4Addr::LOCALHOST]]),
            ("pkg.mirror.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ])
        .await;
        (origin, dns)
    });
    let data_dir = tempfile::Builder::new()
        .prefix("ztee-e")
        .tempdir_in("/tmp")
        .unwrap();
    Some(Fixture {
        _runtime: runtime,
        origin,
        dns,
        data_dir,
    })
}

impl Fixture {
    fn ztee(&self, args: &[&str]) -> Output {
        let guest_dir = std::env::var_os("ZTEE_GUEST_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".local/share/ztee/guest")
            });
        Command::new(env!("CARGO_BIN_EXE_ztee"))
            .args(args)
            .env("ZTEE_DATA_DIR", self.data_dir.path())
            .env("ZTEE_GUEST_DIR", guest_dir)
            .env("ZTEE_EGRESS_DNS", self.dns.addr.to_string())
            // The test's server listens on 127.0.0.1, which the proxy refuses unless allowed.
            .env("ZTEE_EGRESS_ALLOW_NETWORKS", "127.0.0.1/32")
            .env_remove("ZTEE_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_with_allow_egress_reaches_only_the_allowed_host_and_prints_a_summary() {
    let Some(f) = fixture() else { return };
    let port = f.origin.addr.port();
    let allowed = format!("http://mirror.test:{port}/simple/");
    let other = format!("http://other.test:{port}/");
    let rule = format!("mirror.test:{port}");
    let out = f.ztee(&[
        "run",
        "--allow-egress",
        &rule,
        "--",
        "python3",
        "-c",
        FETCH,
        &allowed,
        &other,
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "hello via egress\n403 ztee egress: other.test:{port} is not on this sandbox's egress allowlist\n"
        )
    );
    assert!(
        stderr.contains("ztee: egress: 2 connection(s), 1 allowed, 1 denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "ztee: egress: allowed GET mirror.test:{port} [127.0.0.1]"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("ztee: egress: denied GET other.test:{port}: other.test:{port} is not on this sandbox's egress allowlist")),
        "{stderr}"
    );
    // The summary is what the node's trail holds: each connection is recorded as it opens and
    // as it ends, as at the gateway.
    let found = f.ztee(&["--format", "json", "audit", "search", "--type", "egress"]);
    assert!(found.status.success(), "{}", text(&found.stderr));
    let records: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let hosts: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            let e = &r["event"];
            Some((
                e["network"]["host"].as_str()?.to_owned(),
                e["outcome"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(
        hosts.contains(&("mirror.test".into(), "success".into()))
            && hosts.contains(&("other.test".into(), "denied".into())),
        "{records}"
    );
    assert_eq!(f.origin.received().len(), 1);
    assert!(f.origin.received()[0]
        .head
        .starts_with("GET /simple/ HTTP/1.1"));

    // Without the flag: no proxy, no summary.
    let out = f.ztee(&["run", "--", "python3", "-c", FETCH, &allowed]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("URLError"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("ztee: egress"));
    assert_eq!(f.origin.received().len(), 1);

    // A malformed rule is the caller's error, before anything boots.
    let out = f.ztee(&["run", "--allow-egress", "*.com:443", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("a wildcard needs a domain with at least two labels"));
}

#[test]
fn sandbox_create_with_allow_egress_gives_every_exec_the_proxy() {
    let Some(f) = fixture() else { return };
    let port = f.origin.addr.port();
    let rule = format!("*.mirror.test:{port}");
    let out = f.ztee(&["sandbox", "create", "--allow-egress", &rule]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let inspected = f.ztee(&["sandbox", "inspect", &id, "--format", "json"]);
    let shown = text(&f.ztee(&["sandbox", "inspect", &id]).stdout);
    let url = format!("http://pkg.mirror.test:{port}/a");
    let out = f.ztee(&["sandbox", "exec", &id, "--", "python3", "-c", FETCH, &url]);
    let _ = f.ztee(&["sandbox", "rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello via egress\n");
    assert_eq!(f.origin.received().len(), 1);
    // The grant is on the sandbox's record.
    let record: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(record["egress"], serde_json::json!([rule]), "{record}");
    assert!(
        shown
            .lines()
            .any(|l| l.contains("│ egress ") && l.contains(&rule)),
        "{shown}"
    );
}
