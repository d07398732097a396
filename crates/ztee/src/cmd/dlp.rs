//! `ztee dlp`: find and redact card data, PII and secrets in files and streams, and serve the
//! Presidio-compatible API. The detection itself lives in `ztee-dlp`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde::Serialize;
use ztee_dlp::http::DlpState;
use ztee_dlp::{
    anonymize, json, EncryptionKey, Entity, Finding, KeyedHasher, MaskStyle, Operator, Operators,
    Scanner, ScannerConfig, StreamScanner,
};

use crate::globals::{Format, GlobalArgs};
use crate::output;

/// Exit code of `scan` when it found something (0 means the input is clean).
const EXIT_FOUND: u8 = 3;
/// Bytes read per chunk by `redact`.
const CHUNK: usize = 64 * 1024;

#[derive(Subcommand)]
pub enum Command {
    /// Report card data, PII and secrets in files or stdin (exit 3 when anything is found).
    ///
    /// Examples:
    ///   ztee dlp scan app.log
    ///   kubectl logs pod | ztee dlp scan --entities CREDIT_CARD,SECRET
    ///   ztee dlp scan --jsonl --format json events.jsonl
    ///
    /// Matched values are never printed: the table shows them masked (BIN and last four for card
    /// numbers, every letter and digit masked otherwise).
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),
    /// Copy files or stdin to stdout with card data, PII and secrets redacted.
    ///
    /// Examples:
    ///   ztee dlp redact --operator mask < app.log > app.masked.log
    ///   ztee dlp redact --operator hash --hash-key-file /etc/ztee/dlp-hash.key orders.csv
    ///   sandbox-output | ztee dlp redact --operator tokenize
    ///
    /// Input is processed as a stream (bounded memory), so a number split across reads is still
    /// found. A one-line summary of what was redacted goes to stderr.
    #[command(verbatim_doc_comment)]
    Redact(RedactArgs),
    /// Serve the Presidio-compatible REST API (/analyze, /anonymize, /deanonymize,
    /// /supportedentities, /health).
    ///
    /// Examples:
    ///   ztee dlp serve
    ///   ztee dlp serve --listen 127.0.0.1:5002 --hash-key-file /etc/ztee/dlp-hash.key
    ///   curl -s localhost:5002/analyze -d '{"text":"card 4111 1111 1111 1111","language":"en"}'
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// List the entity types ztee detects.
    Entities,
}

#[derive(ClapArgs)]
pub struct DetectArgs {
    /// Entity types to detect, comma-separated (default: all; see `ztee dlp entities`).
    #[arg(long, value_name = "A,B")]
    entities: Option<String>,

    /// Minimum score (0-1) a finding needs to be reported.
    #[arg(long, default_value_t = 0.4)]
    threshold: f64,

    /// Do not decode base64 blobs to scan the text inside them.
    #[arg(long)]
    no_base64: bool,
}

impl DetectArgs {
    fn scanner(&self) -> anyhow::Result<Scanner> {
        let entities = match &self.entities {
            Some(list) => Entity::parse_list(list).context("--entities")?,
            None => Vec::new(),
        };
        Scanner::new(ScannerConfig {
            entities,
            score_threshold: self.threshold,
            decode_base64: !self.no_base64,
            ..ScannerConfig::default()
        })
        .context("--threshold")
    }
}

#[derive(ClapArgs)]
pub struct ScanArgs {
    #[command(flatten)]
    detect: DetectArgs,

    /// Treat each input line as a JSON document: scan its string values, report JSON paths, and
    /// with `--format json` print one JSON list of findings per input line (JSON Lines).
    #[arg(long)]
    jsonl: bool,

    /// Files to scan; stdin when none is given.
    files: Vec<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum OperatorArg {
    /// PCI DSS 3.4.1 masking: card numbers keep BIN and last four, other values fully masked.
    Mask,
    /// Remove the value.
    Redact,
    /// Replace with `<ENTITY_TYPE>`.
    Replace,
    /// Keyed HMAC-SHA-256 (needs --hash-key-file).
    Hash,
    /// AES-GCM ciphertext (needs --encryption-key-file).
    Encrypt,
    /// Consistent placeholders: `<CREDIT_CARD_1>`, `<CREDIT_CARD_2>`...
    Tokenize,
}

#[derive(ClapArgs)]
pub struct RedactArgs {
    #[command(flatten)]
    detect: DetectArgs,

    /// What to do with each finding.
    #[arg(long, value_enum, default_value_t = OperatorArg::Mask)]
    operator: OperatorArg,

