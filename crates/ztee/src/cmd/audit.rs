//! `ztee audit`: verify, tail and search the audit trail (work done by `ztee-audit`).

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;
use ztee_audit::{
    format_time, parse_since, read_records, verify_with, EventType, ExportedHead, Payload,
    PublicKey, Query, Record, VerifyOptions,
};

use crate::globals::GlobalArgs;
use crate::output::{print_list, print_object};

#[derive(Subcommand)]
pub enum Command {
    /// Check the hash chain and checkpoint signatures; name the first bad record.
    ///
    /// Examples:
    ///   ztee audit verify
    ///   ztee audit verify /mnt/copy/audit --public-key node-ed25519.pub.pem
    ///   ztee audit verify --witness /mnt/worm/node-1.witness
    ///   ztee audit verify --expect-head 120554:3b1f...   # a head printed by an earlier verify
    ///
    /// Without --witness or --expect-head, a data directory rolled back to an older copy of
    /// itself verifies: it is a valid, shorter log. Those two catch it.
    ///
    /// Exit status: 0 when the log verifies, 1 when it was tampered with or cannot be read.
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// Show the most recent events.
    ///
    /// Examples:
    ///   ztee audit tail
    ///   ztee audit tail -n 100 --format json
    #[command(verbatim_doc_comment)]
    Tail(TailArgs),
    /// Find events by request id, principal, tenant, type or time.
    ///
    /// Examples:
    ///   ztee audit search --request-id req-123
    ///   ztee audit search --principal alice --since 2h
    ///   ztee audit search --type auth.failure --since 2026-11-29T00:00:00Z --format json
    #[command(verbatim_doc_comment)]
    Search(SearchArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Audit directory to verify [default: <data-dir>/audit].
    path: Option<PathBuf>,
    /// Trusted public key (PEM) [default: <data-dir>/keys/node-ed25519.pub.pem].
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Witness file the writer appends every signed checkpoint to: the log must still contain
    /// each of them (rollback detection).
    #[arg(long, env = ztee_audit::WITNESS_ENV)]
    witness: Option<PathBuf>,
    /// A head printed by an earlier verify (RECORDS:HASH): the log must still contain it.
    #[arg(long, value_name = "RECORDS:HASH", value_parser = parse_head)]
    expect_head: Option<ExportedHead>,
}

fn parse_head(text: &str) -> Result<ExportedHead, String> {
    text.parse()
        .map_err(|e: ztee_audit::AuditError| e.to_string())
}

#[derive(Args)]
pub struct TailArgs {
    /// How many events to show.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Also show checkpoint records.
    #[arg(long)]
    checkpoints: bool,
    /// Audit directory [default: <data-dir>/audit].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long)]
    request_id: Option<String>,
    /// Principal subject (token `sub` or API key id).
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// Event type, e.g. sandbox.exec, auth.failure, audit.access.
    #[arg(long = "type", value_parser = parse_event_type)]
    event_type: Option<EventType>,
    /// Only events at or after this time: RFC 3339 (2026-11-29T01:00:00Z) or an age (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Show at most this many (the most recent).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Audit directory [default: <data-dir>/audit].
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_event_type(text: &str) -> Result<EventType, String> {
    text.parse()
        .map_err(|e: ztee_audit::AuditError| e.to_string())
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Verify(args) => run_verify(args, globals),
        Command::Tail(args) => {
            let query = Query {
                include_checkpoints: args.checkpoints,
                ..Query::default()
            };
            show(globals, args.dir, &query, args.lines)
        }
        Command::Search(args) => {
            let since = args.since.as_deref().map(parse_since).transpose()?;
            let query = Query {
                request_id: args.request_id,
                principal: args.principal,
                tenant: args.tenant,
                event_type: args.event_type,
                since,
                include_checkpoints: false,
            };
            show(globals, args.dir, &query, args.limit)
        }
    }
}

fn run_verify(args: VerifyArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let dir = args.path.unwrap_or_else(|| globals.data_dir.join("audit"));
    if !dir.is_dir() {
        anyhow::bail!("{}: no audit log directory here", dir.display());
    }
    let key = match &args.public_key {
        Some(path) => PublicKey::from_pem_file(path)?,
        None => PublicKey::from_data_dir(&globals.data_dir)
            .context("reading the node's public key (pass --public-key to use another)")?,
    };
    let options = VerifyOptions {
        witness: args.witness.clone(),
        expected_head: args.expect_head,
    };
    let report = verify_with(&dir, &key, &options)?;
    let status = match &report.failure {
        None => "OK".to_string(),
        Some(failure) => format!("TAMPERED: {failure}"),
    };
    print_object(
        globals.format,
        &report,
        &[
            ("status", status),
            ("directory", dir.display().to_string()),
            ("trusted key", key.key_id()),
            ("files", report.files.to_string()),
            ("events", report.events.to_string()),
            ("checkpoints", report.checkpoints.to_string()),
            ("last seq", report.last_seq.to_string()),
            (
                "last checkpoint",
                report
                    .last_checkpoint_seq
                    .map_or("none".to_string(), |s| s.to_string()),
            ),
            (
                "events after last checkpoint",
                report.unsigned_tail.to_string(),
            ),
            (
                "head (to export)",
                report
                    .head
                    .map_or("none (empty log)".to_string(), |h| h.to_string()),
            ),
            (
                "witness",
                match (&args.witness, report.witnessed_seq) {
                    (None, _) => "not checked (rollback of the directory is not detected)".into(),
                    (Some(path), Some(seq)) => format!("{} (up to seq {seq})", path.display()),
                    (Some(path), None) => path.display().to_string(),
                },
            ),
            (
                "expected head",
                args.expect_head
                    .map_or("not checked".to_string(), |h| h.records.to_string()),
            ),
            (
                "incomplete final line",
                match report.torn_tail_bytes {
                    0 => "none".to_string(),
                    n => format!("{n} bytes (a write cut short by a crash; never acknowledged)"),
                },
            ),
        ],
    )?;
    if let Some(failure) = &report.failure {
        eprintln!("error: audit log verification failed at {failure}");
        return Ok(1);
    }
    Ok(0)
}

/// One row of `tail`/`search` output in JSON form: the record as stored.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    record: &'a Record,
}

