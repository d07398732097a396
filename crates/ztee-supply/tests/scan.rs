//! Vulnerability scanning end to end: real PyPI and RustSec OSV data plus hand-written Debian
//! records, imported from files, directories, zip archives and over HTTP from a loopback server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::sample_image;
use ztee_supply::sbom;
use ztee_supply::vuln::cve5::ScoreSource;
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{cosign_vuln_predicate, scan, ScanOptions, UnscoredPolicy};
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
        unscored: UnscoredPolicy::Block,
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

    // The gate is on the computed score; some PyPI advisories carry no vector, so the scan
    // passes at 9.0 only when unscored findings warn instead of block.
    assert!(report.unscored > 0, "{:#?}", report.findings);
    let lenient = ScanOptions {
        fail_on_cvss: 9.0,
        ..options()
    };
    assert!(!scan(&catalog, &db, &lenient).unwrap().passed);
    let lenient = scan(
        &catalog,
        &db,
        &ScanOptions {
            unscored: UnscoredPolicy::Warn,
            ..lenient
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

// ---------------------------------------------------------------------------------------------
// Scores for Debian findings from CVE JSON 5 records, refined by the Debian security tracker.

fn debian_scores() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/debian-scores")
}

/// A one-layer Debian 12 image whose dpkg status lists `(package, source, version)`.
fn bookworm_image(store: &Store, name: &str, packages: &[(&str, &str, &str)]) -> sbom::Catalog {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    std::fs::write(
        r.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
    )
    .unwrap();
    let status: String = packages
        .iter()
        .map(|(package, source, version)| {
            format!("Package: {package}\nStatus: install ok installed\nArchitecture: amd64\nSource: {source}\nVersion: {version}\nDescription: test\n\n")
        })
        .collect();
    std::fs::write(r.join("var/lib/dpkg/status"), status).unwrap();
    let layer = ztee_supply::layers::pack_directory(store, r, 1_700_000_000).unwrap();
    let config = ztee_supply::oci::ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    let image = ztee_supply::layers::commit_image(
        store,
        name,
        &[layer],
        config,
        std::collections::BTreeMap::new(),
    )
    .unwrap();
    sbom::catalog_image(store, name, &image.digest).unwrap()
}

fn with_unscored(unscored: UnscoredPolicy) -> ScanOptions {
    ScanOptions {
        unscored,
        ..options()
    }
}

#[test]
fn debian_findings_take_the_upstream_cve_score_and_block_until_fixed() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let db = VulnDb::open(data.path());
    // glibc before both of DSA-5514-1's and DSA-5673-1's fixes; openssl already fixed.
    let vulnerable = bookworm_image(
        &store,
        "vulnerable:1",
        &[
            ("libc6", "glibc", "2.36-9+deb12u1"),
            ("libssl3", "openssl", "3.0.11-1~deb12u2"),
        ],
    );

    // osv.dev's Debian advisories alone: they match, but nothing scores them.
    db.import(&debian_scores().join("osv")).unwrap();
    let report = scan(&vulnerable, &db, &options()).unwrap();
    let ids: Vec<&str> = report.findings.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["DSA-5514-1", "DSA-5673-1"], "{:#?}", report.findings);
    assert!(report
        .findings
        .iter()
        .all(|f| f.cvss_score.is_none() && f.score_source == ScoreSource::None));
    assert_eq!((report.unscored, report.max_cvss), (2, 0.0));
    assert!(!report.passed, "unscored = block (the default) fails");
    let warned = scan(&vulnerable, &db, &with_unscored(UnscoredPolicy::Warn)).unwrap();
    assert!(warned.passed, "unscored = warn reports them and passes");
    assert_eq!(warned.unscored, 2);

    // The CVE program's records give the scores: Red Hat as CNA for CVE-2023-4911, CISA's
    // ADP for CVE-2024-2961 (the glibc CNA gave none).
    let imported = db.import(&debian_scores().join("cve5")).unwrap();
    assert_eq!(imported.cve_records, 3);
    assert_eq!(
        db.meta().unwrap().cve_records,
        2,
        "CVE-2023-5363 has no CVSS"
    );
    for policy in [UnscoredPolicy::Block, UnscoredPolicy::Warn] {
        let report = scan(&vulnerable, &db, &with_unscored(policy)).unwrap();
        let f = |id: &str| report.findings.iter().find(|f| f.id == id).unwrap();
        let looney = f("DSA-5514-1");
        assert_eq!(looney.cvss_score, Some(7.8));
        assert_eq!(looney.score_source, ScoreSource::CveCna);
        assert_eq!(looney.score_cve.as_deref(), Some("CVE-2023-4911"));
        assert_eq!(looney.fixed.as_deref(), Some("2.36-9+deb12u3"));
        let iconv = f("DSA-5673-1");
        assert_eq!(iconv.cvss_score, Some(7.3));
        assert_eq!(iconv.score_source, ScoreSource::CveAdp("CISA-ADP".into()));
        assert_eq!(
            iconv.cvss_vector.as_deref(),
            Some("CVSS:3.1/AV:L/AC:L/PR:N/UI:N/S:U/C:L/I:L/A:H")
        );
        assert_eq!((report.unscored, report.max_cvss), (0, 7.8));
        assert!(
            !report.passed,
            "7.8 >= 7.0 blocks whatever the unscored policy"
        );
    }
    let json = serde_json::to_value(scan(&vulnerable, &db, &options()).unwrap()).unwrap();
    assert_eq!(json["findings"][1]["score_source"], "cve:adp:CISA-ADP");
    assert_eq!(json["findings"][0]["score_source"], "cve:cna");
    assert_eq!(json["unscored_policy"], "block");

    // The same image with glibc at DSA-5673-1's version: nothing left, passes.
    let fixed = bookworm_image(
        &store,
        "fixed:1",
        &[
            ("libc6", "glibc", "2.36-9+deb12u6"),
            ("libssl3", "openssl", "3.0.11-1~deb12u2"),
        ],
    );
    let report = scan(&fixed, &db, &options()).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.passed);

    // openssl before DSA-5532-1: CVE-2023-5363's record has only the CNA's own label
    // ("MODERATE"), no CVSS, so the finding is unscored everywhere.
    let unscored = bookworm_image(
        &store,
        "unscored:1",
        &[
            ("libc6", "glibc", "2.36-9+deb12u6"),
            ("libssl3", "openssl", "3.0.11-1~deb12u1"),
        ],
    );
    let report = scan(&unscored, &db, &options()).unwrap();
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].id, "DSA-5532-1");
    assert_eq!(report.findings[0].score_source, ScoreSource::None);
    assert_eq!(report.findings[0].rating, "UNSCORED");
    assert!(!report.passed, "blocks under unscored = block");
    let report = scan(&unscored, &db, &with_unscored(UnscoredPolicy::Warn)).unwrap();
    assert!(report.passed, "warns under unscored = warn");
    assert_eq!(report.unscored, 1);
}

