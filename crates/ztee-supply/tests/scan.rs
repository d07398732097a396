//! Vulnerability scanning end to end: real PyPI and RustSec OSV data plus hand-written Debian
//! records, imported from files, directories, zip archives and over HTTP from a loopback server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::sample_image;
use ztee_supply::sbom;
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{cosign_vuln_predicate, scan, ScanOptions};
use ztee_supply::vuln::vex;
use ztee_supply::Store;

fn shared_osv() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/osv");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: real OSV data not found at {}", dir.display());
        None
    }
}

fn debian_records() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/osv-debian")
}

fn today() -> time::Date {
    time::macros::date!(2026 - 06 - 01)
}

fn options() -> ScanOptions {
    ScanOptions {
        fail_on_cvss: 7.0,
        ignore_unfixed: false,
        suppressions: vec![],
        today: today(),
    }
}

#[test]
fn scan_matches_each_ecosystem_and_skips_dpkg_owned_python() {
    let Some(osv) = shared_osv() else { return };
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let catalog = sbom::catalog_image(&store, "python:1", &image.digest).unwrap();

    let db = VulnDb::open(data.path());
    let pypi = db.import(&osv.join("pypi/vulns")).unwrap();
    assert!(pypi.records_added > 1000, "{pypi:?}");
    db.import(&debian_records()).unwrap();
    let again = db.import(&debian_records()).unwrap();
    assert_eq!(
        (again.records_added, again.records_unchanged),
        (0, 3),
        "re-import is idempotent"
    );

    let report = scan(&catalog, &db, &options()).unwrap();
    let ids = |pkg: &str| -> Vec<String> {
        report
            .findings
            .iter()
            .filter(|f| f.package == pkg)
            .map(|f| f.id.clone())
            .collect()
    };
    let openssl = report
        .findings
        .iter()
        .find(|f| f.id == "DSA-5532-1")
        .expect("openssl advisory matched via source package");
    assert_eq!(
        (openssl.package.as_str(), openssl.fixed.as_deref()),
        ("libssl3", Some("3.0.11-1~deb12u2"))
    );
    assert_eq!(openssl.cvss_score, Some(7.5));
    assert!(openssl.aliases.contains(&"CVE-2023-5363".to_string()));
    assert_eq!(ids("python3-urllib3"), vec!["DEBIAN-CVE-2023-43804"]);
    assert!(
        ids("zlib1g").is_empty(),
        "a Debian:11 advisory must not match a Debian:12 image"
    );
    assert!(
        ids("requests").contains(&"PYSEC-2018-28".to_string()),
        "pip-installed requests 2.19.0 is affected"
    );
    assert!(
        ids("urllib3").is_empty(),
        "dpkg's urllib3 carries Debian's fixes; PyPI advisories must not match it"
    );
    assert_eq!(report.max_cvss, 8.1);
    assert!(!report.passed, "8.1 >= 7.0 blocks");

    // Control: the same urllib3 installed by pip is matched against PyPI advisories.
    let mut pip_only = catalog.clone();
    for p in &mut pip_only.packages {
        p.owned_by_deb = None;
    }
    let control = scan(&pip_only, &db, &options()).unwrap();
    assert!(control
        .findings
        .iter()
        .any(|f| f.package == "urllib3" && f.ecosystem == "PyPI"));

    // The gate is on the computed score.
    let lenient = scan(
        &catalog,
        &db,
        &ScanOptions {
            fail_on_cvss: 9.0,
            ..options()
        },
    )
    .unwrap();
    assert!(lenient.passed);

    // The cosign predicate carries the report.
    let predicate = cosign_vuln_predicate(&report, &report.scanned_at);
    assert_eq!(
        predicate["scanner"]["result"]["max_cvss"],
        serde_json::json!(8.1)
    );
    assert!(predicate["metadata"]["scanFinishedOn"].is_string());
}

