//! `ztee secret`: the built-in secret store (values encrypted with AES-256-GCM under a master
//! key). Values are read from stdin, never from the command line, and never printed.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use ztee_audit::{EventType, Outcome};
use ztee_secrets::{LocalStore, MasterKey, MasterKeySource, SecretName, SecretValue, StoredSecret};

use crate::globals::GlobalArgs;
use crate::output;

/// Examples:
///   ztee secret keygen /etc/ztee/master.key
///   export ZTEE_MASTER_KEY_FILE=/etc/ztee/master.key
///   printf %s "$DB_PASSWORD" | ztee secret put DB_PASSWORD
///   ztee secret put STRIPE_KEY            # on a terminal: asks, without echo
///   ztee secret ls
///   ztee run --secret DB_PASSWORD=PGPASSWORD -- psql -c 'select 1'
///   ztee secret rotate-key --new-master-key-file /etc/ztee/master.key.new
///   ztee secret rm DB_PASSWORD
#[derive(Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// Store or replace a secret. The value is read from stdin (one trailing newline dropped).
    Put {
        /// 1-128 characters: letters, digits, `_`, `.`, `-`; starting with a letter or `_`.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Keep a trailing newline of the value.
        #[arg(long)]
        keep_newline: bool,
    },
    /// List secret names and when they were last set (never values).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a secret.
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-encrypt every secret under a new master key, in one atomic replacement of the store.
    /// Afterwards point ZTEE_MASTER_KEY_FILE (and the gateway's [secrets] master_key) at the
    /// new key.
    RotateKey {
        #[command(flatten)]
        store: StoreArgs,
        /// File holding the new master key (make one with `ztee secret keygen`).
        #[arg(long, value_name = "FILE", required_unless_present_any = ["new_master_key_env", "new_master_key_command"])]
        new_master_key_file: Option<PathBuf>,
        /// Environment variable holding the new master key.
        #[arg(long, value_name = "VAR")]
        new_master_key_env: Option<String>,
        /// Command printing the new master key (arguments split on spaces, no shell).
        #[arg(long, value_name = "CMD")]
        new_master_key_command: Option<String>,
    },
    /// Write a new random master key to FILE (mode 0600; an existing file is never replaced).
    Keygen { file: PathBuf },
}

/// Where the built-in store is and how to unlock it.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Secret store")]
pub struct StoreArgs {
    /// The store file [default: <data-dir>/secrets.json, which `ztee serve` also uses].
    #[arg(long, env = "ZTEE_SECRETS_STORE", value_name = "FILE")]
    pub secrets_store: Option<PathBuf>,
    /// File holding the master key (64 hex digits or base64 of 32 bytes; mode 0600).
    #[arg(long, env = "ZTEE_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the master key.
    #[arg(long, value_name = "VAR")]
    pub master_key_env: Option<String>,
    /// Command printing the master key, e.g. a KMS decrypt (arguments split on spaces, no shell).
    #[arg(long, env = "ZTEE_MASTER_KEY_COMMAND", value_name = "CMD")]
    pub master_key_command: Option<String>,
}

impl StoreArgs {
    /// The same options as command-line arguments, for a child `ztee` process (options taken
    /// from the environment reach it through the environment).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: std::ffi::OsString| {
            args.push(flag.into());
            args.push(value);
        };
        if let Some(path) = &self.secrets_store {
            push("--secrets-store", path.clone().into_os_string());
        }
        if let Some(path) = &self.master_key_file {
            push("--master-key-file", path.clone().into_os_string());
        }
        if let Some(var) = &self.master_key_env {
            push("--master-key-env", var.into());
        }
        if let Some(command) = &self.master_key_command {
            push("--master-key-command", command.into());
        }
        args
    }
}

fn source(
    file: &Option<PathBuf>,
    env: &Option<String>,
    command: &Option<String>,
    flag: &str,
) -> anyhow::Result<MasterKeySource> {
    match (file, env, command) {
        (Some(f), None, None) => Ok(MasterKeySource::File(f.clone())),
        (None, Some(v), None) => Ok(MasterKeySource::Env(v.clone())),
        (None, None, Some(c)) => Ok(MasterKeySource::Command(
            c.split_whitespace().map(str::to_owned).collect(),
        )),
        (None, None, None) => bail!(
            "no master key: give --{flag}-file (or ZTEE_MASTER_KEY_FILE), --{flag}-env or --{flag}-command"
        ),
        _ => bail!("give only one of --{flag}-file, --{flag}-env and --{flag}-command"),
    }
}