    #[command(flatten)]
    keys: KeyArgs,

    /// Files to redact, in order; stdin when none is given.
    files: Vec<PathBuf>,
}

#[derive(ClapArgs)]
pub struct KeyArgs {
    /// File holding the HMAC key for `hash` (hex, or raw bytes; at least 16 bytes).
    #[arg(long, env = "ZTEE_DLP_HASH_KEY_FILE", value_name = "PATH")]
    hash_key_file: Option<PathBuf>,

    /// File holding the AES-GCM key for `encrypt` (hex, or raw bytes; 16 or 32 bytes).
    #[arg(long, env = "ZTEE_DLP_ENCRYPTION_KEY_FILE", value_name = "PATH")]
    encryption_key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn hash_key(&self) -> anyhow::Result<Option<KeyedHasher>> {
        self.hash_key_file
            .as_deref()
            .map(|p| {
                let key = read_key(p)?;
                KeyedHasher::new(&key).with_context(|| format!("hash key {}", p.display()))
            })
            .transpose()
    }

    fn encryption_key(&self) -> anyhow::Result<Option<EncryptionKey>> {
        self.encryption_key_file
            .as_deref()
            .map(|p| {
                let key = read_key(p)?;
                EncryptionKey::new(&key).with_context(|| format!("encryption key {}", p.display()))
            })
            .transpose()
    }
}

#[derive(ClapArgs)]
pub struct ServeArgs {
    #[command(flatten)]
    detect: DetectArgs,

    #[command(flatten)]
    keys: KeyArgs,

    /// Address to listen on. Loopback by default: put the gateway in front for remote callers.
    #[arg(long, default_value = "127.0.0.1:5002")]
    listen: SocketAddr,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Scan(args) => scan(args, globals),
        Command::Redact(args) => redact(args),
        Command::Serve(args) => serve(args),
        Command::Entities => entities(globals),
    }
}

/// Key files hold hex (trailing newline allowed) or raw bytes.
fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    let trimmed = std::str::from_utf8(&raw).map(str::trim).ok();
    Ok(match trimmed.and_then(decode_hex) {
        Some(decoded) if !decoded.is_empty() => decoded,
        _ => raw,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[derive(Serialize)]
struct ScanRow {
    source: String,
    line: usize,
    column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(flatten)]
    finding: Finding,
    /// The value with every letter and digit masked (card numbers keep BIN and last four).
    masked: String,
}

fn masked_value(text: &str, f: &Finding) -> String {
    let slice = &text[f.byte_start..f.byte_end];
    let one = Finding {
        byte_start: 0,
        byte_end: slice.len(),
        ..f.clone()
    };
    let ops = Operators::new(Operator::Mask(MaskStyle::Pci));
    anonymize(slice, &[one], &ops)
        .map(|a| a.text.replace(['\n', '\r'], " "))
        .unwrap_or_else(|_| "*".repeat(slice.chars().count()))
}

fn source_name(path: Option<&Path>) -> String {
    path.map_or_else(|| "-".to_string(), |p| p.display().to_string())
}

fn open_inputs(files: &[PathBuf]) -> Vec<Option<&Path>> {
    if files.is_empty() {
        vec![None]
    } else {
        files.iter().map(|p| Some(p.as_path())).collect()
    }
}

fn reader(path: Option<&Path>) -> anyhow::Result<Box<dyn Read>> {
    Ok(match path {
        Some(p) => Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => Box::new(std::io::stdin().lock()),
    })
}

fn scan(args: ScanArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let scanner = args.detect.scanner()?;
    let mut rows: Vec<ScanRow> = Vec::new();
    for path in open_inputs(&args.files) {
        let source = source_name(path);
        if args.jsonl {
            let lines = BufReader::new(reader(path)?);
            for (index, line) in lines.lines().enumerate() {
                let line = line.with_context(|| format!("reading {source}"))?;
                let line_no = index + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let found = json::scan(&scanner, &line)
                    .with_context(|| format!("{source}:{line_no} is not valid JSON"))?;
                if globals.format == Format::Json {
                    let list: Vec<&json::JsonFinding> = found.iter().collect();
                    println!("{}", serde_json::to_string(&list)?);
                }
                for f in found {
                    rows.push(ScanRow {
                        source: source.clone(),
                        line: line_no,
                        column: 0,
                        path: Some(f.path.clone()),
                        masked: String::new(),
                        finding: f.finding,
                    });
                }
            }
            continue;
        }
        let mut text = String::new();
        let mut bytes = Vec::new();
        reader(path)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {source}"))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        for f in scanner.scan(&text) {
            let line = line_starts.partition_point(|&s| s <= f.byte_start);
            let column = text[line_starts[line - 1]..f.byte_start].chars().count() + 1;
            rows.push(ScanRow {
                source: source.clone(),
                line,
                column,
                path: None,
                masked: masked_value(&text, &f),
                finding: f,
            });
        }
    }
    let found = !rows.is_empty();
    if !(args.jsonl && globals.format == Format::Json) {
        let headers = if args.jsonl {
            vec!["SOURCE", "LINE", "JSON PATH", "ENTITY", "SCORE", "RULE"]
        } else {
            vec![
                "SOURCE",
                "LINE:COL",
                "ENTITY",
                "SCORE",
                "RULE",
                "VALUE (MASKED)",
            ]
        };
        output::print_list(globals.format, &headers, &rows, |r| {
            let mut cells = vec![r.source.clone()];
            if args.jsonl {
                cells.push(r.line.to_string());
                cells.push(r.path.clone().unwrap_or_default());
            } else {
                cells.push(format!("{}:{}", r.line, r.column));
            }
            cells.push(r.finding.entity_type.to_string());
            cells.push(format!("{:.2}", r.finding.score));
            cells.push(r.finding.rule_id.clone());
            if !args.jsonl {
                cells.push(r.masked.clone());
            }
            cells
        })?;
    }
    Ok(if found { EXIT_FOUND } else { 0 })
}

