//! The on-disk record: one JSON object per line,
//!
//! ```text
//! {"seq":7,"prev":"<hex>","event":{...},"hash":"<hex>"}
//! {"seq":8,"prev":"<hex>","checkpoint":{...},"hash":"<hex>"}
//! ```
//!
//! `hash` is SHA-256 over the exact bytes of the line before `,"hash":` (so verification never
//! depends on re-serializing JSON the same way), and `prev` is the previous record's `hash`. The
//! first record of a log has `prev` = 64 zeros. A checkpoint signs the hash of the record before it.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::event::{rfc3339, AuditEvent};

pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Length of `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
const HASH_SUFFIX_START: &[u8] = b",\"hash\":\"";

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Event(Box<AuditEvent>),
    Checkpoint(Checkpoint),
}

/// A signed statement by the node key: "the chain up to record `seq - 1` has head hash `prev`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    #[serde(with = "rfc3339")]
    pub time: std::time::SystemTime,
    /// Which key signed (see `PublicKey::key_id`).
    pub key_id: String,
    /// Ed25519 signature over [`checkpoint_message`], hex.
    pub signature: String,
}

/// The bytes a checkpoint signs: domain tag, its own sequence number, the head hash it covers and
/// its timestamp, so a signature cannot be replayed at another position.
pub fn checkpoint_message(seq: u64, prev: &[u8; 32], time: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(96);
    message.extend_from_slice(b"ztee-audit-checkpoint-v1\n");
    message.extend_from_slice(seq.to_string().as_bytes());
    message.push(b'\n');
    message.extend_from_slice(hex::encode(prev).as_bytes());
    message.push(b'\n');
    message.extend_from_slice(time.as_bytes());
    message
}

#[derive(Serialize)]
struct RecordBody<'a> {
    seq: u64,
    prev: String,
    #[serde(flatten)]
    payload: &'a Payload,
}

/// A record as read back from disk, with its verified-or-not hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    #[serde(flatten)]
    pub payload: Payload,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// Serializes a record into its line (with trailing newline) and returns the line and its hash.
pub fn encode(
    seq: u64,
    prev: &[u8; 32],
    payload: &Payload,
) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
    let body = RecordBody {
        seq,
        prev: hex::encode(prev),
        payload,
    };
    let mut line = serde_json::to_vec(&body)?;
    // serde_json writes an object, so the last byte is `}`: drop it, hash, append the hash field.
    line.pop();
    let hash: [u8; 32] = Sha256::digest(&line).into();
    line.extend_from_slice(HASH_SUFFIX_START);
    line.extend_from_slice(hex::encode(hash).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

/// Why a line is not a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not JSON of the record shape.
    Malformed(String),
    /// Well-formed, but `hash` does not match the line's content (the line was edited).
    HashMismatch,
}

/// Parses one line (without its newline) and checks its self-hash.
pub fn decode(line: &[u8]) -> Result<Record, LineError> {
    let record: Record =
        serde_json::from_slice(line).map_err(|e| LineError::Malformed(e.to_string()))?;
    if line.len() < HASH_SUFFIX_LEN + 1
        || !line[line.len() - HASH_SUFFIX_LEN..].starts_with(HASH_SUFFIX_START)
    {
        return Err(LineError::Malformed(
            "the `hash` field is not the last field of the line".to_string(),
        ));
    }
    let computed: [u8; 32] = Sha256::digest(&line[..line.len() - HASH_SUFFIX_LEN]).into();
    if computed != record.hash {
        return Err(LineError::HashMismatch);
    }
    Ok(record)
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut bytes)
            .map_err(|e| serde::de::Error::custom(format!("expected 64 hex digits: {e}")))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Outcome, Principal};

    fn sample() -> Payload {
        Payload::Event(Box::new(AuditEvent::new(
            EventType::SandboxCreate,
            Outcome::Success,
            Principal::system(),
        )))
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let (line, hash) = encode(1, &GENESIS_HASH, &sample()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line.last(), Some(&b'\n'));
        let record = decode(&line[..line.len() - 1]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(record.seq, 1);
        assert_eq!(record.hash, hash);
        assert_eq!(record.prev, GENESIS_HASH);
    }

    #[test]
    fn an_edited_line_fails_its_hash() {
        let (line, _) = encode(1, &GENESIS_HASH, &sample()).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(line).unwrap_or_default();
        let edited = text.replace("\"success\"", "\"failure\"");
        assert_ne!(text, edited);
        assert_eq!(
            decode(edited.trim_end().as_bytes()),
            Err(LineError::HashMismatch)
        );
    }
}
