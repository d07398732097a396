//! `ztee serve`: the gateway (work done by `ztee-server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ztee_server::launcher::{self, Announcement, LaunchOptions};

use crate::globals::GlobalArgs;

const LONG_HELP: &str = "\
Examples:
  ztee serve                                   # loopback, state under --data-dir
  ztee serve --config /etc/ztee/server.toml
  ZTEE_OIDC_ISSUER=https://idp.example/realms/ztee ZTEE_OIDC_AUDIENCE=ztee ztee serve

With no configuration it listens on 127.0.0.1:8443 over plain HTTP, keeps its state
(state.db, audit/, node key) under the data directory, uses the qemu backend, and on
first start creates a platform-admin API key and prints it once. Call it with
  curl -H \"Authorization: Bearer $KEY\" http://127.0.0.1:8443/v1/sandboxes

Configuration file (TOML; every key optional, defaults shown):
  listen = \"127.0.0.1:8443\"
  allow_insecure_http = false    # plain HTTP on a non-loopback address needs true
  [tls]                          # both files PEM; reloaded when they change
  cert = \"/etc/ztee/tls.crt\"
  key = \"/etc/ztee/tls.key\"
  [oidc]
  issuer = \"https://idp.example/realms/ztee\"
  audience = \"ztee\"
  roles_claim = \"realm_access.roles\"
  tenant_claim = \"tenant\"
  # platform_admin_claim = \"ztee_platform_admin\"  # claim that, when true, makes a platform admin
  required_amr = [\"otp\", \"hwk\"]   # refuse tokens that do not show MFA
  [quotas]
  requests_per_second = 20
  burst = 40
  max_sandboxes_per_tenant = 8
  max_memory_mib_per_tenant = 2048
  [sandbox_defaults]
  warm_pool = 0                  # VMs kept booted for fast starts
  [dlp]
  inbound = \"block\"            # or \"redact\", \"require_approval\"
More keys ([limits], [sandbox_defaults], OIDC algorithms and clock skew): docs/gateway.md.

Environment (overrides the file): ZTEE_LISTEN, ZTEE_TLS_CERT + ZTEE_TLS_KEY,
ZTEE_OIDC_ISSUER + ZTEE_OIDC_AUDIENCE, ZTEE_ALLOW_INSECURE_HTTP; for the VM engine
ZTEE_GUEST_DIR, ZTEE_ACCEL (auto|kvm|tcg), ZTEE_BOOT_TIMEOUT. Reference: docs/gateway.md.";

/// Run the gateway.
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "ZTEE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and ZTEE_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Rego policy bundle directory (default: <data-dir>/policies, else the built-in bundle).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
}

pub fn run(args: Args, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let options = LaunchOptions {
        config_file: args.config,
        data_dir: globals.data_dir.clone(),
        listen: args.listen,
        policy_dir: args.policy_dir,
    };
    launcher::run(
        options,
        |data_dir, config| {
            let mut engine_config =
                crate::vm::engine_config(globals, data_dir).map_err(|e| e.to_string())?;
            // The config file's choice, unless `--vmm` or `ZTEE_VMM` made one.
            if let (None, Some(vmm)) = (globals.vmm, config.sandbox_defaults.vmm) {
                engine_config.vmm.choice = crate::globals::vmm_from_config(vmm);
            }
            let engine = ztee_vm::Engine::new(engine_config).map_err(|e| e.to_string())?;
            let rootfs = crate::rootfs_helper::builder().map_err(|e| format!("{e:#}"))?;
            let executor = ztee_server::VmExecutor::new(engine)
                .with_admission(data_dir)
                .with_rootfs_builder(rootfs)
                .with_egress_config(config.egress.clone())
                .map_err(|e| e.to_string())?;
            let d = &config.sandbox_defaults;
            if d.warm_pool > 0 {
                executor
                    .start_pool(d.memory_mib, d.vcpus, d.warm_pool)
                    .map_err(|e| e.to_string())?;
            }
            Ok(Arc::new(executor) as Arc<dyn ztee_server::exec::Executor>)
        },
        |announcement| match announcement {
            Announcement::AdminKey { id, key } => {
                eprintln!(
                    "First start: created a platform-admin API key (id {id}). It is shown only now:"
                );
                println!("{key}");
            }
            Announcement::Listening {
                addr,
                tls,
                engine,
                policy,
                oidc_issuer,
            } => {
                let scheme = if tls { "https" } else { "http" };
                eprintln!("ztee gateway listening on {scheme}://{addr}");
                eprintln!("  VM engine: {engine}");
                eprintln!("  policy: {policy}");
                match oidc_issuer {
                    Some(issuer) => eprintln!("  OIDC issuer: {issuer}"),
                    None => eprintln!("  OIDC: not configured (API keys only)"),
                }
            }
        },
    )?;
    Ok(0)
}
