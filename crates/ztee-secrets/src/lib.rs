//! The secrets broker: where the gateway gets the secret values it injects into sandboxes.
//!
//! ```text
//! sandbox request (names) -> policy (secret.use) -> SecretBroker::lease
//!     -> built-in store (AES-256-GCM at rest, store.rs)  or  Vault / OpenBao (vault.rs)
//!     -> Lease (values, dynamic lease ids) -> injected as /run/secrets/NAME and/or env
//!     -> sandbox ends -> SecretBroker::release (dynamic leases revoked at the backend)
//! ```
//! Values live in [`SecretValue`], which zeroes its memory on drop and never prints itself.
//! Errors name secrets, paths and backends, never values.

mod broker;
pub mod endpoint;
mod error;
mod master_key;
mod name;
mod store;
mod value;
pub mod vault;

pub use broker::{Lease, LeasedSecret, SecretBroker, SecretSource};
pub use endpoint::{check_endpoint, EndpointError};
pub use error::SecretError;
pub use master_key::{MasterKey, MasterKeySource};
pub use name::{EnvVarName, SecretName, SecretRequest};
pub use store::{LocalStore, StoredSecret};
pub use value::SecretValue;
pub use vault::{VaultAuth, VaultClient, VaultConfig, VaultMapping};