fn show(
    globals: &GlobalArgs,
    dir: Option<PathBuf>,
    query: &Query,
    limit: usize,
) -> anyhow::Result<u8> {
    let dir = dir.unwrap_or_else(|| globals.data_dir.join("audit"));
    if !dir.is_dir() {
        anyhow::bail!("{}: no audit log directory here", dir.display());
    }
    let mut recent: VecDeque<Record> = VecDeque::with_capacity(limit.min(10_000));
    read_records(&dir, query, |record| {
        if recent.len() == limit {
            recent.pop_front();
        }
        if limit > 0 {
            recent.push_back(record);
        }
    })?;
    let rows: Vec<Row> = recent.iter().map(|record| Row { record }).collect();
    print_list(
        globals.format,
        &[
            "SEQ",
            "TIME",
            "TYPE",
            "OUTCOME",
            "PRINCIPAL",
            "TENANT",
            "RESOURCE",
            "REQUEST",
            "DECISION",
        ],
        &rows,
        |row| cells(row.record),
    )?;
    Ok(0)
}

fn cells(record: &Record) -> Vec<String> {
    match &record.payload {
        Payload::Event(event) => vec![
            record.seq.to_string(),
            format_time(event.time),
            event.event_type.to_string(),
            event.outcome.to_string(),
            event.principal.subject.clone(),
            event.principal.tenant.clone(),
            event.resource.clone().unwrap_or_default(),
            event.request_id.clone().unwrap_or_default(),
            event
                .decision
                .as_ref()
                .map(|d| {
                    let verdict = serde_json::to_value(d.decision)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    format!("{verdict} ({}) {}", d.risk, d.rule_ids.join(","))
                })
                .unwrap_or_default(),
        ],
        Payload::Checkpoint(checkpoint) => vec![
            record.seq.to_string(),
            format_time(checkpoint.time),
            "checkpoint".to_string(),
            String::new(),
            checkpoint.key_id.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
    }
}
