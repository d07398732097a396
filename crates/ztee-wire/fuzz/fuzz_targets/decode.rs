//! Feeds arbitrary bytes to the frame decoder and both message decoders, keyed and not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztee_wire::{FrameDecoder, GuestMessage, HostMessage, Opener};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    decoder.push(data);
    let mut keyed = Opener::keyed([1; 32]);
    let mut plain = Opener::unauthenticated();
    while let Ok(Some(frame)) = decoder.next_frame() {
        let _ = keyed.open::<GuestMessage>(&frame);
        let _ = plain.open::<GuestMessage>(&frame);
        let _ = plain.open::<HostMessage>(&frame);
    }
});