#[test]
fn allowlist_suppresses_until_it_expires_and_ignore_unfixed_drops_unfixed() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let catalog = sbom::catalog_image(&store, "python:1", &image.digest).unwrap();
    let db = VulnDb::open(data.path());
    db.import(&debian_records()).unwrap();

    let allow = data.path().join("allow.yaml");
    std::fs::write(
        &allow,
        "vulnerabilities:\n  - id: CVE-2023-43804\n    statement: no redirects to other origins in the guest\n    expires: 2026-12-31\n  - id: DSA-5532-1\n    packages: [openssl]\n    statement: cipher misuse not reachable\n    expires: 2026-12-31\n",
    )
    .unwrap();
    let suppressions = vex::load(&allow).unwrap();
    let report = scan(
        &catalog,
        &db,
        &ScanOptions {
            suppressions: suppressions.clone(),
            ..options()
        },
    )
    .unwrap();
    assert!(report.passed, "{:#?}", report.findings);
    assert_eq!(report.suppressed.len(), 2);
    assert!(report.suppressed.iter().all(|f| f
        .suppressed_by
        .as_ref()
        .is_some_and(|s| !s.reason.is_empty())));

    let later = ScanOptions {
        suppressions,
        today: time::macros::date!(2027 - 01 - 01),
        ..options()
    };
    let report = scan(&catalog, &db, &later).unwrap();
    assert!(!report.passed, "expired exceptions no longer apply");
    assert_eq!(report.expired_suppressions.len(), 2);

    // A record with no fixed version: reported, unless --ignore-unfixed.
    let unfixed = data.path().join("unfixed.json");
    std::fs::write(&unfixed, serde_json::json!({
        "id": "TEST-UNFIXED-1", "modified": "2024-01-01T00:00:00Z",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [{"package": {"ecosystem": "Debian:12", "name": "zlib"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]
    }).to_string()).unwrap();
    db.import(&unfixed).unwrap();
    let report = scan(&catalog, &db, &options()).unwrap();
    assert!(report
        .findings
        .iter()
        .any(|f| f.id == "TEST-UNFIXED-1" && f.fixed.is_none()));
    let report = scan(
        &catalog,
        &db,
        &ScanOptions {
            ignore_unfixed: true,
            ..options()
        },
    )
    .unwrap();
    assert!(!report.findings.iter().any(|f| f.id == "TEST-UNFIXED-1"));
}

fn zip_of(dir: &Path) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                zip.start_file(
                    path.file_name().unwrap().to_string_lossy(),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                zip.write_all(&std::fs::read(&path).unwrap()).unwrap();
            }
        }
        zip.finish().unwrap();
    }
    out.into_inner()
}

/// Serves `routes` (path -> body) over HTTP/1.1 on loopback for at most `max_requests` requests.
fn serve(routes: Vec<(String, Vec<u8>)>, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn update_downloads_osv_archives_and_import_reads_zips_and_yaml() {
    let data = tempfile::tempdir().unwrap();
    let db = VulnDb::open(data.path());
    let archive = zip_of(&debian_records());
    let base = serve(
        vec![
            ("/Debian/all.zip".into(), archive.clone()),
            ("/npm/all.zip".into(), b"not a zip".to_vec()),
        ],
        4,
    );

    let report = db.update(&base, &["Debian"], |_| {}).unwrap();
    assert_eq!(report.records_added, 3);
    assert_eq!(db.meta().unwrap().records.get("Debian"), Some(&3));

    let err = db.update(&base, &["PyPI"], |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("404") && err.contains("/PyPI/all.zip"),
        "{err}"
    );
    let err = db.update(&base, &["npm"], |_| {}).unwrap_err().to_string();
    assert!(err.contains("not a zip"), "{err}");
    assert_eq!(
        db.meta().unwrap().records.get("npm"),
        None,
        "a bad archive changes nothing"
    );

    // Air-gapped path: the same archive imported from disk, then real YAML and JSON records.
    let zip_path = data.path().join("Debian-all.zip");
    std::fs::write(&zip_path, archive).unwrap();
    assert_eq!(db.import(&zip_path).unwrap().records_unchanged, 3);
    if let Some(osv) = shared_osv() {
        let yaml = db.import(&osv.join("pypi/vulns/requests")).unwrap();
        assert_eq!(yaml.records_added, 5);
        let rustsec = db.import(&osv.join("crates.io")).unwrap();
        assert!(rustsec.records_added > 1000, "{rustsec:?}");
        assert!(db
            .load_family("crates.io")
            .unwrap()
            .iter()
            .any(|r| !r.severity.is_empty()));
    }
    let bad = data.path().join("bad.txt");
    std::fs::write(&bad, "x").unwrap();
    assert!(db
        .import(&bad)
        .unwrap_err()
        .to_string()
        .contains("not a .json, .yaml or .zip"));
}
