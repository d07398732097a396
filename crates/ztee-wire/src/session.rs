//! Sealing and opening frames. Handshake frames travel unauthenticated (their content carries the
//! proofs); every later frame carries `HMAC-SHA256(key, seq | payload)[..16]` and a sequence number
//! that must increase by exactly one.

use hmac::{Hmac, Mac};
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::frame::{RawFrame, TAG_LEN};
use crate::WireError;

type HmacSha256 = Hmac<Sha256>;

fn tag(key: &[u8; 32], seq: u64, payload: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&seq.to_be_bytes());
    mac.update(payload);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

/// Outgoing half of a session.
pub struct Sealer {
    key: Option<[u8; 32]>,
    next_seq: u64,
}

impl Sealer {
    /// For handshake frames only.
    pub fn unauthenticated() -> Self {
        Self {
            key: None,
            next_seq: 0,
        }
    }

    pub fn keyed(key: [u8; 32]) -> Self {
        Self {
            key: Some(key),
            next_seq: 0,
        }
    }

    /// Encodes `message` into a complete wire frame.
    pub fn seal<M: Serialize>(&mut self, message: &M) -> Result<Vec<u8>, WireError> {
        let payload =
            postcard::to_stdvec(message).map_err(|err| WireError::Encode(err.to_string()))?;
        let seq = self.next_seq;
        let frame = RawFrame {
            seq,
            tag: match &self.key {
                Some(key) => tag(key, seq, &payload),
                None => [0; TAG_LEN],
            },
            payload,
        };
        let mut out = Vec::new();
        frame.encode_into(&mut out)?;
        self.next_seq += 1;
        Ok(out)
    }
}

/// Incoming half of a session.
pub struct Opener {
    key: Option<[u8; 32]>,
    next_seq: u64,
}

impl Opener {
    pub fn unauthenticated() -> Self {
        Self {
            key: None,
            next_seq: 0,
        }
    }

    pub fn keyed(key: [u8; 32]) -> Self {
        Self {
            key: Some(key),
            next_seq: 0,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.key.is_some()
    }

    /// Checks a frame's tag and sequence, then decodes its message.
    pub fn open<M: DeserializeOwned>(&mut self, frame: &RawFrame) -> Result<M, WireError> {
        if let Some(key) = &self.key {
            let expected = tag(key, frame.seq, &frame.payload);
            if !bool::from(expected.ct_eq(&frame.tag)) {
                return Err(WireError::BadTag);
            }
            if frame.seq != self.next_seq {
                return Err(WireError::BadSequence {
                    expected: self.next_seq,
                    got: frame.seq,
                });
            }
        }
        let message = decode(&frame.payload)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(message)
    }
}

/// Strictly decodes one message: trailing bytes are an error.
pub fn decode<M: DeserializeOwned>(payload: &[u8]) -> Result<M, WireError> {
    let (message, rest) =
        postcard::take_from_bytes(payload).map_err(|err| WireError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::message::{GuestMessage, HostMessage};

    fn frames(bytes: &[u8]) -> Vec<RawFrame> {
        let mut dec = FrameDecoder::new();
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn keyed_round_trip() {
        let mut sealer = Sealer::keyed([5; 32]);
        let mut opener = Opener::keyed([5; 32]);
        let mut wire = sealer.seal(&HostMessage::Ping { id: 1 }).unwrap();
        wire.extend(sealer.seal(&HostMessage::PowerOff).unwrap());
        let got: Vec<HostMessage> = frames(&wire)
            .iter()
            .map(|f| opener.open(f).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![HostMessage::Ping { id: 1 }, HostMessage::PowerOff]
        );
    }

    #[test]
    fn rejects_tampered_payload_wrong_key_and_replay() {
        let mut sealer = Sealer::keyed([5; 32]);
        let wire = sealer.seal(&GuestMessage::Done { id: 3 }).unwrap();
        let frame = frames(&wire).remove(0);

        let mut tampered = frame.clone();
        tampered.payload[1] ^= 1;
        assert!(matches!(
            Opener::keyed([5; 32]).open::<GuestMessage>(&tampered),
            Err(WireError::BadTag)
        ));
        assert!(matches!(
            Opener::keyed([6; 32]).open::<GuestMessage>(&frame),
            Err(WireError::BadTag)
        ));
        let mut opener = Opener::keyed([5; 32]);
        opener.open::<GuestMessage>(&frame).unwrap();
        assert!(matches!(
            opener.open::<GuestMessage>(&frame),
            Err(WireError::BadSequence { .. })
        ));
    }

    #[test]
    fn rejects_trailing_bytes_and_garbage() {
        let mut payload = postcard::to_stdvec(&HostMessage::PowerOff).unwrap();
        payload.push(0);
        assert!(decode::<HostMessage>(&payload).is_err());
        assert!(decode::<HostMessage>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<HostMessage>(&[]).is_err());
    }
}
