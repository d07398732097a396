//! The unpack helper: `ztee __build-rootfs <request>` is how the gateway and the CLI build an
//! image's root filesystem, in a separate jailed process (see `ztee_supply::rootfs`). It is
//! dispatched before argument parsing and is not a command an operator types.

use std::process::ExitCode;

use anyhow::Context as _;
use ztee_supply::rootfs::{self, RootfsBuilder};

/// When this process was started as the unpack helper, runs it and returns its exit code.
pub fn dispatch() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(rootfs::HELPER_ARG)) {
        return None;
    }
    let code = rootfs::helper_main(std::env::args_os().skip(1));
    Some(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The helper this binary starts for admission: itself, with `ZTEE_UNPACK_UIDS` applied.
pub fn builder() -> anyhow::Result<RootfsBuilder> {
    let exe = std::env::current_exe()
        .context("cannot find this program's path to start the rootfs unpack helper")?;
    Ok(RootfsBuilder::from_env(exe)?)
}
