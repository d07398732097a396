use std::path::PathBuf;

/// Everything that can go wrong in the broker. Messages name secrets, files and backends, never
/// secret values or key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid environment variable name {name:?}: {reason}")]
    InvalidEnvVar { name: String, reason: &'static str },
    #[error("secret {0:?} does not exist")]
    NotFound(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error(
        "the master key does not match the secret store {path} (store key id {store_key_id}, \
         given key id {given_key_id}); use the key the store was created or last rotated with"
    )]
    WrongMasterKey {
        path: PathBuf,
        store_key_id: String,
        given_key_id: String,
    },
    #[error("secret {name:?} in {path} cannot be decrypted: the store was altered or is corrupt")]
    Decrypt { name: String, path: PathBuf },
    #[error("secret store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("secret store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret value is empty")]
    EmptyValue,
    #[error("secret value is {len} bytes; at most {max} are allowed")]
    ValueTooLarge { len: usize, max: usize },
    #[error("Vault at {address}: {message}")]
    Vault { address: String, message: String },
    /// A configured URL that ztee may not send credentials to (see [`crate::endpoint`]).
    #[error(transparent)]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("no secret backend serves {0:?}: it is not in the built-in store and no Vault mapping names it")]
    Unavailable(String),
}
