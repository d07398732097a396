//! `cargo bench -p ztee-supply --bench supply`: SBOM and scan time of the default image.
//!
//! Uses the default image the build test leaves in `${ZTEE_CACHE_DIR:-~/.cache/ztee}/supply-test`
//! (`cargo test -p ztee-supply --test build` builds it once). The Debian OSV data set cannot be
//! downloaded here, so the database is synthetic at full scale: as many `Debian:*` records as
//! osv.dev's Debian export holds, filed under the image's real source package names and under
//! made-up ones, with dpkg version ranges; plus the real PyPI and RustSec records from
//! `../shared/data/osv`. Timings are medians of several runs, reported side by side.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that cannot set up should stop

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ztee_supply::sbom::{self, Catalog, PackageKind};
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{scan, ScanOptions, UnscoredPolicy};
use ztee_supply::Store;

const DEBIAN_RECORDS: usize = 60_000;
const RUNS: usize = 5;

fn median(mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn cache_store() -> Option<(Store, String)> {
    let dir = std::env::var_os("ZTEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ztee")
        })
        .join("supply-test");
    let store = Store::open(&dir).ok()?;
    store.lookup_tag("python:bookworm").ok()??;
    Some((store, "python:bookworm".into()))
}

/// A deterministic pseudo-random sequence (xorshift), so every run scans the same data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn synthetic_debian(dir: &Path, catalog: &Catalog) -> PathBuf {
    let mut sources: Vec<String> = catalog
        .packages
        .iter()
        .filter(|p| p.kind == PackageKind::Deb)
        .filter_map(|p| p.source.as_ref().map(|s| s.0.clone()))
        .collect();
    sources.sort();
    sources.dedup();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut records = Vec::with_capacity(DEBIAN_RECORDS);
    for i in 0..DEBIAN_RECORDS {
        let release =
            ["Debian:12", "Debian:11", "Debian:10", "Debian:13"][(rng.next() % 4) as usize];
        // About one record in three names a package the image has, as in the real data.
        let name = if rng.next() % 3 == 0 {
            sources[(rng.next() as usize) % sources.len()].clone()
        } else {
            format!("synthetic-pkg-{}", rng.next() % 20_000)
        };
        let fixed = format!(
            "{}.{}.{}-{}+deb12u{}",
            rng.next() % 4,
            rng.next() % 20,
            rng.next() % 30,
            1 + rng.next() % 3,
            rng.next() % 5
        );
        let vector = [
            "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N",
            "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:N/A:N",
        ][(rng.next() % 3) as usize];
        records.push(serde_json::json!({
            "id": format!("SYNTH-DEB-{i}"), "modified": "2026-01-01T00:00:00Z",
            "summary": "synthetic record for the scan benchmark",
            "severity": [{"type": "CVSS_V3", "score": vector}],
            "affected": [{"package": {"ecosystem": release, "name": name},
                          "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]
        }));
    }
    let path = dir.join("debian-synthetic.json");
    std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
    path
}

fn main() {
    let fallback = tempfile::tempdir().unwrap();
    let (store, name) = match cache_store() {
        Some(found) => found,
        None => {
            eprintln!("SKIPPED (default image): run `cargo test -p ztee-supply --test build` first; benchmarking a tiny image instead");
            let store = Store::open(fallback.path()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
            std::fs::write(dir.path().join("etc-os"), "").unwrap();
            let layer = ztee_supply::layers::pack_directory(&store, dir.path(), 0).unwrap();
            ztee_supply::layers::commit_image(
                &store,
                "tiny:1",
                &[layer],
                Default::default(),
                Default::default(),
            )
            .unwrap();
            (store, "tiny:1".into())
        }
    };
    let digest = store.resolve(&name.parse().unwrap()).unwrap().digest;

    let mut catalog = sbom::catalog_image(&store, &name, &digest).unwrap();
    let sbom_time = median(|| {
        catalog = sbom::catalog_image(&store, &name, &digest).unwrap();
    });
    let cdx_time = median(|| {
        let _ = serde_json::to_vec(&sbom::cyclonedx::document(&catalog)).unwrap();
    });
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let agent_crates = catalog
        .add_cargo_lock(&lock, Some("ztee-agent"))
        .unwrap_or(0);

    let work = tempfile::tempdir().unwrap();
    let db = VulnDb::open(work.path());
    let data = synthetic_debian(work.path(), &catalog);
    let t = Instant::now();
    db.import(&data).unwrap();
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/osv");
    if osv.is_dir() {
        db.import(&osv.join("pypi/vulns")).unwrap();
        db.import(&osv.join("crates.io")).unwrap();
    }
    let import_time = t.elapsed();
    let records: usize = db.meta().unwrap().records.values().sum();

    let options = ScanOptions {
        fail_on_cvss: 7.0,
        unscored: UnscoredPolicy::Block,
        ignore_unfixed: false,
        suppressions: vec![],
        today: ztee_supply::now().date(),
    };
    let mut findings = 0;
    let scan_time = median(|| {
        findings = scan(&catalog, &db, &options).unwrap().findings.len();
    });

    let packages = catalog.packages.len();
    let debs = catalog.count(PackageKind::Deb);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("image {name} ({digest}), {packages} packages ({debs} deb, {agent_crates} guest-agent crates), {records} OSV records, median of {RUNS} runs");
    println!("| operation                          | time (ms) | per package (µs) | vs SBOM |");
    println!("|------------------------------------|----------:|-----------------:|--------:|");
    let row = |op: &str, d: Duration| {
        println!(
            "| {op:<34} | {:>9.1} | {:>16.1} | {:>6.2}x |",
            ms(d),
            ms(d) * 1000.0 / packages.max(1) as f64,
            ms(d) / ms(sbom_time).max(1e-9)
        );
    };
    row("SBOM catalog (read layers)", sbom_time);
    row("CycloneDX document", cdx_time);
    row("scan (load DB + match)", scan_time);
    row("vulndb import (one-off)", import_time);
    println!("findings: {findings}");
}
