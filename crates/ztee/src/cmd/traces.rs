//! `ztee traces export`: the LLM proxy's traces from the data directory, as JSON lines.

use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ztee_server::llm::trace::{TraceQuery, TraceStore};

use crate::globals::GlobalArgs;

#[derive(Subcommand)]
pub enum Command {
    /// Print traces as JSON lines (one LLM exchange per line, OpenAI message format, masked).
    ///
    /// Examples:
    ///   ztee traces export > traces.jsonl
    ///   ztee traces export --tenant payments --since 2h
    ///   ztee traces export --request-id 5c1e0f2a-...
    ///
    /// The gateway serves the same lines at GET /v1/traces (permission audit:read).
    #[command(verbatim_doc_comment)]
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Only this tenant [default: every tenant].
    #[arg(long)]
    tenant: Option<String>,
    /// Only the trace of this request (the audit event's request id).
    #[arg(long)]
    request_id: Option<String>,
    /// Only traces at or after this time: RFC 3339, or an age like 15m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// At most this many traces per tenant, the most recent.
    #[arg(long, default_value_t = 100_000)]
    limit: usize,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let Command::Export(args) = command;
    let since = match &args.since {
        Some(s) => Some(ztee_audit::format_time(ztee_audit::parse_since(s)?)),
        None => None,
    };
    let dir = globals.data_dir.join("traces");
    let store = TraceStore::at(&dir);
    let tenants = match &args.tenant {
        Some(t) => {
            ztee_server::validate_tenant(t).map_err(anyhow::Error::msg)?;
            vec![t.clone()]
        }
        None => store
            .tenants()
            .with_context(|| format!("reading {}", dir.display()))?,
    };
    let query = TraceQuery {
        request_id: args.request_id,
        since,
        limit: Some(args.limit),
        tenant: None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for tenant in tenants {
        let lines = store
            .read(&tenant, &query)
            .with_context(|| format!("reading the traces of tenant {tenant}"))?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
    }
    Ok(0)
}
