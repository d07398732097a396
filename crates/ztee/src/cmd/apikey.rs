//! `ztee apikey`: API keys for service accounts.

use clap::Subcommand;
use ztee_audit::{EventType, Outcome};
use ztee_server::apikey;
use ztee_server::{record_from_cli, Recorded};
use ztee_state::store::{ApiKeyRecord, Store};

use crate::globals::GlobalArgs;
use crate::output;

#[derive(Subcommand)]
pub enum Command {
    /// Create a key and print it once.
    ///
    /// Example:
    ///   ztee apikey create --tenant acme --role agent --description "CI runner"
    ///
    /// The key (`ztee_<id>_<secret>`) is shown only now: ztee stores a SHA-256 of the secret.
    /// Callers send it as `Authorization: Bearer <key>`.
    ///
    /// Tenant roles: agent (sandbox:run, llm:chat), developer (sandbox:run, sandbox:admin,
    /// llm:chat), pci-operator (llm:chat, pan:detokenize), auditor (audit:read),
    /// approver (approval:decide), admin (everything within its own tenant).
    /// Platform roles (API keys only; an OIDC roles claim never grants them):
    /// platform-admin (every tenant, the secret store, metrics, host details of sandboxes),
    /// metrics (metrics:read, for a Prometheus scraper).
    #[command(verbatim_doc_comment)]
    Create {
        /// Tenant the key acts for (1-64 characters: A-Z a-z 0-9 - _ .).
        #[arg(long)]
        tenant: String,
        /// Role granted to the key.
        #[arg(long)]
        role: String,
        /// What the key is for, shown by `ztee apikey list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys (ids, tenants, roles; never secrets).
    List,
    /// Revoke a key by id; calls with it fail from the next request on.
    ///
    /// Example:
    ///   ztee apikey revoke 3f9a0c1b2d4e
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The key's id (the 12 hex digits after `ztee_`).
        id: String,
    },
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&globals.data_dir)?;
    let store = Store::open(&ztee_state::state_db_path(&globals.data_dir))?;
    match command {
        Command::Create {
            tenant,
            role,
            description,
        } => {
            let new = apikey::create(&store, &tenant, &role, &description)?;
            let recorded = audit(&store, globals, EventType::ApiKeyCreate, &new.record.id)?;
            match globals.format {
                crate::globals::Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "id": new.record.id, "tenant": new.record.tenant,
                        "role": new.record.role, "key": new.key,
                    }))?
                ),
                crate::globals::Format::Table => {
                    println!("{}", new.key);
                    eprintln!(
                        "API key {} for tenant {} with role {} created. Store it now: it is not shown again.",
                        new.record.id, new.record.tenant, new.record.role
                    );
                }
            }
            note(recorded);
            Ok(0)
        }
        Command::List => {
            let keys = store.api_keys()?;
            output::print_list(
                globals.format,
                &["ID", "TENANT", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"],
                &keys,
                |k: &ApiKeyRecord| {
                    vec![
                        k.id.clone(),
                        k.tenant.clone(),
                        k.role.clone(),
                        k.created_at.clone(),
                        k.revoked_at.clone().unwrap_or_else(|| "-".into()),
                        k.description.clone(),
                    ]
                },
            )?;
            Ok(0)
        }
        Command::Revoke { id } => {
            apikey::revoke(&store, &id)?;
            let recorded = audit(&store, globals, EventType::ApiKeyRevoke, &id)?;
            eprintln!("API key {id} revoked.");
            note(recorded);
            Ok(0)
        }
    }
}

fn audit(
    store: &Store,
    globals: &GlobalArgs,
    event_type: EventType,
    key_id: &str,
) -> anyhow::Result<Recorded> {
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let principal = ztee_audit::Principal::new(
        ztee_audit::PrincipalKind::User,
        format!("local:{operator}"),
        "system",
    )?;
    let event = ztee_server::audit::event(
        event_type,
        Outcome::Success,
        principal,
        &format!("cli-{}", std::process::id()),
        None,
        Some(&format!("apikey/{key_id}")),
    );
    Ok(record_from_cli(store, &globals.data_dir, &event)?)
}

fn note(recorded: Recorded) {
    if recorded == Recorded::Queued {
        eprintln!("(the running server records this in the audit trail within seconds)");
    }
}
