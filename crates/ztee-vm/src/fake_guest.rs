//! A fake guest for tests: the agent's side of an authenticated channel on a real Unix socket,
//! driven by hand, so tests can make the guest do what a broken or hostile one would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use ztee_wire::{
    BootSecret, FrameDecoder, GuestMessage, HostMessage, Opener, Sealer, SessionKeys,
    PROTOCOL_VERSION,
};

use crate::channel::Channel;

/// The guest end of an authenticated session.
pub(crate) struct FakeGuest {
    stream: UnixStream,
    sealer: Sealer,
    opener: Opener,
    decoder: FrameDecoder,
}

impl FakeGuest {
    pub(crate) async fn send(&mut self, message: &GuestMessage) {
        let frame = self.sealer.seal(message).unwrap();
        self.stream.write_all(&frame).await.unwrap();
    }

    pub(crate) async fn next(&mut self) -> HostMessage {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return self.opener.open(&frame).unwrap();
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut buf))
                .await
                .expect("a host message in time")
                .unwrap();
            assert!(n > 0, "host closed the channel");
            self.decoder.push(&buf[..n]);
        }
    }
}

/// An authenticated channel and the fake guest at its other end.
pub(crate) async fn session() -> (Arc<Channel>, FakeGuest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let secret = BootSecret::from_bytes([5; 32]);
    let guest = tokio::spawn(async move {
        let secret = BootSecret::from_bytes([5; 32]);
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut decoder = FrameDecoder::new();
        let mut opener = Opener::unauthenticated();
        let mut buf = vec![0u8; 4096];
        let next = |decoder: &mut FrameDecoder| decoder.next_frame().unwrap();
        let hello = loop {
            if let Some(frame) = next(&mut decoder) {
                break frame;
            }
            let n = stream.read(&mut buf).await.unwrap();
            decoder.push(&buf[..n]);
        };
        let HostMessage::Hello {
            nonce: host_nonce, ..
        } = opener.open(&hello).unwrap()
        else {
            panic!("expected Hello")
        };
        let guest_nonce = [7u8; 32];
        let ack = Sealer::unauthenticated()
            .seal(&GuestMessage::HelloAck {
                version: PROTOCOL_VERSION,
                nonce: guest_nonce,
                proof: secret.agent_proof(&host_nonce, &guest_nonce),
            })
            .unwrap();
        stream.write_all(&ack).await.unwrap();
        let confirm = loop {
            if let Some(frame) = next(&mut decoder) {
                break frame;
            }
            let n = stream.read(&mut buf).await.unwrap();
            decoder.push(&buf[..n]);
        };
        let _: HostMessage = opener.open(&confirm).unwrap();
        let keys = SessionKeys::derive(&secret, &host_nonce, &guest_nonce);
        let mut guest = FakeGuest {
            stream,
            sealer: Sealer::keyed(keys.guest_to_host),
            opener: Opener::keyed(keys.host_to_guest),
            decoder,
        };
        guest
            .send(&GuestMessage::Ready {
                agent_version: "test".into(),
                kernel_release: "test".into(),
            })
            .await;
        guest
    });
    let channel = Arc::new(
        Channel::connect(&socket, &secret, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let guest = guest.await.unwrap();
    (channel, guest, dir)
}
