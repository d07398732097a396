//! What the gateway keeps and reads outside a request: its configuration schema ([`config`]:
//! defaults, the TOML file, environment overrides, validation) and its durable state in one
//! SQLite file under the data directory ([`store`]).
//!
//! The gateway, the CLI and the compliance report all read these; keeping them here lets the
//! latter two read an installation without linking the gateway itself.

use std::path::{Path, PathBuf};

pub mod config;
pub mod store;

pub use config::{ConfigError, ServerConfig};
pub use store::{Store, StoreError};

/// The state database of the installation at `data_dir`.
pub fn state_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.db")
}