/// Test-constructed OSV records (not osv.dev's) for the CVEs of the tracker subset, open in
/// Debian 12 with no fix, so that only the tracker can say otherwise.
fn unfixed_debian_record(id: &str, package: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "modified": "2024-01-01T00:00:00Z",
        "upstream": [id.trim_start_matches("DEBIAN-")],
        "affected": [{"package": {"ecosystem": "Debian:12", "name": package},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]
    })
}

#[test]
fn the_debian_tracker_clears_fixed_and_unaffected_cves_and_shows_urgency() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let db = VulnDb::open(data.path());
    let records = data.path().join("records.json");
    std::fs::write(
        &records,
        serde_json::json!([
            unfixed_debian_record("DEBIAN-CVE-2014-1424", "apparmor"),
            unfixed_debian_record("DEBIAN-CVE-2016-1585", "apparmor"),
            unfixed_debian_record("DEBIAN-CVE-2017-6507", "apparmor"),
            unfixed_debian_record("DEBIAN-CVE-2018-1000500", "busybox"),
        ])
        .to_string(),
    )
    .unwrap();
    db.import(&records).unwrap();
    let catalog = bookworm_image(
        &store,
        "tools:1",
        &[
            ("apparmor", "apparmor", "3.0.8-3"),
            ("busybox", "busybox", "1:1.35.0-4"),
        ],
    );
    let before = scan(&catalog, &db, &options()).unwrap();
    assert_eq!(before.findings.len(), 4);

    let imported = db
        .import(&debian_scores().join("tracker/tracker-subset.json"))
        .unwrap();
    assert_eq!(imported.tracker_entries, 4);
    assert_eq!(db.meta().unwrap().debian_tracker_packages, 2);
    let report = scan(&catalog, &db, &with_unscored(UnscoredPolicy::Warn)).unwrap();
    let ids: Vec<&str> = report.findings.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["DEBIAN-CVE-2016-1585", "DEBIAN-CVE-2018-1000500"]);
    for f in &report.findings {
        assert_eq!(f.debian_tracker.len(), 1, "{f:#?}");
        assert_eq!(f.debian_tracker[0].release, "bookworm");
        assert_eq!(
            f.debian_tracker[0].status.urgency.as_deref(),
            Some("unimportant")
        );
    }
    let cleared = |id: &str| {
        report
            .suppressed
            .iter()
            .find(|f| f.id == id)
            .and_then(|f| f.suppressed_by.clone())
            .unwrap()
    };
    let not_affected = cleared("DEBIAN-CVE-2014-1424");
    assert_eq!(not_affected.source, "debian-security-tracker");
    assert!(
        not_affected
            .reason
            .contains("does not affect apparmor in bookworm"),
        "{not_affected:?}"
    );
    assert!(cleared("DEBIAN-CVE-2017-6507")
        .reason
        .contains("fixed in apparmor 2.11.0-3"));
    assert!(report.passed, "unscored = warn");
    assert!(
        !scan(&catalog, &db, &options()).unwrap().passed,
        "Debian's \"unimportant\" is shown, not a score: unscored = block still blocks"
    );
}

