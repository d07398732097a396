//! The local vulnerability database: OSV records imported from JSON files, YAML files (the PyPI
//! advisory database's format), directories and zip archives (osv.dev's `all.zip` per
//! ecosystem), kept as one JSON file per ecosystem under `<data_dir>/vulndb/`; the CVSS metrics
//! of CVE JSON 5 records (`scores/cve.json`); and the Debian security tracker's per-release
//! statuses (`debian/tracker.json`).
//!
//! An import is all or nothing: every input is read and checked first, then the new database is
//! written beside the old one and swapped in with one `renameat2(RENAME_EXCHANGE)`, under a lock.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vuln::cve5::{self, CveScores};
use crate::vuln::debian::{self, Tracker};
use crate::vuln::osv::Record;

/// Where osv.dev publishes one `all.zip` per ecosystem.
pub const DEFAULT_OSV_URL: &str = "https://osv-vulnerabilities.storage.googleapis.com";
/// The ecosystems an image with Debian packages, Python, npm and Rust code needs.
pub const DEFAULT_ECOSYSTEMS: &[&str] = &["Debian", "PyPI", "npm", "crates.io"];

const CVE_FILE: &str = "scores/cve.json";
const TRACKER_FILE: &str = "debian/tracker.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Records per ecosystem family (`Debian`, `PyPI`, ...).
    pub records: BTreeMap<String, usize>,
    pub updated_at: Option<String>,
    pub sources: Vec<String>,
    /// CVE JSON 5 records that carry at least one CVSS metric.
    #[serde(default)]
    pub cve_records: usize,
    /// Source packages the Debian security tracker data covers.
    #[serde(default)]
    pub debian_tracker_packages: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub files_read: usize,
    /// OSV records.
    pub records_added: usize,
    pub records_updated: usize,
    pub records_unchanged: usize,
    /// CVE JSON 5 records read (published and rejected).
    pub cve_records: usize,
    /// (source package, issue) entries of the Debian tracker read.
    pub tracker_entries: usize,
    /// Files that hold none of the formats ztee reads, with the reason (the import goes on
    /// without them). A file in one of those formats that does not parse stops the import.
    pub skipped: Vec<String>,
}

impl ImportReport {
    fn add(&mut self, other: ImportReport) {
        self.files_read += other.files_read;
        self.records_added += other.records_added;
        self.records_updated += other.records_updated;
        self.records_unchanged += other.records_unchanged;
        self.cve_records += other.cve_records;
        self.tracker_entries += other.tracker_entries;
        self.skipped.extend(other.skipped);
    }
}

pub struct VulnDb {
    dir: PathBuf,
}

/// Everything read from the inputs of one import, before anything is written.
#[derive(Default)]
struct Incoming {
    osv: Vec<Record>,
    /// `(id, None)` for a rejected record.
    cves: Vec<(String, Option<CveScores>)>,
    tracker: Tracker,
}

/// The family an ecosystem string belongs to: `Debian:12` → `Debian`.
fn family(ecosystem: &str) -> &str {
    ecosystem.split(':').next().unwrap_or(ecosystem)
}

