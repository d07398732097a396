//! The detectors. Each finds candidates (byte spans, base score, rule id) for a few entities;
//! [`crate::Scanner`] combines them, scores context and converts offsets.

pub mod card;
pub(crate) mod chars;
pub(crate) mod chd;
pub(crate) mod digits;
pub(crate) mod exact;
mod iban;
pub(crate) mod near;
pub(crate) mod network;
pub(crate) mod patterns;
