//! Host end of the agent channel: connect, authenticate, then route guest messages to the
//! request that is waiting for them. The guest is untrusted: its frames are bounded and
//! authenticated by `ztee-wire`, messages for unknown requests are dropped, and its text is
//! sanitized before anyone sees it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use ztee_wire::auth::proofs_match;
use ztee_wire::{
    BootSecret, FrameDecoder, GuestMessage, HostMessage, Opener, RequestId, Sealer, SessionKeys,
    PROTOCOL_VERSION,
};

use crate::VmError;

/// Messages buffered per request before the reader waits for the consumer (backpressure).
const ROUTE_DEPTH: usize = 64;

/// Longest the host waits for the guest's next message where the guest owes one promptly: the
/// answer to a lease, a ping, a file transfer's next chunk or its end, a command's start. The
/// agent answers these in milliseconds even under TCG on a loaded host; a guest silent for this
/// long is broken or hostile, and its VM is abandoned (docs/execution.md).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one frame may wait to be written to the guest. The agent never stops reading its
/// channel (input for commands is queued in the guest), so a full socket for this long means
/// the guest stopped serving it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

type Routes = Arc<Mutex<HashMap<RequestId, mpsc::Sender<GuestMessage>>>>;

/// Where the guest's egress stream messages go: the sandbox's egress relay
/// ([`crate::egress`]), which sits above the channel and sends its answers through it.
pub(crate) trait EgressSink: Send + Sync {
    /// One egress stream message from the guest; must not wait, the channel's reader calls it.
    fn deliver(self: Arc<Self>, message: GuestMessage);
    /// The channel is gone: every stream ends.
    fn close_all(&self);
}

/// Where egress stream messages go once the sandbox has egress; `None` drops them.
pub(crate) type EgressSlot = Arc<Mutex<Option<Arc<dyn EgressSink>>>>;

pub struct Channel {
    writer: tokio::sync::Mutex<(OwnedWriteHalf, Sealer)>,
    routes: Routes,
    egress: EgressSlot,
    next_id: AtomicU32,
    /// `true` once the channel is gone: the guest closed it, sent garbage, or was abandoned.
    closed: Arc<watch::Sender<bool>>,
    reader: tokio::task::JoinHandle<()>,
    pub agent_version: String,
    pub kernel_release: String,
}

/// The authenticated session a handshake leaves behind.
struct Session {
    sealer: Sealer,
    opener: Opener,
    /// Holds any bytes that arrived after `Ready`.
    decoder: FrameDecoder,
}

/// What the agent said when the session was authenticated.
struct Ready {
    agent_version: String,
    kernel_release: String,
}