#[test]
fn a_malformed_record_names_file_record_and_field_and_imports_nothing() {
    let data = tempfile::tempdir().unwrap();
    let db = VulnDb::open(data.path());
    let bad_dir = data.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    let good_cve: serde_json::Value = serde_json::from_slice(
        &std::fs::read(debian_scores().join("cve5/CVE-2023-4911.json")).unwrap(),
    )
    .unwrap();

    let mut bad_cve = good_cve.clone();
    bad_cve["containers"]["cna"]["metrics"][1]["cvssV3_1"]["vectorString"] =
        "CVSS:3.1/AV:X/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H".into();
    let bad_path = bad_dir.join("CVE-2023-4911.json");
    std::fs::write(&bad_path, bad_cve.to_string()).unwrap();
    let err = db
        .import_all(&[debian_scores().join("osv"), bad_dir.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&bad_path.display().to_string())
            && err.contains("CVE-2023-4911: containers.cna.metrics[1].cvssV3_1.vectorString"),
        "{err}"
    );
    assert!(
        db.meta().unwrap().records.is_empty() && db.load_family("Debian").unwrap().is_empty(),
        "the good OSV records of the same import were not imported either"
    );

    // A good import, then bad ones: the database stays as it was.
    db.import_all(&[debian_scores().join("osv"), debian_scores().join("cve5")])
        .unwrap();
    let before = std::fs::read(data.path().join("vulndb/scores/cve.json")).unwrap();
    let tracker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(debian_scores().join("tracker/tracker-subset.json")).unwrap(),
    )
    .unwrap();
    let mut bad_tracker = tracker.clone();
    bad_tracker["apparmor"]["CVE-2014-1424"]["releases"]["bookworm"]["status"] = "fixed".into();
    let tracker_path = data.path().join("tracker.json");
    std::fs::write(&tracker_path, bad_tracker.to_string()).unwrap();
    let err = db.import(&tracker_path).unwrap_err().to_string();
    assert!(
        err.contains(&tracker_path.display().to_string())
            && err.contains("apparmor: CVE-2014-1424: releases.bookworm.status: \"fixed\""),
        "{err}"
    );

    let mut bad_osv: serde_json::Value = serde_json::from_slice(
        &std::fs::read(debian_scores().join("osv/DSA-5514-1.json")).unwrap(),
    )
    .unwrap();
    bad_osv["affected"][0]["ranges"][0]["events"] = "introduced 0".into();
    let osv_path = data.path().join("DSA-5514-1.json");
    std::fs::write(&osv_path, bad_osv.to_string()).unwrap();
    let err = db.import(&osv_path).unwrap_err().to_string();
    assert!(
        err.contains("DSA-5514-1: affected[0].ranges[0].events"),
        "{err}"
    );
    std::fs::write(&osv_path, "{\"id\": \"DSA-1\", ").unwrap();
    assert!(db
        .import(&osv_path)
        .unwrap_err()
        .to_string()
        .contains("not valid JSON"));

    assert_eq!(
        std::fs::read(data.path().join("vulndb/scores/cve.json")).unwrap(),
        before
    );
    assert_eq!(db.meta().unwrap().debian_tracker_packages, 0);
    assert_eq!(db.load_family("Debian").unwrap().len(), 3);
}
