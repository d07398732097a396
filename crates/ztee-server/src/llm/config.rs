//! `[llm]` in the server configuration; the schema is ztee-state's.

pub use ztee_state::config::{LlmConfig, ProviderApi, ProviderConfig};
