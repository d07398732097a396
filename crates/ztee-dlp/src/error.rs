//! The one error type of the crate. Messages name what was wrong and where, and never contain the
//! scanned text or key material.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DlpError {
    #[error("unknown entity type `{name}` (supported: {supported})")]
    UnknownEntity { name: String, supported: String },

    #[error("score threshold {0} is outside [0, 1]")]
    ScoreThreshold(f64),

    #[error("finding {index} ({start}..{end}) is outside the text ({len} characters) or not on a character boundary")]
    FindingOutOfRange {
        index: usize,
        start: usize,
        end: usize,
        len: usize,
    },

    #[error("operator `{operator}` needs a {what} configured")]
    MissingKey {
        operator: &'static str,
        what: &'static str,
    },

    #[error("invalid key for `{operator}`: {reason}")]
    InvalidKey {
        operator: &'static str,
        reason: String,
    },

    #[error("invalid operator configuration: {0}")]
    InvalidOperator(String),

    #[error("decryption failed for finding at {start}..{end}: the value is not a ciphertext made with this key")]
    Decrypt { start: usize, end: usize },

    #[error("secret `{name}` is too short to redact safely ({len} bytes, at least {min} needed)")]
    SecretTooShort {
        name: String,
        len: usize,
        min: usize,
    },

    #[error("invalid secret name `{0}`: use 1-64 characters from A-Z a-z 0-9 _ - . /")]
    SecretName(String),

    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
}
