//! Framing: `u32 big-endian body length | u64 big-endian sequence | payload | 16-byte tag`.
//!
//! The length is checked against [`MAX_FRAME_BODY`] before anything is buffered beyond the
//! 4-byte prefix, so a hostile peer cannot make the receiver allocate more than one frame.

use crate::WireError;

/// Largest encoded message carried in one frame.
pub const MAX_PAYLOAD: usize = crate::MAX_DATA_CHUNK + 64 * 1024;
pub const SEQ_LEN: usize = 8;
pub const TAG_LEN: usize = 16;
const LEN_PREFIX: usize = 4;
const MIN_FRAME_BODY: usize = SEQ_LEN + TAG_LEN;
pub const MAX_FRAME_BODY: usize = MIN_FRAME_BODY + MAX_PAYLOAD;

/// A frame split into its parts; its tag is not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub seq: u64,
    pub payload: Vec<u8>,
    pub tag: [u8; TAG_LEN],
}

impl RawFrame {
    /// Appends the wire form of this frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(WireError::FrameTooLarge {
                len: self.payload.len(),
                limit: MAX_PAYLOAD,
            });
        }
        let body_len = (MIN_FRAME_BODY + self.payload.len()) as u32;
        out.reserve(LEN_PREFIX + body_len as usize);
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&self.tag);
        Ok(())
    }
}

/// Incremental decoder: push bytes as they arrive, pull complete frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed, or an error when
    /// the stream is malformed (after which the stream must be dropped: framing is lost).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, WireError> {
        let Some(prefix) = self.buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LEN_PREFIX];
        len_bytes.copy_from_slice(prefix);
        let body_len = u32::from_be_bytes(len_bytes) as usize;
        if body_len > MAX_FRAME_BODY {
            return Err(WireError::FrameTooLarge {
                len: body_len,
                limit: MAX_FRAME_BODY,
            });
        }
        if body_len < MIN_FRAME_BODY {
            return Err(WireError::FrameTooShort {
                len: body_len,
                min: MIN_FRAME_BODY,
            });
        }
        let total = LEN_PREFIX + body_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = &self.buf[LEN_PREFIX..total];
        let (seq_bytes, rest) = body.split_at(SEQ_LEN);
        let (payload, tag_bytes) = rest.split_at(rest.len() - TAG_LEN);
        let mut seq = [0u8; SEQ_LEN];
        seq.copy_from_slice(seq_bytes);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(tag_bytes);
        let frame = RawFrame {
            seq: u64::from_be_bytes(seq),
            payload: payload.to_vec(),
            tag,
        };
        self.buf.drain(..total);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> RawFrame {
        RawFrame {
            seq: 7,
            payload: payload.to_vec(),
            tag: [9; TAG_LEN],
        }
    }

    #[test]
    fn round_trips_byte_by_byte() {
        let mut wire = Vec::new();
        frame(b"hello").encode_into(&mut wire).unwrap();
        frame(b"").encode_into(&mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![frame(b"hello"), frame(b"")]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn rejects_oversized_length_before_buffering_body() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_short_frame() {
        let mut dec = FrameDecoder::new();
        dec.push(&3u32.to_be_bytes());
        dec.push(&[0; 3]);
        assert!(matches!(
            dec.next_frame(),
            Err(WireError::FrameTooShort { .. })
        ));
    }

    #[test]
    fn refuses_to_encode_oversized_payload() {
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(frame(&big).encode_into(&mut Vec::new()).is_err());
    }
}
