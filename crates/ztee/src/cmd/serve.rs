//! (being written)

use crate::globals::GlobalArgs;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _globals: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not available yet")
}
