//! `ztee image`: build, inventory, scan, sign, attest, verify, push and pull VM images.
//!
//! Examples:
//!   sudo ztee image build guest/images/python.toml
//!   ztee image ls
//!   ztee image sbom python:bookworm --sbom-format spdx-json > python.spdx.json
//!   ztee image scan python:bookworm --fail-on-cvss 7.0 --vex accepted-risks.yaml
//!   ztee image scan python:bookworm --unscored warn      # report unscored findings, pass
//!   ztee image sign python:bookworm --key signing.key
//!   ztee image attest python:bookworm --key signing.key --type cyclonedx
//!   ztee image attest python:bookworm --key signing.key --type vuln
//!   ztee image verify python:bookworm --policy admission.yaml
//!   ztee image push python:bookworm registry.example/vm/python:1
//!   ztee image pull registry.example/vm/python:1

use std::path::PathBuf;

use crate::terminal::Spinner;
use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};
use ztee_supply::admission::{self, AdmissionError, LoadedPolicy};
use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX, PREDICATE_SPDX, PREDICATE_VULN};
use ztee_supply::registry::{self, Credentials, RegistryOptions};
use ztee_supply::sbom::{self, Catalog};
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{
    self, ScanOptions, ScanReport, UnscoredPolicy, DEFAULT_FAIL_ON_CVSS,
};
use ztee_supply::vuln::vex;
use ztee_supply::{keys, sign, Reference, Store};

use crate::globals::{Format, GlobalArgs};
use crate::output;

/// Exit code of `scan` and `verify` when the image is refused (errors exit 1).
const EXIT_REFUSED: u8 = 3;