fn family_file_name(family: &str) -> String {
    let safe: String = family
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

/// Whether a JSON object reads as an OSV record (an `id` plus a field every OSV record has).
fn is_osv(value: &serde_json::Value) -> bool {
    value.get("id").is_some_and(|v| v.is_string())
        && ["affected", "modified", "schema_version", "aliases"]
            .iter()
            .any(|k| value.get(k).is_some())
}

fn parse_osv(value: serde_json::Value, origin: &str) -> Result<Record> {
    let id = value
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("(no id)")
        .to_string();
    serde_path_to_error::deserialize(value)
        .map_err(|e| Error::VulnDb(format!("{origin}: {id}: {}: {}", e.path(), e.inner())))
}

/// Reads one document into `into`: an OSV record or an array of them (JSON or YAML), a CVE JSON 5
/// record or an array of them, or the Debian tracker's JSON. Returns `Ok(false)` for a JSON
/// document in none of those shapes (reported as skipped by the caller).
fn parse_document(bytes: &[u8], yaml: bool, origin: &str, into: &mut Incoming) -> Result<bool> {
    if yaml {
        let record: Record = serde_norway::from_slice(bytes)
            .map_err(|e| Error::VulnDb(format!("{origin}: not an OSV record: {e}")))?;
        into.osv.push(record);
        return Ok(true);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::VulnDb(format!("{origin}: not valid JSON: {e}")))?;
    let one = |value: serde_json::Value, at: &str, into: &mut Incoming| -> Result<()> {
        if cve5::is_cve_record(&value) {
            into.cves
                .push(cve5::parse(value).map_err(|e| Error::VulnDb(format!("{at}: {e}")))?);
        } else {
            into.osv.push(parse_osv(value, at)?);
        }
        Ok(())
    };
    match value {
        serde_json::Value::Array(items) => {
            let known = items
                .iter()
                .filter(|v| cve5::is_cve_record(v) || is_osv(v))
                .count();
            if known == 0 {
                return Ok(false);
            }
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("{origin}: [{i}]");
                if !(cve5::is_cve_record(&item) || is_osv(&item)) {
                    return Err(Error::VulnDb(format!(
                        "{at}: neither an OSV record nor a CVE JSON 5 record, in an array of them"
                    )));
                }
                one(item, &at, into)?;
            }
            Ok(true)
        }
        v if cve5::is_cve_record(&v) || is_osv(&v) => {
            one(v, origin, into)?;
            Ok(true)
        }
        v if debian::is_tracker(&v) => {
            let tracker = debian::parse(v).map_err(|e| Error::VulnDb(format!("{origin}: {e}")))?;
            for (package, issues) in tracker {
                into.tracker.entry(package).or_default().extend(issues);
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Drops what matching never reads, so a full Debian data set stays small on disk and in memory:
/// long details, and explicit version lists where ranges already say the same.
fn slim(mut record: Record) -> Record {
    if record.summary.is_none() {
        record.summary = record
            .details
            .as_ref()
            .map(|d| d.chars().take(200).collect());
    }
    record.details = None;
    for a in &mut record.affected {
        if a.ranges
            .iter()
            .any(|r| r.kind == "ECOSYSTEM" || r.kind == "SEMVER")
        {
            a.versions.clear();
        }
        a.ranges.retain(|r| r.kind != "GIT");
    }
    record
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(path.display().to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

fn to_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::malformed(what.to_string(), e))
}

/// Hard-links (or, across file systems, copies) every file under `from` into `to`, except the
/// relative paths in `skip`. Database files are only ever replaced whole, never edited in place,
/// so a link shared with the old generation is safe.
fn carry_over(from: &Path, to: &Path, rel: &Path, skip: &BTreeMap<PathBuf, Vec<u8>>) -> Result<()> {
    let dir = from.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
        let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
        let rel_path = rel.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("reading", entry.path(), e))?;
        if kind.is_dir() {
            let target = to.join(&rel_path);
            std::fs::create_dir_all(&target)
                .map_err(|e| Error::io("creating directory", &target, e))?;
            carry_over(from, to, &rel_path, skip)?;
        } else if kind.is_file() && !skip.contains_key(&rel_path) {
            let target = to.join(&rel_path);
            if std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target)
                    .map_err(|e| Error::io("copying", entry.path(), e))?;
            }
        }
    }
    Ok(())
}

impl VulnDb {
    pub fn open(data_dir: &Path) -> VulnDb {
        VulnDb {
            dir: data_dir.join("vulndb"),
        }
    }

    pub fn meta(&self) -> Result<Meta> {
        read_json(&self.dir.join("meta.json"))
    }

    /// The records of one ecosystem family.
    pub fn load_family(&self, family_name: &str) -> Result<Vec<Record>> {
        read_json(&self.dir.join(family_file_name(family_name)))
    }

    /// The CVSS metrics of every imported CVE record that has one, by CVE id.
    pub fn load_cve_scores(&self) -> Result<HashMap<String, CveScores>> {
        let list: Vec<CveScores> = read_json(&self.dir.join(CVE_FILE))?;
        Ok(list.into_iter().map(|c| (c.id.clone(), c)).collect())
    }

    /// The Debian security tracker's statuses, by source package.
    pub fn load_debian_tracker(&self) -> Result<Tracker> {
        read_json(&self.dir.join(TRACKER_FILE))
    }

    /// Imports one path; see [`VulnDb::import_all`].
    pub fn import(&self, path: &Path) -> Result<ImportReport> {
        self.import_all(&[path.to_path_buf()])
    }