impl StoreArgs {
    pub fn open(&self, globals: &GlobalArgs) -> anyhow::Result<LocalStore> {
        let key = MasterKey::load(&source(
            &self.master_key_file,
            &self.master_key_env,
            &self.master_key_command,
            "master-key",
        )?)?;
        let path = self
            .secrets_store
            .clone()
            .unwrap_or_else(|| globals.data_dir.join("secrets.json"));
        Ok(LocalStore::open(path, key)?)
    }
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Put {
            name,
            store,
            keep_newline,
        } => {
            let name = SecretName::parse(&name)?;
            let store = store.open(globals)?;
            let value = read_value(&name, keep_newline)?;
            store.put(&name, &value)?;
            audit(globals, &name)?;
            eprintln!("secret {name} stored in {}", store.path().display());
            Ok(0)
        }
        Command::Ls { store } => {
            let list = store.open(globals)?.list()?;
            output::print_list(
                globals.format,
                &["NAME", "UPDATED"],
                &list,
                |s: &StoredSecret| vec![s.name.clone(), updated(s.updated_at)],
            )?;
            Ok(0)
        }
        Command::Rm { name, store } => {
            let name = SecretName::parse(&name)?;
            store.open(globals)?.remove(&name)?;
            audit(globals, &name)?;
            eprintln!("secret {name} removed");
            Ok(0)
        }
        Command::RotateKey {
            store,
            new_master_key_file,
            new_master_key_env,
            new_master_key_command,
        } => {
            let current = store.open(globals)?;
            let new_key = MasterKey::load(&source(
                &new_master_key_file,
                &new_master_key_env,
                &new_master_key_command,
                "new-master-key",
            )?)?;
            let old_id = current.key_id();
            let (rotated, count) = current.rotate_key(new_key)?;
            eprintln!(
                "{count} secret(s) in {} re-encrypted: master key {old_id} -> {}. \
                 Use the new key from now on (ZTEE_MASTER_KEY_FILE, and [secrets] master_key \
                 of the gateway, which needs a restart).",
                rotated.path().display(),
                rotated.key_id()
            );
            Ok(0)
        }
        Command::Keygen { file } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = MasterKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            f.write_all(key.to_text().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            eprintln!("master key {} written to {}", key.key_id(), file.display());
            Ok(0)
        }
    }
}

fn updated(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reads the value from stdin: piped as is, or typed at a terminal with echo off.
fn read_value(name: &SecretName, keep_newline: bool) -> anyhow::Result<SecretValue> {
    let stdin = std::io::stdin();
    let mut bytes = Vec::new();
    if stdin.is_terminal() {
        let mut line =
            crate::terminal::read_stdin_unechoed(&format!("value for {name} (not echoed): "))?;
        // Moves the buffer out rather than copying the value.
        bytes = std::mem::take(&mut *line).into_bytes();
    } else {
        stdin.lock().read_to_end(&mut bytes)?;
    }
    if !keep_newline {
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.pop();
        }
    }
    SecretValue::new(bytes).context("the value read from stdin")
}

/// Records the change in the audit trail like `ztee apikey` does (queued if the server holds
/// the log).
fn audit(globals: &GlobalArgs, name: &SecretName) -> anyhow::Result<()> {
    std::fs::create_dir_all(&globals.data_dir)?;
    let store = ztee_state::Store::open(&ztee_state::state_db_path(&globals.data_dir))?;
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let principal = ztee_audit::Principal::new(
        ztee_audit::PrincipalKind::User,
        format!("local:{operator}"),
        "system",
    )?;
    let event = ztee_server::audit::event(
        EventType::SecretChange,
        Outcome::Success,
        principal,
        &format!("cli-{}", std::process::id()),
        None,
        Some(&format!("secret/{name}")),
    );
    ztee_server::record_from_cli(&store, &globals.data_dir, &event)?;
    Ok(())
}