#[derive(Subcommand)]
pub enum Command {
    /// Build an image from a rootfs recipe with debootstrap (needs root; minutes; cached by
    /// recipe hash).
    Build {
        /// A recipe such as guest/images/python.toml.
        recipe: PathBuf,
    },
    /// List the images in the local store.
    Ls,
    /// Show an image's digest, layers and configuration.
    Inspect { reference: String },
    /// Give an image another name in the local store.
    Tag { source: String, target: String },
    /// Remove a name from the local store (blobs stay until `gc`).
    Rm { reference: String },
    /// Delete blobs no name reaches.
    Gc,
    /// Print the image's SBOM (CycloneDX 1.5 or SPDX 2.3 JSON) on stdout.
    Sbom {
        reference: String,
        /// Document format (the global --format only changes how tables print).
        #[arg(long, value_enum, default_value_t = SbomFormat::CyclonedxJson)]
        sbom_format: SbomFormat,
        #[command(flatten)]
        extra: ExtraSources,
    },
    /// Scan the image against the local OSV database; exit 3 when a finding scores at or above
    /// the threshold.
    Scan {
        reference: String,
        #[command(flatten)]
        scan: ScanArgs,
        #[command(flatten)]
        extra: ExtraSources,
        /// Also write cosign's vulnerability attestation predicate to this file.
        #[arg(long)]
        predicate_out: Option<PathBuf>,
    },
    /// Sign the image (cosign-compatible; stored as the `sha256-<hex>.sig` artifact).
    Sign {
        reference: String,
        #[arg(long)]
        key: PathBuf,
        /// The `docker-reference` the signature claims (default: the image's repository).
        #[arg(long)]
        identity: Option<String>,
        /// Extra `optional` claims, KEY=VALUE (repeatable).
        #[arg(short = 'a', long = "annotation")]
        annotations: Vec<String>,
    },
    /// Attest the image (DSSE in-toto statement, stored as the `sha256-<hex>.att` artifact).
    /// Without --predicate, the SBOM or scan is computed now.
    Attest {
        reference: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long = "type", value_enum)]
        kind: AttestationType,
        /// A predicate file to attest instead of computing one.
        #[arg(long)]
        predicate: Option<PathBuf>,
        #[command(flatten)]
        scan: ScanArgs,
        #[command(flatten)]
        extra: ExtraSources,
    },
    /// Verify the image's signature (and with --policy, the whole admission policy).
    Verify {
        reference: String,
        /// Trusted public key(s) for a signature-only check.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// An admission policy (Kyverno verifyImages shape); see docs/supply-chain.md.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Also build the read-only erofs root filesystem, as booting would.
        #[arg(long)]
        rootfs: bool,
    },
    /// Push a local image, with its signature and attestations, to a registry.
    /// Credentials: ZTEE_REGISTRY_USERNAME and ZTEE_REGISTRY_PASSWORD.
    Push {
        source: String,
        destination: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull an image, with its signature and attestations, from a registry.
    Pull {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SbomFormat {
    CyclonedxJson,
    SpdxJson,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AttestationType {
    Cyclonedx,
    Spdx,
    Vuln,
}

#[derive(clap::Args)]
pub struct ScanArgs {
    /// Fail when a finding's CVSS v3 base score is at least this.
    #[arg(long, default_value_t = DEFAULT_FAIL_ON_CVSS)]
    fail_on_cvss: f64,
    /// What a finding that no source gives a CVSS score does: `block` fails the scan (an
    /// unknown severity is not known to be harmless), `warn` reports it and passes.
    #[arg(long, default_value = "block")]
    unscored: UnscoredPolicy,
    /// Leave out findings that have no fixed version yet.
    #[arg(long)]
    ignore_unfixed: bool,
    /// An allowlist (YAML: vulnerabilities: [{id, statement, expires, packages}]) or an
    /// OpenVEX document (repeatable).
    #[arg(long)]
    vex: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct ExtraSources {
    /// Also inventory the crates of a Cargo.lock outside the image, as PATH or PATH#PACKAGE
    /// (that package's dependency closure), e.g. Cargo.lock#ztee-agent for the guest agent.
    #[arg(long)]
    extra_cargo_lock: Vec<String>,
}

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Talk plain HTTP (always on for localhost and 127.0.0.0/8).
    #[arg(long)]
    plain_http: bool,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        let credentials = match (
            std::env::var("ZTEE_REGISTRY_USERNAME"),
            std::env::var("ZTEE_REGISTRY_PASSWORD"),
        ) {
            (Ok(username), Ok(password)) => Some(Credentials {
                username,
                password: password.into(),
            }),
            _ => None,
        };
        RegistryOptions {
            credentials,
            plain_http: self.plain_http,
        }
    }
}

fn parse_ref(s: &str) -> anyhow::Result<Reference> {
    Ok(s.parse::<Reference>()?)
}

fn catalog(store: &Store, reference: &Reference, extra: &ExtraSources) -> anyhow::Result<Catalog> {
    let digest = store.resolve(reference)?.digest;
    let mut catalog = sbom::catalog_image(store, &reference.to_string(), &digest)?;
    for spec in &extra.extra_cargo_lock {
        let (path, root) = match spec.split_once('#') {
            Some((p, r)) => (p, Some(r)),
            None => (spec.as_str(), None),
        };
        catalog
            .add_cargo_lock(std::path::Path::new(path), root)
            .with_context(|| format!("--extra-cargo-lock {spec}"))?;
    }
    Ok(catalog)
}

fn run_scan(
    globals: &GlobalArgs,
    catalog: &Catalog,
    args: &ScanArgs,
) -> anyhow::Result<ScanReport> {
    let mut suppressions = Vec::new();
    for path in &args.vex {
        suppressions.extend(vex::load(path)?);
    }
    let db = VulnDb::open(&globals.data_dir);
    if db.meta()?.records.is_empty() {
        bail!("the vulnerability database is empty: run `ztee vulndb update` (online) or `ztee vulndb import FILE` (offline) first");
    }
    let options = ScanOptions {
        fail_on_cvss: args.fail_on_cvss,
        unscored: args.unscored,
        ignore_unfixed: args.ignore_unfixed,
        suppressions,
        today: ztee_supply::now().date(),
    };
    Ok(scan::scan(catalog, &db, &options)?)
}

fn signing_key(path: &std::path::Path) -> anyhow::Result<keys::SigningKey> {
    let pass =
        crate::terminal::read_passphrase(&format!("Passphrase for {}: ", path.display()), false)?;
    Ok(keys::load_signing_key(path, &pass)?)
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let store = Store::open(&globals.data_dir)?;
    match command {
        Command::Build { recipe } => {
            let loaded = ztee_supply::build::load_recipe(&recipe)?;
            let spinner = Spinner::new(&format!("build {}", loaded.recipe.name));
            let result = ztee_supply::build::build(
                &store,
                &loaded,
                &globals.data_dir.join("build"),
                &mut |m: &str| spinner.set(m),
            )?;
            spinner.finish(if result.cached { "cached" } else { "built" });
            output::print_object(
                globals.format,
                &result,
                &[
                    ("image", result.reference.clone()),
                    ("digest", result.descriptor.digest.to_string()),
                    ("cached", result.cached.to_string()),
                    ("SOURCE_DATE_EPOCH", result.source_date_epoch.to_string()),
                ],
            )?;
            Ok(0)
        }
        Command::Ls => {
            let images: Vec<_> = store
                .list()?
                .into_iter()
                .filter(|i| !i.name.ends_with(".sig") && !i.name.ends_with(".att"))
                .collect();
            let all = store.list()?;
            output::print_list(
                globals.format,
                &["IMAGE", "DIGEST", "SIGNED", "ATTESTED"],
                &images,
                |i| {
                    let has = |suffix: &str| {
                        let repo = i.name.rsplit_once(':').map_or(i.name.as_str(), |(r, _)| r);
                        let tag = format!("{repo}:{}", i.descriptor.digest.cosign_tag(suffix));
                        if all.iter().any(|x| x.name == tag) {
                            "yes"
                        } else {
                            "no"
                        }
                        .to_string()
                    };
                    vec![
                        i.name.clone(),
                        i.descriptor.digest.to_string(),
                        has("sig"),
                        has("att"),
                    ]
                },
            )?;
            Ok(0)
        }
        Command::Inspect { reference } => {
            let reference = parse_ref(&reference)?;
            let descriptor = store.resolve(&reference)?;
            let (manifest, _) = store.manifest(&descriptor.digest)?;
            let config: serde_json::Value =
                serde_json::from_slice(&store.read_blob(&manifest.config.digest)?)?;
            let size: u64 = manifest.layers.iter().map(|l| l.size).sum();
            let object = serde_json::json!({"reference": reference.to_string(), "descriptor": descriptor, "manifest": manifest, "config": config});
            output::print_object(
                globals.format,
                &object,
                &[
                    ("reference", reference.to_string()),
                    ("digest", descriptor.digest.to_string()),
                    ("media type", descriptor.media_type.clone()),
                    (
                        "layers",
                        format!("{} ({} bytes compressed)", manifest.layers.len(), size),
                    ),
                    (
                        "created",
                        config["created"].as_str().unwrap_or("-").to_string(),
                    ),
                    (
                        "os/arch",
                        format!(
                            "{}/{}",
                            config["os"].as_str().unwrap_or("?"),
                            config["architecture"].as_str().unwrap_or("?")
                        ),
                    ),
                ],
            )?;
            Ok(0)
        }
        Command::Tag { source, target } => {
            let descriptor = store.resolve(&parse_ref(&source)?)?;
            let target = parse_ref(&target)?;
            let tag = target
                .tag_or_latest()
                .context("the new name needs a tag, not a digest")?;
            store.tag(&format!("{}:{tag}", target.name()), descriptor)?;
            Ok(0)
        }
        Command::Rm { reference } => {
            let r = parse_ref(&reference)?;
            let name = format!("{}:{}", r.name(), r.tag_or_latest().unwrap_or("latest"));
            if !store.untag(&name)? {
                bail!("{name} is not in the local store");
            }
            Ok(0)
        }
        Command::Gc => {
            let report = store.gc()?;
            output::print_object(
                globals.format,
                &report,
                &[
                    ("blobs removed", report.blobs_removed.to_string()),
                    ("bytes freed", report.bytes_freed.to_string()),
                    ("blobs kept", report.blobs_kept.to_string()),
                ],
            )?;
            Ok(0)
        }
        Command::Sbom {
            reference,
            sbom_format,
            extra,
        } => {
            let catalog = catalog(&store, &parse_ref(&reference)?, &extra)?;
            let doc = match sbom_format {
                SbomFormat::CyclonedxJson => sbom::cyclonedx::document(&catalog),
                SbomFormat::SpdxJson => sbom::spdx::document(&catalog),
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(0)
        }
        Command::Scan {
            reference,
            scan: args,
            extra,
            predicate_out,
        } => {
            let started = ztee_supply::sbom::cyclonedx::now_rfc3339();
            let catalog = catalog(&store, &parse_ref(&reference)?, &extra)?;
            let report = run_scan(globals, &catalog, &args)?;
            if let Some(path) = predicate_out {
                let predicate = scan::cosign_vuln_predicate(&report, &started);
                std::fs::write(&path, serde_json::to_vec_pretty(&predicate)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print_scan(globals.format, &report)?;
            Ok(if report.passed { 0 } else { EXIT_REFUSED })
        }
        Command::Sign {
            reference,
            key,
            identity,
            annotations,
        } => {
            let reference = parse_ref(&reference)?;
            let signing = signing_key(&key)?;
            let mut optional = std::collections::BTreeMap::new();
            for a in annotations {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("annotation {a:?} is not KEY=VALUE"))?;
                optional.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let digest = sign::sign(&store, &reference, &signing, identity.as_deref(), optional)?;
            eprintln!(
                "signed {reference}@{digest} with key {}",
                keys::key_id(signing.verifying_key())
            );
            Ok(0)
        }
        Command::Attest {
            reference,
            key,
            kind,
            predicate,
            scan: args,
            extra,
        } => {
            let reference = parse_ref(&reference)?;
            let signing = signing_key(&key)?;
            let predicate_type = match kind {
                AttestationType::Cyclonedx => PREDICATE_CYCLONEDX,
                AttestationType::Spdx => PREDICATE_SPDX,
                AttestationType::Vuln => PREDICATE_VULN,
            };
            let value = match predicate {
                Some(path) => serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not JSON", path.display()))?,
                None => {
                    let started = ztee_supply::sbom::cyclonedx::now_rfc3339();
                    let catalog = catalog(&store, &reference, &extra)?;
                    match kind {
                        AttestationType::Cyclonedx => sbom::cyclonedx::document(&catalog),
                        AttestationType::Spdx => sbom::spdx::document(&catalog),
                        AttestationType::Vuln => scan::cosign_vuln_predicate(
                            &run_scan(globals, &catalog, &args)?,
                            &started,
                        ),
                    }
                }
            };
            let digest = dsse::attest(&store, &reference, &signing, predicate_type, value)?;
            eprintln!("attested {predicate_type} for {reference}@{digest}");
            Ok(0)
        }
        Command::Verify {
            reference,
            key,
            policy,
            rootfs,
        } => {
            let reference = parse_ref(&reference)?;
            if let Some(policy_path) = policy {
                let policy = LoadedPolicy::load(&policy_path)?;
                let now = ztee_supply::now();
                let result = if rootfs {
                    let builder = crate::rootfs_helper::builder()?;
                    admission::admit(
                        &store,
                        &globals.data_dir,
                        &reference,
                        &policy,
                        now,
                        &builder,
                    )
                    .map(|v| v.record().clone())
                } else {
                    admission::verify(&store, &reference, &policy, now)
                };
                return match result {
                    Ok(record) => {
                        let rules: Vec<String> =
                            record.rules.iter().map(|r| r.rule.clone()).collect();
                        output::print_object(
                            globals.format,
                            &record,
                            &[
                                ("image", record.reference.clone()),
                                ("digest", record.digest.to_string()),
                                ("verdict", "admitted".into()),
                                ("rules passed", rules.join(", ")),
                            ],
                        )?;
                        Ok(0)
                    }
                    Err(AdmissionError::Denied(denial)) => {
                        if globals.format == Format::Json {
                            println!("{}", serde_json::to_string_pretty(&denial)?);
                        }
                        eprintln!("error: {denial}");
                        Ok(EXIT_REFUSED)
                    }
                    Err(AdmissionError::Failed(e)) => Err(e.into()),
                };
            }
            if key.is_empty() {
                bail!("give --key PUBLIC_KEY (signature check) or --policy FILE (full admission check)");
            }
            let keys: Vec<_> = key
                .iter()
                .map(|k| keys::load_verifying_key(k))
                .collect::<Result<_, _>>()?;
            let digest = store.resolve(&reference)?.digest;
            match sign::verify(&store, &reference.name(), &digest, &keys) {
                Ok(found) => {
                    let attestations =
                        dsse::verified_attestations(&store, &reference.name(), &digest, &keys)?;
                    let types: Vec<String> = attestations
                        .iter()
                        .map(|a| a.predicate_type.clone())
                        .collect();
                    output::print_object(
                        globals.format,
                        &serde_json::json!({"digest": digest, "signatures": found, "attestations": types}),
                        &[
                            ("digest", digest.to_string()),
                            ("signatures", found.len().to_string()),
                            ("attestations", types.join(", ")),
                        ],
                    )?;
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(EXIT_REFUSED)
                }
            }
        }
        Command::Push {
            source,
            destination,
            registry: args,
        } => {
            let spinner = Spinner::new("push");
            spinner.set(&destination);
            let transfer = registry::push(
                &store,
                &parse_ref(&source)?,
                &parse_ref(&destination)?,
                args.options(),
            )?;
            spinner.finish("done");
            print_transfer(globals.format, &transfer)
        }
        Command::Pull {
            reference,
            registry: args,
        } => {
            let spinner = Spinner::new("pull");
            spinner.set(&reference);
            let transfer = registry::pull(&store, &parse_ref(&reference)?, args.options())?;
            spinner.finish("done");
            print_transfer(globals.format, &transfer)
        }
    }
}

fn print_transfer(format: Format, t: &registry::Transfer) -> anyhow::Result<u8> {
    output::print_object(
        format,
        t,
        &[
            ("image", t.reference.clone()),
            ("digest", t.digest.to_string()),
            ("blobs", t.blobs.to_string()),
            ("attachments", t.attachments.join(", ")),
        ],
    )?;
    Ok(0)
}

/// The Debian tracker's urgency (and no-DSA reason) per CVE still affecting the package.
fn debian_column(f: &scan::Finding) -> String {
    if f.debian_tracker.is_empty() {
        return "-".into();
    }
    f.debian_tracker
        .iter()
        .map(|n| {
            let urgency = n.status.urgency.as_deref().unwrap_or("no urgency");
            match n
                .status
                .nodsa_reason
                .as_deref()
                .or(n.status.nodsa.as_deref())
            {
                Some(nodsa) => format!("{urgency} (no DSA: {nodsa})"),
                None => urgency.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_scan(format: Format, report: &ScanReport) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    output::print_list(
        format,
        &[
            "ID", "PACKAGE", "VERSION", "FIXED IN", "CVSS", "SOURCE", "RATING", "DEBIAN", "ALIASES",
        ],
        &report.findings,
        |f| {
            vec![
                f.id.clone(),
                f.package.clone(),
                f.version.clone(),
                f.fixed.clone().unwrap_or_else(|| "-".into()),
                f.cvss_score.map_or("-".into(), |s| format!("{s:.1}")),
                match &f.score_cve {
                    Some(cve) => format!("{} ({cve})", f.score_source),
                    None => f.score_source.to_string(),
                },
                f.rating.clone(),
                debian_column(f),
                f.aliases.join(" "),
            ]
        },
    )?;
    for f in &report.suppressed {
        if let Some(s) = &f.suppressed_by {
            eprintln!(
                "accepted: {} in {} ({}; {})",
                f.id,
                f.package,
                s.reason,
                s.expires
                    .map_or("no expiry".into(), |d| format!("until {d}"))
            );
        }
    }
    for s in &report.expired_suppressions {
        eprintln!(
            "warning: exception for {} expired on {}",
            s.id,
            s.expires.map_or("?".into(), |d| d.to_string())
        );
    }
    if report.unscored > 0 {
        let ids: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.cvss_score.is_none())
            .map(|f| f.id.as_str())
            .collect();
        eprintln!(
            "{}: {} finding(s) have no CVSS score from any source (unscored = {}): {}",
            match report.unscored_policy {
                UnscoredPolicy::Block => "error",
                UnscoredPolicy::Warn => "warning",
            },
            report.unscored,
            report.unscored_policy,
            ids.join(" ")
        );
    }
    eprintln!(
        "{} packages scanned ({} installed by dpkg under another ecosystem), {} findings, {} unscored, highest CVSS {:.1}: {}",
        report.packages_scanned,
        report.packages_owned_by_deb,
        report.findings.len(),
        report.unscored,
        report.max_cvss,
        if report.passed { "passed".to_string() } else { format!("FAILED (threshold {:.1}, unscored = {})", report.fail_on_cvss, report.unscored_policy) }
    );
    Ok(())
}
