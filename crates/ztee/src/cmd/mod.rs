//! One module per subcommand. Each exposes clap `Args` and a `run` that returns the process exit
//! code; the work itself happens in the library crates.

use clap::Subcommand;

use crate::globals::GlobalArgs;

mod apikey;
mod approvals;
mod audit;
mod bench;
mod compliance;
mod dlp;
mod doctor;
mod guard;
mod image;
mod key;
mod policy;
mod run;
mod sandbox;
mod secret;
mod serve;
mod traces;
mod vulndb;

// Parsed once per process and moved once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run one command in a fresh microVM that is destroyed afterwards.
    Run(run::Args),
    /// Create, use and remove long-lived sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
    /// Report which VMM and accelerator ztee will use, and whether guest assets are present.
    Doctor(doctor::Args),
    /// Measure sandbox start, lease and exec latency, concurrency and density on this host.
    Bench(bench::Args),
    /// Find and redact card data, PII and secrets.
    #[command(subcommand)]
    Dlp(dlp::Command),
    /// Build, inventory, scan, sign, verify, push and pull VM images.
    #[command(subcommand)]
    Image(image::Command),
    /// Generate and inspect signing keys.
    #[command(subcommand)]
    Key(key::Command),
    /// Load vulnerability data (OSV) for offline scanning.
    #[command(subcommand)]
    Vulndb(vulndb::Command),
    /// Verify, read and search the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Evaluate and test the Rego policy bundle.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Score text for prompt injection.
    #[command(subcommand)]
    Guard(guard::Command),
    /// Run the gateway: the authenticated sandbox API, LLM proxy and MCP server.
    Serve(serve::Args),
    /// Create, list and revoke API keys for service accounts.
    #[command(subcommand)]
    Apikey(apikey::Command),
    /// Gather PCI DSS evidence from this installation for an assessor.
    #[command(subcommand)]
    Compliance(compliance::Command),
    /// List, inspect, approve and deny requests held for a human approver (on a gateway).
    #[command(
        subcommand,
        after_help = "Examples:\n  export ZTEE_GATEWAY=https://ztee.internal:8443 ZTEE_API_KEY_FILE=~/.config/ztee/approver.key\n  ztee approvals ls\n  ztee approvals show apr_3f9a...\n  ztee approvals approve apr_3f9a... --comment \"reviewed the job\"\n  ztee approvals deny apr_3f9a... --comment \"use the tokenized PAN\""
    )]
    Approvals(approvals::Command),
    /// Store, list, remove secrets in the encrypted built-in store; rotate its master key.
    #[command(
        subcommand,
        after_help = "Examples:\n  ztee secret keygen /etc/ztee/master.key\n  export ZTEE_MASTER_KEY_FILE=/etc/ztee/master.key\n  printf %s \"$DB_PASSWORD\" | ztee secret put DB_PASSWORD\n  ztee secret ls\n  ztee run --secret DB_PASSWORD=PGPASSWORD -- psql -c 'select 1'\n  ztee secret rotate-key --new-master-key-file /etc/ztee/master.key.new\n  ztee secret rm DB_PASSWORD"
    )]
    Secret(secret::Command),
    /// Export the LLM proxy's traces (JSON lines).
    #[command(subcommand)]
    Traces(traces::Command),
}

pub fn dispatch(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Run(args) => run::run(args, globals),
        Command::Sandbox(cmd) => sandbox::run(cmd, globals),
        Command::Doctor(args) => doctor::run(args, globals),
        Command::Bench(args) => bench::run(args, globals),
        Command::Dlp(cmd) => dlp::run(cmd, globals),
        Command::Image(cmd) => image::run(cmd, globals),
        Command::Key(cmd) => key::run(cmd, globals),
        Command::Vulndb(cmd) => vulndb::run(cmd, globals),
        Command::Audit(cmd) => audit::run(cmd, globals),
        Command::Policy(cmd) => policy::run(cmd, globals),
        Command::Guard(cmd) => guard::run(cmd, globals),
        Command::Serve(args) => serve::run(args, globals),
        Command::Apikey(cmd) => apikey::run(cmd, globals),
        Command::Compliance(cmd) => compliance::run(cmd, globals),
        Command::Secret(cmd) => secret::run(cmd, globals),
        Command::Approvals(cmd) => approvals::run(cmd, globals),
        Command::Traces(cmd) => traces::run(cmd, globals),
    }
}
