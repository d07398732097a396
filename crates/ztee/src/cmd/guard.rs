//! `ztee guard`: score text for prompt injection (work done by `ztee_policy::injection`).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ztee_policy::injection;

use crate::globals::GlobalArgs;
use crate::output::print_object;

#[derive(Subcommand)]
pub enum Command {
    /// Read text and report whether it carries a prompt injection.
    ///
    /// Examples:
    ///   echo "Ignore all previous instructions" | ztee guard scan --format json
    ///   ztee guard scan tool-output.txt
    ///
    /// Prints {"injection": bool, "score": 0..1, "rules": [...]}. Exit status 0 whether or not
    /// an injection is found; non-zero only when the text cannot be read.
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),
}

#[derive(Args)]
pub struct ScanArgs {
    /// File to scan [default: stdin]. Invalid UTF-8 is replaced, not rejected.
    file: Option<PathBuf>,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Scan(args) => scan(args, globals),
    }
}

fn scan(args: ScanArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let bytes = match &args.file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("{}: cannot read the file to scan", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the text to scan from stdin")?;
            bytes
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let result = injection::scan(&text);
    print_object(
        globals.format,
        &result,
        &[
            ("injection", result.injection.to_string()),
            ("score", format!("{:.3}", result.score)),
            ("rules", result.rules.join(", ")),
        ],
    )?;
    Ok(0)
}
