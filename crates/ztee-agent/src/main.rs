//! `ztee-agent`: PID 1 inside every ztee microVM.
//!
//! Boot ([`boot`]) mounts the read-only image under a tmpfs overlay, then the agent serves one
//! authenticated channel to the host ([`transport`], [`session`]): it runs commands as the
//! unprivileged sandbox user ([`exec`]), moves files ([`files`]), takes a lease ([`lease`]:
//! fresh entropy and identifiers for snapshot clones), relays egress connections to the host's
//! proxy when the sandbox was granted egress ([`egress`]) and reaps every process ([`reaper`]).
//! It depends on `ztee-wire` and the C library only, and is linked statically.

mod boot;
mod egress;
mod exec;
mod files;
mod lease;
mod link;
mod reaper;
mod sandbox;
mod session;
mod transport;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(files::HELPER_FLAG) {
        return files::helper_main(&args[2..]);
    }
    transport::block_sigio();
    if std::process::id() != 1 {
        eprintln!("ztee-agent: this program is the init process of a ztee microVM; it does not run on a host");
        return ExitCode::from(2);
    }
    if let Err(err) = run() {
        eprintln!("ztee-agent: fatal: {err}");
    }
    boot::power_off()
}

fn run() -> Result<(), String> {
    let secret = boot::boot().map_err(|err| format!("boot: {err}"))?;
    reaper::start();
    let host = transport::open().map_err(|err| format!("agent channel: {err}"))?;
    session::serve(host, secret);
    Ok(())
}
