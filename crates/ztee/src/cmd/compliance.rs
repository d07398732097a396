//! `ztee compliance`: PCI DSS evidence from this installation (work done by `ztee-compliance`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ztee_compliance::{gather, render_markdown, Installation, Window};

use crate::globals::{Format, GlobalArgs};

#[derive(Subcommand)]
pub enum Command {
    /// Gather PCI DSS v4.0.1 evidence from this installation and judge each control.
    ///
    /// Examples:
    ///   ztee compliance report                         # Markdown on stdout
    ///   ztee compliance report --since 90d > evidence.md
    ///   ztee compliance report --since 2026-10-01T00:00:00Z --format json
    ///   ztee compliance report --config /etc/ztee/server.toml --data-dir /var/lib/ztee
    ///
    /// It reads, and never changes: the gateway configuration (as `ztee serve` would load it),
    /// the policy bundle (and runs its tests), the audit trail (verifies the chain; counts failed
    /// logins, denials, approvals, redactions by entity type in the period), every stored image
    /// (judged by <data-dir>/admission.yaml, with its age), and the ztee VMs running now (network
    /// devices, network namespace). What each control means: docs/pci-dss.md.
    ///
    /// Exit status: 0 when no control is `not met`, 1 when one is (or on an error).
    #[command(verbatim_doc_comment)]
    Report(ReportArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    /// Start of the activity period: RFC 3339 (2026-10-01T00:00:00Z) or an age (24h, 90d)
    /// [default: the whole trail].
    #[arg(long)]
    since: Option<String>,
    /// Gateway configuration file, as given to `ztee serve`.
    #[arg(long, env = "ZTEE_CONFIG")]
    config: Option<PathBuf>,
    /// Policy bundle directory, as given to `ztee serve` [default: <data-dir>/policies, else
    /// the built-in bundle].
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Report(args) => report(args, globals),
    }
}

fn report(args: ReportArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let window = match &args.since {
        Some(since) => Window::since(
            ztee_audit::parse_since(since).with_context(|| format!("--since {since}"))?,
        ),
        None => Window::all(),
    };
    let installation = Installation::load(
        &globals.data_dir,
        args.config.as_deref(),
        args.policy_dir.as_deref(),
    )?;
    let report = gather(&installation, &window)?;
    match globals.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", render_markdown(&report)),
    }
    Ok(if report.passes() { 0 } else { 1 })
}
