//! (being written)

use clap::Subcommand;

use crate::globals::GlobalArgs;

#[derive(Subcommand)]
pub enum Command {}

pub fn run(command: Command, _globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {}
}
