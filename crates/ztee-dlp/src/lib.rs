//! Detection and redaction of cardholder data (PAN and sensitive authentication data), PII and
//! secrets, for everything that enters or leaves a ztee sandbox or goes to an LLM.
//!
//! The pieces, in the order a caller meets them:
//! - [`Scanner`]: built once from a [`ScannerConfig`], shared across threads, `scan(&str)` returns
//!   [`Finding`]s. A finding never carries the matched text, so it is safe to log and audit.
//! - [`anonymize`] / [`anonymize_with`]: apply [`Operators`] (replace, redact, mask, keyed hash,
//!   encrypt, tokenize) to the findings and count what was done per entity.
//! - [`StreamScanner`]: the same for output that arrives in chunks, with bounded memory and delay.
//! - [`TokenMap`]: reversible `<CREDIT_CARD_1>` placeholders for a request/response pair.
//! - [`json`]: scan the string values of a JSON document and report JSON paths.
//! - [`KeyedHasher`]: HMAC-SHA-256 of a value, for audit records that must identify a PAN without
//!   holding it.
//! - `http` (cargo feature `http`): Presidio-compatible `/analyze`, `/anonymize` REST API.

mod context;
mod crypto;
mod detect;
mod entity;
mod error;
mod fail_closed;
mod finding;
pub mod json;
mod operators;
mod prefilter;
mod scanner;
mod stream;
mod tokens;
mod utf8;

#[cfg(feature = "http")]
pub mod http;

pub use crate::crypto::{EncryptionKey, KeyedHasher};
pub use crate::detect::card::{luhn_valid, CardBrand};
pub use crate::detect::exact::ExactValues;
pub use crate::entity::Entity;
pub use crate::error::DlpError;
pub use crate::fail_closed::{FailClosed, WITHHELD};
pub use crate::finding::Finding;
pub use crate::operators::{
    anonymize, anonymize_with, deanonymize, resolve_overlaps, Anonymized, MaskStyle, Operator,
    Operators, Replacement,
};
pub use crate::scanner::{Scanner, ScannerConfig};
pub use crate::stream::StreamScanner;
pub use crate::tokens::TokenMap;
pub use crate::utf8::Utf8Stream;
