//! ztee's gateway: the one process an operator deploys in front of the microVMs.
//!
//! Every request goes through the same stages, in the order spelled out in [`pipeline`]:
//! authentication ([`auth`]), inbound DLP, policy, the VM ([`exec`]), outbound DLP and the audit
//! trail. State (API keys, sandbox ownership, quotas) lives in SQLite under the data directory.
//!
//! ```no_run
//! # async fn example(engines: ztee_server::Engines) -> Result<(), ztee_server::ServerError> {
//! let config = ztee_server::ServerConfig::load(None).map_err(|e| {
//!     ztee_server::ServerError::Serve(std::io::Error::other(e.to_string()))
//! })?;
//! let data_dir = std::path::Path::new("/var/lib/ztee");
//! let listener = ztee_server::bind(config.listen)?;
//! let (state, bootstrap) = ztee_server::build(config, data_dir, engines).await?;
//! if let Some(key) = bootstrap.admin_key {
//!     println!("admin API key (shown once): {}", key.key);
//! }
//! ztee_server::serve(state, listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod action;
pub(crate) mod api;
pub mod apikey;
pub(crate) mod approvals;
pub mod audit;
pub mod audit_outbox;
pub mod auth;
pub mod config;
pub mod dlp;
pub mod dlp_engine;
pub(crate) mod e2b;
pub mod egress;
pub(crate) mod error;
pub mod exec;
pub(crate) mod image_admission;
pub mod launcher;
pub mod llm;
pub(crate) mod mcp;
pub mod metrics;
pub(crate) mod oidc;
pub(crate) mod openapi;
pub mod pipeline;
pub mod policy;
pub mod principal;
pub(crate) mod quota;
pub mod rego_policy;
pub(crate) mod request_id;
pub(crate) mod secrets;
pub mod server;
pub(crate) mod source_guard;
pub mod state;
pub mod store;
pub mod vm;

pub use config::ServerConfig;
pub use server::{app, bind, build, serve, state_db_path, Bootstrap, Engines, ServerError};
