//! Options every subcommand shares: where state lives, how objects are printed, how loud logs are.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Directory holding ztee's state (sandboxes, images, keys, audit log).
    #[arg(long, global = true, env = "ZTEE_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// How commands that print objects print them.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Which VMM runs sandboxes: `firecracker` (KVM hosts with firecracker and its jailer
    /// installed, run as root), `qemu` (any host; software CPU without KVM), or `auto`
    /// (Firecracker where it can run, else QEMU; `ztee doctor` says which and why). Default:
    /// the gateway's `sandbox_defaults.vmm` for `ztee serve`, else `auto`.
    #[arg(long, global = true, env = "ZTEE_VMM", value_enum)]
    pub vmm: Option<VmmArg>,

    /// Log filter (tracing syntax), e.g. `info` or `ztee_vm=debug`. Logs go to stderr.
    #[arg(long, global = true, env = "ZTEE_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmArg {
    Auto,
    Qemu,
    Firecracker,
}

impl VmmArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
        }
    }
}

impl From<VmmArg> for ztee_vm::VmmChoice {
    fn from(arg: VmmArg) -> Self {
        match arg {
            VmmArg::Auto => Self::Auto,
            VmmArg::Qemu => Self::Qemu,
            VmmArg::Firecracker => Self::Firecracker,
        }
    }
}

/// The gateway configuration's `sandbox_defaults.vmm` as the VM engine's choice.
pub fn vmm_from_config(choice: ztee_state::config::VmmChoice) -> ztee_vm::VmmChoice {
    use ztee_state::config::VmmChoice;
    match choice {
        VmmChoice::Auto => ztee_vm::VmmChoice::Auto,
        VmmChoice::Qemu => ztee_vm::VmmChoice::Qemu,
        VmmChoice::Firecracker => ztee_vm::VmmChoice::Firecracker,
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables for people (`ztee compliance report` prints Markdown; `md` is accepted for it).
    #[value(alias = "md", alias = "markdown")]
    Table,
    Json,
}

/// `$XDG_DATA_HOME/ztee`, else `~/.local/share/ztee`, else `/var/lib/ztee` for a user without a home.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ztee");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/ztee");
    }
    PathBuf::from("/var/lib/ztee")
}

pub fn init_logging(globals: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&globals.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .init();
}