    /// Imports every record under `paths`: `.json`/`.yaml` files, `.zip` archives, or
    /// directories searched recursively for those. Each JSON document may be OSV (one record or
    /// an array), CVE JSON 5 (likewise) or the Debian tracker's JSON. Newer `modified` (OSV) or
    /// `dateUpdated` (CVE) wins for an id seen twice. Nothing is written unless every input
    /// parses.
    pub fn import_all(&self, paths: &[PathBuf]) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let mut incoming = Incoming::default();
        for path in paths {
            collect(path, &mut incoming, &mut report)?;
        }
        if incoming.osv.is_empty() && incoming.cves.is_empty() && incoming.tracker.is_empty() {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::VulnDb(format!(
                "{}: no records found (expected OSV or CVE JSON 5 records, the Debian tracker's JSON, or a .zip of them)",
                shown.join(", ")
            )));
        }
        let sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        self.commit(incoming, &sources, &mut report)?;
        Ok(report)
    }

    /// Holds the database's lock until dropped, so two imports never interleave their
    /// read-modify-write.
    fn lock(&self) -> Result<std::fs::File> {
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
        let path = parent.join("vulndb.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking", &path, e.into()))?;
        Ok(file)
    }

    fn commit(
        &self,
        incoming: Incoming,
        sources: &[String],
        report: &mut ImportReport,
    ) -> Result<()> {
        let _lock = self.lock()?;
        let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        let mut meta = self.meta()?;

        let mut by_family: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for record in incoming.osv {
            let fam = record
                .affected
                .iter()
                .find_map(|a| a.package.as_ref().map(|p| family(&p.ecosystem).to_string()))
                .unwrap_or_else(|| "unknown".to_string());
            by_family.entry(fam).or_default().push(slim(record));
        }
        for (fam, records) in by_family {
            let mut existing: HashMap<String, Record> = self
                .load_family(&fam)?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect();
            for record in records {
                match existing.get(&record.id) {
                    Some(old) if old.modified >= record.modified => report.records_unchanged += 1,
                    Some(_) => {
                        report.records_updated += 1;
                        existing.insert(record.id.clone(), record);
                    }
                    None => {
                        report.records_added += 1;
                        existing.insert(record.id.clone(), record);
                    }
                }
            }
            let mut all: Vec<Record> = existing.into_values().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            files.insert(
                PathBuf::from(family_file_name(&fam)),
                to_json(&all, "vulnerability database")?,
            );
            meta.records.insert(fam, all.len());
        }

        if !incoming.cves.is_empty() {
            let mut scores = self.load_cve_scores()?;
            for (id, record) in incoming.cves {
                report.cve_records += 1;
                match record {
                    // A record older than the one kept changes nothing.
                    Some(r) if scores.get(&id).is_some_and(|old| old.updated > r.updated) => {}
                    Some(r) if r.has_metrics() => {
                        scores.insert(id, r);
                    }
                    // Rejected, or no CVSS metric (any more): nothing to score with.
                    _ => {
                        scores.remove(&id);
                    }
                }
            }
            let mut all: Vec<CveScores> = scores.into_values().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            meta.cve_records = all.len();
            files.insert(PathBuf::from(CVE_FILE), to_json(&all, "CVE scores")?);
        }

        if !incoming.tracker.is_empty() {
            let mut tracker = self.load_debian_tracker()?;
            for (package, issues) in incoming.tracker {
                report.tracker_entries += issues.len();
                tracker.entry(package).or_default().extend(issues);
            }
            meta.debian_tracker_packages = tracker.len();
            files.insert(
                PathBuf::from(TRACKER_FILE),
                to_json(&tracker, "Debian tracker")?,
            );
        }

        meta.updated_at = Some(crate::sbom::cyclonedx::now_rfc3339());
        for source in sources {
            if !meta.sources.contains(source) {
                meta.sources.push(source.clone());
            }
        }
        files.insert(
            PathBuf::from("meta.json"),
            serde_json::to_vec_pretty(&meta)
                .map_err(|e| Error::malformed("vulnerability database meta", e))?,
        );
        self.swap_in(files)
    }

    /// Writes a new generation of the database (the current files not in `files`, plus
    /// `files`) beside the current one and exchanges the two directories atomically, so a
    /// reader or a crash sees either the old database or the new one, never a mix.
    fn swap_in(&self, files: BTreeMap<PathBuf, Vec<u8>>) -> Result<()> {
        use std::io::Write;
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        let staging = tempfile::Builder::new()
            .prefix(".vulndb-new-")
            .tempdir_in(parent)
            .map_err(|e| Error::io("creating directory in", parent, e))?;
        let exists = self.dir.is_dir();
        if exists {
            carry_over(&self.dir, staging.path(), Path::new(""), &files)?;
        }
        for (rel, bytes) in &files {
            let path = staging.path().join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io("creating directory", dir, e))?;
            }
            let mut file =
                std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("writing", &path, e))?;
        }
        if exists {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                staging.path(),
                rustix::fs::CWD,
                &self.dir,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| Error::io("swapping in the new database at", &self.dir, e.into()))?;
            // `staging` now names the old generation; dropping it removes it.
            Ok(())
        } else {
            let path = staging.keep();
            std::fs::rename(&path, &self.dir)
                .map_err(|e| Error::io("moving the new database to", &self.dir, e))
        }
    }

    /// Downloads `<base_url>/<ecosystem>/all.zip` for each ecosystem and imports them all at
    /// once: every archive must download and read as a zip of records before anything is
    /// merged.
    pub fn update(
        &self,
        base_url: &str,
        ecosystems: &[&str],
        mut progress: impl FnMut(&str),
    ) -> Result<ImportReport> {
        // Blocking like the rest of the crate; the read timeout bounds each silence, not the
        // whole download of a large archive.
        let http = crate::registry::http_client(std::time::Duration::from_secs(600))
            .map_err(Error::VulnDb)?;
        let mut report = ImportReport::default();
        let mut incoming = Incoming::default();
        let mut urls = Vec::new();
        for eco in ecosystems {
            let url = format!("{}/{}/all.zip", base_url.trim_end_matches('/'), eco);
            progress(&format!("downloading {url}"));
            let response = crate::registry::execute(&http, "GET", &url, &[], None, None)
                .map_err(|e| Error::VulnDb(format!("{url}: {e}")))?;
            let code = response.status().as_u16();
            if code >= 400 {
                return Err(Error::VulnDb(format!("{url}: HTTP {code}")));
            }
            let tmp = tempfile::NamedTempFile::new()
                .map_err(|e| Error::io("creating temp file", std::env::temp_dir(), e))?;
            let mut file = tmp
                .reopen()
                .map_err(|e| Error::io("opening", tmp.path(), e))?;
            std::io::copy(&mut response.take(4 << 30), &mut file)
                .map_err(|e| Error::VulnDb(format!("{url}: download interrupted: {e}")))?;
            progress(&format!("reading {eco}"));
            let mut one = ImportReport::default();
            collect_zip(tmp.path(), &mut incoming, &mut one)
                .map_err(|e| Error::VulnDb(format!("{url}: {e}")))?;
            report.add(one);
            urls.push(url);
        }
        progress("importing");
        self.commit(incoming, &urls, &mut report)?;
        Ok(report)
    }
}