impl Channel {
    /// Connects to the VMM's socket for the agent, retrying while the VMM creates it, and runs the
    /// handshake. Fails after `deadline`.
    pub async fn connect(
        socket: &Path,
        secret: &BootSecret,
        deadline: Instant,
    ) -> Result<Self, VmError> {
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(err) => return Err(VmError::io("connect to agent socket", socket, err)),
            }
        };
        Self::over(stream, secret, deadline).await
    }

    /// Runs the handshake on a stream already connected to the agent (e.g. through a hybrid
    /// vsock socket) and starts routing its messages.
    pub async fn over(
        stream: UnixStream,
        secret: &BootSecret,
        deadline: Instant,
    ) -> Result<Self, VmError> {
        let (mut read, mut write) = stream.into_split();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (session, ready) =
            tokio::time::timeout(remaining, handshake(&mut read, &mut write, secret))
                .await
                .map_err(|_| VmError::BootTimeout(remaining))??;
        let routes: Routes = Arc::default();
        let egress: EgressSlot = Arc::default();
        let closed = Arc::new(watch::Sender::new(false));
        let reader = tokio::spawn(read_loop(
            read,
            session.decoder,
            session.opener,
            routes.clone(),
            egress.clone(),
            closed.clone(),
        ));
        Ok(Self {
            writer: tokio::sync::Mutex::new((write, session.sealer)),
            routes,
            egress,
            next_id: AtomicU32::new(1),
            closed,
            reader,
            agent_version: ready.agent_version,
            kernel_release: ready.kernel_release,
        })
    }

    /// Reserves a request id and the queue its guest messages arrive on.
    pub fn open_request(&self) -> Result<(RequestId, mpsc::Receiver<GuestMessage>), VmError> {
        self.open_request_with_depth(ROUTE_DEPTH)
    }

    /// As [`Channel::open_request`], with a queue of `depth` messages: for a consumer that may
    /// be slower than the guest (a file streamed to an HTTP client), what waits for it is
    /// bounded by `depth` chunks rather than [`ROUTE_DEPTH`].
    pub fn open_request_with_depth(
        &self,
        depth: usize,
    ) -> Result<(RequestId, mpsc::Receiver<GuestMessage>), VmError> {
        if self.is_closed() {
            return Err(VmError::ChannelClosed);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(depth.max(1));
        lock(&self.routes).insert(id, tx);
        Ok((id, rx))
    }

    pub fn close_request(&self, id: RequestId) {
        lock(&self.routes).remove(&id);
    }

    /// Sends one frame, waiting at most [`SEND_TIMEOUT`] for the guest to take it; a guest that
    /// does not is abandoned.
    pub async fn send(&self, message: &HostMessage) -> Result<(), VmError> {
        let written = tokio::time::timeout(SEND_TIMEOUT, async {
            let mut writer = self.writer.lock().await;
            let (stream, sealer) = &mut *writer;
            let frame = sealer.seal(message)?;
            stream
                .write_all(&frame)
                .await
                .map_err(|_| VmError::ChannelClosed)
        })
        .await;
        match written {
            Ok(result) => result,
            Err(_) => Err(self.abandon("take a message from the host", SEND_TIMEOUT)),
        }
    }

    /// The guest's next message for a request it must answer promptly, waiting at most
    /// [`REPLY_TIMEOUT`]. `what` names the answer awaited, for the error.
    pub async fn reply(
        &self,
        replies: &mut mpsc::Receiver<GuestMessage>,
        what: &'static str,
    ) -> Result<GuestMessage, VmError> {
        self.next_before(replies, tokio::time::Instant::now() + REPLY_TIMEOUT, what)
            .await
    }

    /// The guest's next message for a request, or, once `deadline` passes, the channel is
    /// abandoned (and the VM with it) and the wait fails.
    pub async fn next_before(
        &self,
        replies: &mut mpsc::Receiver<GuestMessage>,
        deadline: tokio::time::Instant,
        what: &'static str,
    ) -> Result<GuestMessage, VmError> {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(VmError::ChannelClosed),
            Err(_) => Err(self.abandon(what, deadline.saturating_duration_since(started))),
        }
    }

    /// Gives up on a guest that did not do `what` within `waited`: the channel closes, every
    /// waiting request fails, and whoever holds the VM ([`crate::Sandbox`]) kills it.
    fn abandon(&self, what: &'static str, waited: Duration) -> VmError {
        tracing::warn!(
            what,
            waited_ms = waited.as_millis() as u64,
            "the guest did not answer in time; abandoning its VM"
        );
        self.reader.abort();
        shut(&self.closed, &self.routes, &self.egress);
        VmError::GuestUnresponsive { what, waited }
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the channel is gone, whatever the reason.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        // An error means the sender is gone, which only happens with `self`: closed too.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Routes the guest's egress streams to `relay` from now on.
    pub(crate) fn set_egress(&self, relay: Arc<dyn EgressSink>) {
        *lock(&self.egress) = Some(relay);
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the channel closed and wakes everything waiting on it: dropping the routes' senders
/// fails every waiting request with "channel closed", and egress streams end.
fn shut(closed: &watch::Sender<bool>, routes: &Routes, egress: &EgressSlot) {
    closed.send_replace(true);
    lock(routes).clear();
    if let Some(relay) = lock(egress).take() {
        relay.close_all();
    }
}

async fn handshake(
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
    secret: &BootSecret,
) -> Result<(Session, Ready), VmError> {
    let mut host_nonce = [0u8; 32];
    getrandom::getrandom(&mut host_nonce)
        .map_err(|e| VmError::Guest(format!("no randomness for the handshake: {e}")))?;
    let mut handshake_sealer = Sealer::unauthenticated();
    let hello = handshake_sealer.seal(&HostMessage::Hello {
        version: PROTOCOL_VERSION,
        nonce: host_nonce,
    })?;
    write
        .write_all(&hello)
        .await
        .map_err(|_| VmError::ChannelClosed)?;

    let mut decoder = FrameDecoder::new();
    let mut opener = Opener::unauthenticated();
    let (guest_nonce, proof) = match next_message(read, &mut decoder, &mut opener).await? {
        GuestMessage::HelloAck {
            version,
            nonce,
            proof,
        } => {
            if version != PROTOCOL_VERSION {
                return Err(ztee_wire::WireError::VersionMismatch {
                    peer: version,
                    ours: PROTOCOL_VERSION,
                }
                .into());
            }
            (nonce, proof)
        }
        other => return Err(unexpected("handshake", &other)),
    };
    if !proofs_match(&secret.agent_proof(&host_nonce, &guest_nonce), &proof) {
        return Err(VmError::AgentAuthentication);
    }
    let confirm = handshake_sealer.seal(&HostMessage::Confirm {
        proof: secret.host_proof(&host_nonce, &guest_nonce),
    })?;
    write
        .write_all(&confirm)
        .await
        .map_err(|_| VmError::ChannelClosed)?;

    let keys = SessionKeys::derive(secret, &host_nonce, &guest_nonce);
    let mut opener = Opener::keyed(keys.guest_to_host);
    let ready = match next_message(read, &mut decoder, &mut opener).await? {
        GuestMessage::Ready {
            agent_version,
            kernel_release,
        } => Ready {
            agent_version: crate::error::sanitize_guest_text(&agent_version),
            kernel_release: crate::error::sanitize_guest_text(&kernel_release),
        },
        other => return Err(unexpected("handshake", &other)),
    };
    let session = Session {
        sealer: Sealer::keyed(keys.host_to_guest),
        opener,
        decoder,
    };
    Ok((session, ready))
}

fn unexpected(phase: &'static str, message: &GuestMessage) -> VmError {
    ztee_wire::WireError::Unexpected {
        phase,
        got: message.name(),
    }
    .into()
}

async fn next_message(
    read: &mut OwnedReadHalf,
    decoder: &mut FrameDecoder,
    opener: &mut Opener,
) -> Result<GuestMessage, VmError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(opener.open(&frame)?);
        }
        let n = read
            .read(&mut buf)
            .await
            .map_err(|_| VmError::ChannelClosed)?;
        if n == 0 {
            return Err(VmError::ChannelClosed);
        }
        decoder.push(&buf[..n]);
    }
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut decoder: FrameDecoder,
    mut opener: Opener,
    routes: Routes,
    egress: EgressSlot,
    closed: Arc<watch::Sender<bool>>,
) {
    let result: Result<(), VmError> = async {
        loop {
            let message = next_message(&mut read, &mut decoder, &mut opener).await?;
            if is_egress(&message) {
                let relay = lock(&egress).clone();
                match relay {
                    Some(relay) => relay.deliver(message),
                    None => tracing::debug!(
                        message = message.name(),
                        "egress message without egress; dropped"
                    ),
                }
                continue;
            }
            let Some(id) = request_id(&message) else {
                tracing::debug!(
                    message = message.name(),
                    "ignoring unsolicited guest message"
                );
                continue;
            };
            let route = lock(&routes).get(&id).cloned();
            match route {
                // A consumer that went away simply stops receiving.
                Some(tx) => {
                    let _ = tx.send(message).await;
                }
                None => tracing::debug!(id, "guest message for no open request"),
            }
        }
    }
    .await;
    if let Err(err) = result {
        if !matches!(err, VmError::ChannelClosed) {
            tracing::warn!(%err, "closing the agent channel");
        }
    }
    shut(&closed, &routes, &egress);
}

