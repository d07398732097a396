//! Whatever bytes a hostile guest sends, decoding ends in a value or a typed error: never a
//! panic, never an allocation beyond one bounded frame.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use ztee_wire::session::decode;
use ztee_wire::{FrameDecoder, GuestMessage, HostMessage, Opener, Sealer};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let mut opener = Opener::keyed([3; 32]);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = opener.open::<GuestMessage>(&frame);
            let _ = decode::<HostMessage>(&frame.payload);
        }
        let _ = decode::<GuestMessage>(&bytes);
    }

    #[test]
    fn valid_frames_survive_any_split(data in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..4096) {
        let mut sealer = Sealer::keyed([4; 32]);
        let wire = sealer.seal(&GuestMessage::Stdout { id: 9, data: data.clone() }).unwrap();
        let split = split.min(wire.len());
        let mut decoder = FrameDecoder::new();
        let mut opener = Opener::keyed([4; 32]);
        decoder.push(&wire[..split]);
        let early = decoder.next_frame().unwrap();
        decoder.push(&wire[split..]);
        let frame = early.or_else(|| decoder.next_frame().unwrap()).unwrap();
        let message: GuestMessage = opener.open(&frame).unwrap();
        prop_assert_eq!(message, GuestMessage::Stdout { id: 9, data });
    }

    #[test]
    fn any_single_bit_flip_is_detected(bit in 0usize..(8 * 64)) {
        let mut sealer = Sealer::keyed([4; 32]);
        let mut wire = sealer.seal(&GuestMessage::Exited { id: 1, status: ztee_wire::ExitKind::Code(0) }).unwrap();
        let bit = bit % (8 * wire.len());
        wire[bit / 8] ^= 1 << (bit % 8);
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire);
        // A flipped length waits for bytes that never come or is refused; any frame that does
        // come out must fail authentication.
        let accepted = match decoder.next_frame() {
            Ok(Some(frame)) => Opener::keyed([4; 32]).open::<GuestMessage>(&frame).is_ok(),
            _ => false,
        };
        prop_assert!(!accepted, "flipped bit {} went unnoticed", bit);
    }
}