fn kind_of(path: &Path) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Some("json"),
        Some("yaml") | Some("yml") => Some("yaml"),
        Some("zip") => Some("zip"),
        _ => None,
    }
}

fn collect(path: &Path, out: &mut Incoming, report: &mut ImportReport) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::io("listing", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() || kind_of(&entry).is_some() {
                collect(&entry, out, report)?;
            }
        }
        return Ok(());
    }
    match kind_of(path) {
        Some("zip") => collect_zip(path, out, report),
        Some(kind) => {
            let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
            report.files_read += 1;
            let origin = path.display().to_string();
            if !parse_document(&bytes, kind == "yaml", &origin, out)? {
                report.skipped.push(format!(
                    "{origin}: not an OSV record, a CVE JSON 5 record or the Debian tracker's JSON"
                ));
            }
            Ok(())
        }
        None => Err(Error::VulnDb(format!(
            "{}: not a .json, .yaml or .zip file",
            path.display()
        ))),
    }
}

fn collect_zip(path: &Path, out: &mut Incoming, report: &mut ImportReport) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::VulnDb(format!("{}: not a zip archive: {e}", path.display())))?;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| Error::VulnDb(format!("{}: entry {i}: {e}", path.display())))?;
        let name = entry.name().to_string();
        let Some(kind) = kind_of(Path::new(&name)).filter(|k| *k != "zip") else {
            continue;
        };
        let mut bytes = Vec::new();
        entry
            .by_ref()
            .take(64 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::VulnDb(format!("{}: {name}: {e}", path.display())))?;
        report.files_read += 1;
        let origin = format!("{}:{name}", path.display());
        if !parse_document(&bytes, kind == "yaml", &origin, out)? {
            report.skipped.push(format!(
                "{origin}: not an OSV record, a CVE JSON 5 record or the Debian tracker's JSON"
            ));
        }
    }
    Ok(())
}