fn is_egress(message: &GuestMessage) -> bool {
    matches!(
        message,
        GuestMessage::EgressOpen { .. }
            | GuestMessage::EgressData { .. }
            | GuestMessage::EgressShutdown { .. }
            | GuestMessage::EgressClose { .. }
            | GuestMessage::EgressCredit { .. }
    )
}

fn request_id(message: &GuestMessage) -> Option<RequestId> {
    match message {
        GuestMessage::Started { id, .. }
        | GuestMessage::Stdout { id, .. }
        | GuestMessage::Stderr { id, .. }
        | GuestMessage::Exited { id, .. }
        | GuestMessage::FileChunk { id, .. }
        | GuestMessage::FileEnd { id }
        | GuestMessage::Done { id }
        | GuestMessage::Failed { id, .. } => Some(*id),
        GuestMessage::HelloAck { .. }
        | GuestMessage::Ready { .. }
        | GuestMessage::EgressOpen { .. }
        | GuestMessage::EgressData { .. }
        | GuestMessage::EgressShutdown { .. }
        | GuestMessage::EgressClose { .. }
        | GuestMessage::EgressCredit { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    //! A fake guest on a real Unix socket: the host must refuse it without panicking.

    use super::*;
    use tokio::net::UnixListener;

    async fn fake_guest(
        reply: impl FnOnce(Nonce) -> Vec<u8> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut decoder = FrameDecoder::new();
            let mut buf = vec![0u8; 4096];
            let hello = loop {
                if let Some(frame) = decoder.next_frame().unwrap() {
                    break frame;
                }
                let n = stream.read(&mut buf).await.unwrap();
                decoder.push(&buf[..n]);
            };
            let nonce = match Opener::unauthenticated()
                .open::<HostMessage>(&hello)
                .unwrap()
            {
                HostMessage::Hello { nonce, .. } => nonce,
                other => panic!("expected Hello, got {}", other.name()),
            };
            stream.write_all(&reply(nonce)).await.unwrap();
            // Hold the connection open so the host sees the bytes, not an EOF.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        (dir, socket)
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    use ztee_wire::Nonce;

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        let (_dir, socket) = fake_guest(|_| {
            let mut bytes = u32::MAX.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0xAA; 64]);
            bytes
        })
        .await;
        let secret = BootSecret::from_bytes([1; 32]);
        let err = Channel::connect(&socket, &secret, deadline())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                VmError::Protocol(ztee_wire::WireError::FrameTooLarge { .. })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_message_is_refused() {
        let (_dir, socket) = fake_guest(|_| {
            let mut out = Vec::new();
            ztee_wire::RawFrame {
                seq: 0,
                payload: vec![0xff, 0xff, 0xff, 0xff, 0x0f],
                tag: [0; 16],
            }
            .encode_into(&mut out)
            .unwrap();
            out
        })
        .await;
        let secret = BootSecret::from_bytes([1; 32]);
        let err = Channel::connect(&socket, &secret, deadline())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, VmError::Protocol(ztee_wire::WireError::Malformed(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn guest_without_the_secret_fails_authentication() {
        let (_dir, socket) = fake_guest(|host_nonce| {
            let impostor = BootSecret::from_bytes([9; 32]);
            let guest_nonce = [7; 32];
            Sealer::unauthenticated()
                .seal(&GuestMessage::HelloAck {
                    version: PROTOCOL_VERSION,
                    nonce: guest_nonce,
                    proof: impostor.agent_proof(&host_nonce, &guest_nonce),
                })
                .unwrap()
        })
        .await;
        let secret = BootSecret::from_bytes([1; 32]);
        let err = Channel::connect(&socket, &secret, deadline())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, VmError::AgentAuthentication), "{err}");
    }

    #[tokio::test]
    async fn silent_guest_times_out() {
        let (_dir, socket) = fake_guest(|_| Vec::new()).await;
        let secret = BootSecret::from_bytes([1; 32]);
        let soon = Instant::now() + Duration::from_millis(300);
        let err = Channel::connect(&socket, &secret, soon)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, VmError::BootTimeout(_)), "{err}");
    }
}
