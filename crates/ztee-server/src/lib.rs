//! ztee's gateway: the one process an operator deploys in front of the microVMs.
//!
//! Every request goes through the same stages, in the order spelled out in [`pipeline`]:
//! authentication (`auth`), inbound DLP, policy, the VM ([`exec`]), outbound DLP and the audit
//! trail. State (API keys, sandbox ownership, quotas) lives in SQLite under the data directory; its
//! store and the configuration schema are `ztee-state`'s.
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

pub(crate) mod action;
pub(crate) mod api;
pub mod apikey;
pub(crate) mod approvals;
pub mod audit;
pub(crate) mod audit_outbox;
pub(crate) mod auth;
pub(crate) mod dlp;
pub(crate) mod dlp_engine;
pub(crate) mod e2b;
pub(crate) mod egress;
pub(crate) mod error;
pub mod exec;
pub(crate) mod image_admission;
pub mod launcher;
pub mod llm;
pub(crate) mod mcp;
pub(crate) mod metrics;
pub(crate) mod oidc;
pub(crate) mod openapi;
pub mod pipeline;
pub(crate) mod policy;
pub(crate) mod principal;
pub(crate) mod quota;
pub(crate) mod rego_policy;
pub(crate) mod request_id;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod source_guard;
pub(crate) mod state;
pub(crate) mod vm;

// The configuration schema and the state store live in ztee-state; these paths keep the
// gateway's modules reading them where they always have.
pub(crate) use ztee_state::{config, store};

// The action core, for doors outside this crate (the command line).
pub use action::{
    execute, policy_input, Action, ActionError, Cmd, Delivery, ErrorKind, FileUpload, OneShotRun,
    Outcome,
};
pub use audit_outbox::{record_from_cli, Recorded};
pub use auth::Caller;
pub use dlp::{DlpEngine, InboundAction, SecretScope};
pub use dlp_engine::ZteeDlp;
pub use egress::{authorize as authorize_egress, EgressGate};
pub use image_admission::admit_unattended as admit_image;
pub use metrics::Metrics;
pub use policy::{Decision, PolicyEngine, PolicyInput};
pub use principal::{validate_tenant, Principal};
pub use rego_policy::RegoPolicy;
pub use server::{
    app, bind, build, build_local, serve, Bootstrap, Engines, LocalEngines, ServerError,
};
pub use state::AppState;
pub use vm::VmExecutor;
pub use ztee_state::ServerConfig;
