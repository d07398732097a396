//! `ztee vulndb`: the offline OSV vulnerability database image scans use.
//!
//! Examples:
//!   ztee vulndb update                                  # on a host with internet: Debian, PyPI, npm, crates.io
//!   ztee vulndb update --url http://mirror.internal/osv --ecosystem Debian
//!   ztee vulndb import Debian-all.zip PyPI-all.zip       # on an air-gapped host
//!   ztee vulndb import ./advisory-database/vulns/        # a directory of OSV .json/.yaml files
//!   ztee vulndb import cvelistV5/cves/ debian-tracker.json  # CVE JSON 5 scores, Debian statuses
//!   ztee vulndb status

use std::path::PathBuf;

use crate::terminal::Spinner;
use clap::Subcommand;
use ztee_supply::vuln::db::{ImportReport, VulnDb, DEFAULT_ECOSYSTEMS, DEFAULT_OSV_URL};

use crate::globals::GlobalArgs;
use crate::output;

#[derive(Subcommand)]
pub enum Command {
    /// Load records from files: OSV `.json` or `.yaml` records, CVE JSON 5 records (cvelistV5),
    /// the Debian security tracker's JSON, `.zip` archives of them (osv.dev's
    /// `<ecosystem>/all.zip`), or directories holding them. All or nothing: a malformed record
    /// stops the import and nothing is changed. Works offline.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Download `<URL>/<ecosystem>/all.zip` for each ecosystem and import it.
    Update {
        /// Base URL of an OSV export (osv.dev's bucket, or a mirror of it).
        #[arg(long, default_value = DEFAULT_OSV_URL)]
        url: String,
        /// Ecosystem to download (repeatable). Default: Debian, PyPI, npm, crates.io.
        #[arg(long = "ecosystem")]
        ecosystems: Vec<String>,
    },
    /// Show what the database holds and when it was last changed.
    Status,
}

fn print_report(globals: &GlobalArgs, report: &ImportReport) -> anyhow::Result<()> {
    output::print_object(
        globals.format,
        report,
        &[
            ("files read", report.files_read.to_string()),
            ("records added", report.records_added.to_string()),
            ("records updated", report.records_updated.to_string()),
            ("records unchanged", report.records_unchanged.to_string()),
            ("CVE records read", report.cve_records.to_string()),
            (
                "Debian tracker entries read",
                report.tracker_entries.to_string(),
            ),
            ("files skipped", report.skipped.len().to_string()),
        ],
    )?;
    for s in report.skipped.iter().take(10) {
        eprintln!("skipped: {s}");
    }
    Ok(())
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let db = VulnDb::open(&globals.data_dir);
    match command {
        Command::Import { paths } => {
            let spinner = Spinner::new("vulndb import");
            let report = db.import_all(&paths)?;
            spinner.finish("done");
            print_report(globals, &report)?;
            Ok(0)
        }
        Command::Update { url, ecosystems } => {
            let chosen: Vec<&str> = if ecosystems.is_empty() {
                DEFAULT_ECOSYSTEMS.to_vec()
            } else {
                ecosystems.iter().map(String::as_str).collect()
            };
            let spinner = Spinner::new("vulndb update");
            let report = db.update(&url, &chosen, |m| spinner.set(m))?;
            spinner.finish("done");
            print_report(globals, &report)?;
            Ok(0)
        }
        Command::Status => {
            let meta = db.meta()?;
            let mut rows: Vec<(String, usize)> =
                meta.records.iter().map(|(k, v)| (k.clone(), *v)).collect();
            rows.push(("CVE records with CVSS".into(), meta.cve_records));
            rows.push((
                "Debian tracker packages".into(),
                meta.debian_tracker_packages,
            ));
            match globals.format {
                crate::globals::Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&meta)?)
                }
                crate::globals::Format::Table => {
                    output::print_list(
                        globals.format,
                        &["ECOSYSTEM", "RECORDS"],
                        &rows,
                        |(e, n)| vec![e.clone(), n.to_string()],
                    )?;
                    println!(
                        "updated: {}",
                        meta.updated_at
                            .as_deref()
                            .unwrap_or("never (run `ztee vulndb update` or `import`)")
                    );
                }
            }
            Ok(0)
        }
    }
}