fn redact(args: RedactArgs) -> anyhow::Result<u8> {
    let scanner = Arc::new(args.detect.scanner()?);
    let operator = match args.operator {
        OperatorArg::Mask => Operator::Mask(MaskStyle::Pci),
        OperatorArg::Redact => Operator::Redact,
        OperatorArg::Replace => Operator::Replace { new_value: None },
        OperatorArg::Hash => Operator::Hash,
        OperatorArg::Encrypt => Operator::Encrypt,
        OperatorArg::Tokenize => Operator::Tokenize,
    };
    let mut operators = Operators::new(operator);
    operators.hash_key = args.keys.hash_key()?;
    operators.encryption_key = args.keys.encryption_key()?;
    if args.operator == OperatorArg::Hash && operators.hash_key.is_none() {
        bail!("--operator hash needs --hash-key-file (PCI DSS 3.5.1.1: hashes of card numbers must be keyed)");
    }
    if args.operator == OperatorArg::Encrypt && operators.encryption_key.is_none() {
        bail!("--operator encrypt needs --encryption-key-file");
    }
    let mut stream = StreamScanner::new(scanner, operators);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; CHUNK];
    for path in open_inputs(&args.files) {
        let source = source_name(path);
        let mut input = reader(path)?;
        loop {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading {source}"))?;
            if n == 0 {
                break;
            }
            out.write_all(stream.feed_bytes(&buf[..n])?.as_bytes())?;
        }
    }
    out.write_all(stream.finish()?.as_bytes())?;
    out.flush()?;
    let summary: Vec<String> = stream
        .counts()
        .iter()
        .map(|(e, n)| format!("{e} {n}"))
        .collect();
    if summary.is_empty() {
        eprintln!("redacted: nothing found");
    } else {
        eprintln!("redacted: {}", summary.join(", "));
    }
    Ok(0)
}

fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let scanner = Arc::new(args.detect.scanner()?);
    let mut state = DlpState::new(scanner);
    state.hash_key = args.keys.hash_key()?;
    state.encryption_key = args.keys.encryption_key()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listen = args.listen;
    eprintln!("ztee dlp: Presidio-compatible API on http://{listen} (Ctrl-C stops)");
    runtime
        .block_on(ztee_dlp::http::serve(listen, Arc::new(state), async {
            let _ = tokio::signal::ctrl_c().await;
        }))
        .with_context(|| format!("serving on {listen}"))?;
    Ok(0)
}

#[derive(Serialize)]
struct EntityRow {
    entity_type: &'static str,
    card_data: bool,
}

fn entities(globals: &GlobalArgs) -> anyhow::Result<u8> {
    let rows: Vec<EntityRow> = Entity::ALL
        .iter()
        .map(|e| EntityRow {
            entity_type: e.as_str(),
            card_data: e.is_card_data(),
        })
        .collect();
    output::print_list(globals.format, &["ENTITY", "PCI CARD DATA"], &rows, |r| {
        vec![
            r.entity_type.to_string(),
            if r.card_data { "yes" } else { "no" }.to_string(),
        ]
    })?;
    Ok(0)
}
