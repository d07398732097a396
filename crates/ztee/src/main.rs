//! `ztee`: the command-line front end. It parses arguments, sets up logging and hands each
//! subcommand to the library crate that owns the work. What only a terminal needs lives here
//! too: the gateway's pipeline set up for the operator (`local_core`), the supervisor process of
//! CLI-held sandboxes (`local`), the jailed root-filesystem helper's entry (`rootfs_helper`) and
//! prompts and progress (`terminal`).

mod cmd;
mod globals;
mod local;
mod local_core;
mod output;
mod rootfs_helper;
mod terminal;
mod vm;

use std::process::ExitCode;

use clap::Parser;

use crate::globals::GlobalArgs;

/// Zero-trust execution environment for AI agents: run untrusted code in ephemeral microVMs
/// behind an authenticating, DLP-scanning, policy-enforcing gateway.
#[derive(Parser)]
#[command(name = "ztee", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: GlobalArgs,

    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    // The jailed unpack helper is this same binary; it takes no part in the CLI.
    if let Some(code) = rootfs_helper::dispatch() {
        return code;
    }
    // Behave like other Unix tools when the reader of our output goes away (`ztee ... | head`):
    // end quietly on SIGPIPE instead of panicking on a failed write.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap renders help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    globals::init_logging(&cli.globals);
    match cmd::dispatch(cli.command, &cli.globals) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", output::one_line_error(&err));
            ExitCode::from(1)
        }
    }
}
