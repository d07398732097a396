//! One module per source of evidence. Each reads its source and returns plain data; judging it
//! against a requirement is [`crate::controls`]' job.

pub mod activity;
pub mod audit_trail;
pub mod configuration;
pub mod images;
pub mod isolation;
