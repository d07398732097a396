//! `ztee key`: signing keys for images (ECDSA P-256, the key type cosign uses).
//!
//! Examples:
//!   ztee key generate --out signing          # signing.key (encrypted) + signing.pub
//!   ZTEE_KEY_PASSPHRASE=... ztee key generate --out ci/signing
//!   ztee key inspect signing.pub

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use ztee_supply::keys;

use crate::globals::GlobalArgs;
use crate::output;

#[derive(Subcommand)]
pub enum Command {
    /// Generate a key pair: OUT.key (encrypted PKCS#8, mode 0600) and OUT.pub (PEM).
    ///
    /// The passphrase comes from ZTEE_KEY_PASSPHRASE, or is asked for twice on the terminal.
    /// The private key is encrypted with scrypt (N=2^15, r=8, p=1) and AES-256-CBC; OpenSSL
    /// (`openssl pkey`) and `cosign import-key-pair` read it. Existing files are never overwritten.
    Generate {
        /// Path prefix of the two files, e.g. `signing` gives signing.key and signing.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a public key's id (the SHA-256 of its DER encoding), as audit records name it.
    Inspect {
        /// A PEM public key (`-----BEGIN PUBLIC KEY-----`).
        public_key: PathBuf,
    },
}

#[derive(serde::Serialize)]
struct KeyInfo {
    public_key: String,
    key_id: String,
    algorithm: &'static str,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Generate { out } => {
            let pass = crate::terminal::read_passphrase("Passphrase for the new key: ", true)?;
            let generated = keys::generate(&out, &pass)
                .with_context(|| format!("generating {}", out.display()))?;
            output::print_object(
                globals.format,
                &generated,
                &[
                    ("private key", generated.private_key.display().to_string()),
                    ("public key", generated.public_key.display().to_string()),
                    ("key id", generated.key_id.clone()),
                ],
            )?;
            Ok(0)
        }
        Command::Inspect { public_key } => {
            let key = keys::load_verifying_key(&public_key)?;
            let info = KeyInfo {
                public_key: public_key.display().to_string(),
                key_id: keys::key_id(&key),
                algorithm: "ECDSA P-256 / SHA-256",
            };
            output::print_object(
                globals.format,
                &info,
                &[
                    ("public key", info.public_key.clone()),
                    ("key id", info.key_id.clone()),
                    ("algorithm", info.algorithm.into()),
                ],
            )?;
            Ok(0)
        }
    }
}
