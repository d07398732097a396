//! The local vulnerability database: OSV records imported from JSON files, YAML files (the PyPI
//! advisory database's format), directories and zip archives (osv.dev's `all.zip` per
//! ecosystem), kept as one JSON file per ecosystem under `<data_dir>/vulndb/`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{write_atomic, Error, Result};
use crate::vuln::osv::Record;

/// Where osv.dev publishes one `all.zip` per ecosystem.
pub const DEFAULT_OSV_URL: &str = "https://osv-vulnerabilities.storage.googleapis.com";
/// The ecosystems an image with Debian packages, Python, npm and Rust code needs.
pub const DEFAULT_ECOSYSTEMS: &[&str] = &["Debian", "PyPI", "npm", "crates.io"];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Records per ecosystem family (`Debian`, `PyPI`, ...).
    pub records: BTreeMap<String, usize>,
    pub updated_at: Option<String>,
    pub sources: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub files_read: usize,
    pub records_added: usize,
    pub records_updated: usize,
    pub records_unchanged: usize,
    /// Files that were not OSV records, with the reason (the import goes on without them).
    pub skipped: Vec<String>,
}

pub struct VulnDb {
    dir: PathBuf,
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

/// Parses one document: a single record or an array of records, JSON or YAML.
fn parse_records(bytes: &[u8], yaml: bool) -> std::result::Result<Vec<Record>, String> {
    if yaml {
        return serde_norway::from_slice::<Record>(bytes)
            .map(|r| vec![r])
            .map_err(|e| e.to_string());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            .collect(),
        v => serde_json::from_value(v)
            .map(|r| vec![r])
            .map_err(|e| e.to_string()),
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

impl VulnDb {
    pub fn open(data_dir: &Path) -> VulnDb {
        VulnDb {
            dir: data_dir.join("vulndb"),
        }
    }

    pub fn meta(&self) -> Result<Meta> {
        let path = self.dir.join("meta.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::malformed(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    /// The records of one ecosystem family.
    pub fn load_family(&self, family_name: &str) -> Result<Vec<Record>> {
        let path = self.dir.join(family_file_name(family_name));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::malformed(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    /// Imports every OSV record under `path`: a `.json`/`.yaml` file, a `.zip` archive, or a
    /// directory searched recursively for those. Newer `modified` wins for an id seen twice.
    pub fn import(&self, path: &Path) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let mut incoming: Vec<Record> = Vec::new();
        collect(path, &mut incoming, &mut report)?;
        if incoming.is_empty() {
            return Err(Error::VulnDb(format!(
                "{}: no OSV records found (expected .json/.yaml records or a .zip of them)",
                path.display()
            )));
        }
        self.merge(incoming, &path.display().to_string(), &mut report)?;
        Ok(report)
    }

    fn merge(&self, incoming: Vec<Record>, source: &str, report: &mut ImportReport) -> Result<()> {
        let mut by_family: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for record in incoming {
            let fam = record
                .affected
                .iter()
                .find_map(|a| a.package.as_ref().map(|p| family(&p.ecosystem).to_string()))
                .unwrap_or_else(|| "unknown".to_string());
            by_family.entry(fam).or_default().push(slim(record));
        }
        let mut meta = self.meta()?;
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
            let bytes = serde_json::to_vec(&all)
                .map_err(|e| Error::malformed("vulnerability database", e))?;
            write_atomic(&self.dir.join(family_file_name(&fam)), &bytes)?;
            meta.records.insert(fam, all.len());
        }
        meta.updated_at = Some(crate::sbom::cyclonedx::now_rfc3339());
        if !meta.sources.iter().any(|s| s == source) {
            meta.sources.push(source.to_string());
        }
        let bytes = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::malformed("vulnerability database meta", e))?;
        write_atomic(&self.dir.join("meta.json"), &bytes)
    }

    /// Downloads `<base_url>/<ecosystem>/all.zip` for each ecosystem and imports it. Each archive
    /// is checked to be a readable zip before anything is merged.
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
        let mut total = ImportReport::default();
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
            progress(&format!("importing {eco}"));
            let mut report = ImportReport::default();
            let mut incoming = Vec::new();
            collect_zip(tmp.path(), &mut incoming, &mut report)
                .map_err(|e| Error::VulnDb(format!("{url}: {e}")))?;
            self.merge(incoming, &url, &mut report)?;
            total.files_read += report.files_read;
            total.records_added += report.records_added;
            total.records_updated += report.records_updated;
            total.records_unchanged += report.records_unchanged;
            total.skipped.extend(report.skipped);
        }
        Ok(total)
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

fn collect(path: &Path, out: &mut Vec<Record>, report: &mut ImportReport) -> Result<()> {
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
            match parse_records(&bytes, kind == "yaml") {
                Ok(records) => out.extend(records),
                Err(e) => report.skipped.push(format!("{}: {e}", path.display())),
            }
            Ok(())
        }
        None => Err(Error::VulnDb(format!(
            "{}: not a .json, .yaml or .zip file",
            path.display()
        ))),
    }
}

fn collect_zip(path: &Path, out: &mut Vec<Record>, report: &mut ImportReport) -> Result<()> {
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
        match parse_records(&bytes, kind == "yaml") {
            Ok(records) => out.extend(records),
            Err(e) => report
                .skipped
                .push(format!("{}:{name}: {e}", path.display())),
        }
    }
    Ok(())
}
