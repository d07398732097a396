//! Host end of a sandbox's egress streams: each connection a program makes to the guest's proxy
//! arrives as an `EgressOpen` and is served by the shared [`EgressProxy`] through an in-memory
//! pipe, while this module moves bytes between that pipe and the agent channel.
//!
//! The guest is untrusted here too: it may only send what the host credited (at most
//! `EGRESS_WINDOW` bytes in flight per stream, else the stream is closed), only
//! `MAX_EGRESS_STREAMS` streams at once, counted until the host's work for a stream has ended
//! (its connect, relay and audit record, not merely until the guest closed it), and only
//! `OPEN_RATE` new streams a second after a burst of `OPEN_BURST`. Refused opens are not
//! recorded one by one (that would hand the guest the audit trail's disk): they are counted and
//! reported as one record a second at most. The channel's reader never waits on a stream:
//! messages are handed over without blocking, so a stalled stream cannot hold up command output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use ztee_egress::{Decision, EgressGrant, EgressProxy, EgressRecord};
use ztee_wire::{
    GuestMessage, HostMessage, StreamId, EGRESS_CHUNK, EGRESS_WINDOW, MAX_EGRESS_STREAMS,
};

use crate::channel::{Channel, EgressSink};

/// Longest wait for the guest to write a finished stream's last bytes before it is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// New streams a sandbox may open per second, after a burst of [`OPEN_BURST`]. A program that
/// fetches packages opens a handful; a guest opening hundreds a second is flooding.
const OPEN_RATE: f64 = 32.0;
const OPEN_BURST: f64 = 128.0;

/// How often at most refused opens are reported, as one record with their count.
const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What the channel's reader hands to a stream's task.
enum FromGuest {
    Data(Vec<u8>),
    Shutdown,
}

struct StreamHandle {
    to_task: mpsc::UnboundedSender<FromGuest>,
    /// Guest bytes received and not yet credited back.
    in_flight: Arc<AtomicU32>,
    /// Bytes the guest still accepts from the host.
    credit: Arc<AtomicU32>,
    credit_added: Arc<Notify>,
    abort: watch::Sender<bool>,
}

/// The egress streams of one sandbox.
pub(crate) struct EgressRelay {
    proxy: Arc<EgressProxy>,
    grant: EgressGrant,
    channel: Weak<Channel>,
    streams: Mutex<HashMap<StreamId, StreamHandle>>,
    /// One permit per stream whose host task still runs, however the guest closed it.
    slots: Arc<Semaphore>,
    opens: Mutex<TokenBucket>,
    /// Opens refused since the last report, and whether a report is due.
    refused: AtomicU64,
    report_pending: AtomicBool,
}

/// Why an open was refused.
#[derive(Clone, Copy)]
enum Refusal {
    TooMany,
    TooFast,
    IdInUse,
}

/// Opens allowed: refills at [`OPEN_RATE`] a second up to [`OPEN_BURST`].
struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * OPEN_RATE;
        self.tokens = (self.tokens + earned).min(OPEN_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl EgressSink for EgressRelay {
    fn deliver(self: Arc<Self>, message: GuestMessage) {
        EgressRelay::deliver(&self, message);
    }

    fn close_all(&self) {
        EgressRelay::close_all(self);
    }
}

impl EgressRelay {
    pub(crate) fn new(proxy: Arc<EgressProxy>, grant: EgressGrant, channel: Weak<Channel>) -> Self {
        Self {
            proxy,
            grant,
            channel,
            streams: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_EGRESS_STREAMS)),
            opens: Mutex::new(TokenBucket {
                tokens: OPEN_BURST,
                refilled: Instant::now(),
            }),
            refused: AtomicU64::new(0),
            report_pending: AtomicBool::new(false),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, StreamHandle>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one egress message from the guest. Never waits.
    pub(crate) fn deliver(self: &Arc<Self>, message: GuestMessage) {
        match message {
            GuestMessage::EgressOpen { stream } => self.open(stream),
            GuestMessage::EgressData { stream, data } => {
                let mut streams = self.streams();
                let Some(handle) = streams.get(&stream) else {
                    return;
                };
                let len = data.len() as u32;
                let in_flight = handle.in_flight.fetch_add(len, Ordering::SeqCst) + len;
                let over = in_flight > EGRESS_WINDOW || data.len() > EGRESS_CHUNK;
                if !over {
                    let _ = handle.to_task.send(FromGuest::Data(data));
                    return;
                }
                {
                    tracing::warn!(
                        stream,
                        "guest sent more egress data than it was credited; closing the stream"
                    );
                    if let Some(handle) = streams.remove(&stream) {
                        let _ = handle.abort.send(true);
                    }
                    drop(streams);
                    self.send_later(HostMessage::EgressClose { stream });
                }
            }
            GuestMessage::EgressShutdown { stream } => {
                if let Some(handle) = self.streams().get(&stream) {
                    let _ = handle.to_task.send(FromGuest::Shutdown);
                }
            }
            GuestMessage::EgressClose { stream } => {
                if let Some(handle) = self.streams().remove(&stream) {
                    let _ = handle.abort.send(true);
                }
            }
            GuestMessage::EgressCredit { stream, bytes } => {
                if let Some(handle) = self.streams().get(&stream) {
                    let credit = handle.credit.load(Ordering::SeqCst);
                    let added = credit.saturating_add(bytes).min(EGRESS_WINDOW);
                    handle.credit.store(added, Ordering::SeqCst);
                    handle.credit_added.notify_one();
                }
            }
            _ => {}
        }
    }

    /// The channel is gone: every stream ends (their proxy tasks still write their records).
    pub(crate) fn close_all(&self) {
        for (_, handle) in self.streams().drain() {
            let _ = handle.abort.send(true);
        }
    }

    fn send_later(&self, message: HostMessage) {
        let channel = self.channel.clone();
        tokio::spawn(async move {
            if let Some(channel) = channel.upgrade() {
                let _ = channel.send(&message).await;
            }
        });
    }

    /// A slot for a new stream, unless its id is `in_use`, the sandbox opens streams too fast, or
    /// all slots are held.
    fn admit(&self, in_use: bool) -> Result<OwnedSemaphorePermit, Refusal> {
        if in_use {
            return Err(Refusal::IdInUse);
        }
        if !self.opens.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Refusal::TooFast);
        }
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooMany)
    }

    /// Closes a stream the host will not serve, and counts it for the next aggregated report.
    fn refuse(self: &Arc<Self>, stream: StreamId, why: Refusal) {
        self.send_later(HostMessage::EgressClose { stream });
        self.refused.fetch_add(1, Ordering::SeqCst);
        if self.report_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let relay = self.clone();
        let reason = match why {
            Refusal::TooMany => "more streams open at once than a sandbox may have",
            Refusal::TooFast => "streams opened faster than a sandbox may open them",
            Refusal::IdInUse => "a stream id that is still in use",
        };
        tokio::spawn(async move {
            tokio::time::sleep(REFUSAL_REPORT_INTERVAL).await;
            relay.report_pending.store(false, Ordering::SeqCst);
            let count = relay.refused.swap(0, Ordering::SeqCst);
            tracing::warn!(count, reason, "refused egress streams of a sandbox");
            relay.grant.audit.record(&EgressRecord {
                sandbox: relay.grant.sandbox.clone(),
                method: String::new(),
                host: String::new(),
                port: 0,
                resolved: None,
                rule: Some("egress.streams".into()),
                bytes_up: 0,
                bytes_down: 0,
                decision: Decision::Denied,
                reason: format!(
                    "{count} egress stream(s) refused in the last second; first: {reason}"
                ),
                duration_ms: 0,
            });
        });
    }

    fn open(self: &Arc<Self>, stream: StreamId) {
        let (to_task, from_guest) = mpsc::unbounded_channel();
        let (abort, aborted) = watch::channel(false);
        let handle = StreamHandle {
            to_task,
            in_flight: Arc::new(AtomicU32::new(0)),
            credit: Arc::new(AtomicU32::new(EGRESS_WINDOW)),
            credit_added: Arc::new(Notify::new()),
            abort,
        };
        let task = StreamTask {
            id: stream,
            channel: self.channel.clone(),
            in_flight: handle.in_flight.clone(),
            credit: handle.credit.clone(),
            credit_added: handle.credit_added.clone(),
        };
        let slot = {
            let mut streams = self.streams();
            match self.admit(streams.contains_key(&stream)) {
                Ok(slot) => {
                    streams.insert(stream, handle);
                    slot
                }
                Err(why) => {
                    drop(streams);
                    self.refuse(stream, why);
                    return;
                }
            }
        };
        let relay = self.clone();
        tokio::spawn(async move {
            // Held until the host's work for the stream is over, connect and record included.
            let _slot = slot;
            let (client, pump) = tokio::io::duplex(EGRESS_WINDOW as usize);
            let (pump_read, pump_write) = tokio::io::split(pump);
            let (finished_tx, finished) = watch::channel(false);
            let serve = async {
                relay.proxy.serve(&relay.grant, client).await;
                let _ = finished_tx.send(true);
            };
            let to_proxy = task.to_proxy(from_guest, pump_write, aborted.clone(), finished);
            let to_guest = task.to_guest(pump_read, aborted.clone());
            tokio::join!(serve, to_proxy, to_guest);
            // Close discards what the guest has not written to the program yet, so wait until it
            // has credited everything back (bounded: a program that stops reading ends it).
            let drained = task.drained(aborted.clone());
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
            let guest_closed = *aborted.borrow();
            {
                // Only this stream's entry: the guest may have reused the id after closing it.
                let mut streams = relay.streams();
                if streams
                    .get(&stream)
                    .is_some_and(|h| Arc::ptr_eq(&h.in_flight, &task.in_flight))
                {
                    streams.remove(&stream);
                }
            }
            if !guest_closed {
                task.send(HostMessage::EgressClose { stream }).await;
            }
        });
    }
}

struct StreamTask {
    id: StreamId,
    channel: Weak<Channel>,
    in_flight: Arc<AtomicU32>,
    credit: Arc<AtomicU32>,
    credit_added: Arc<Notify>,
}

impl StreamTask {
    /// Returns once the guest has written all the host's data for this stream, or aborted.
    async fn drained(&self, mut aborted: watch::Receiver<bool>) {
        while self.credit.load(Ordering::SeqCst) < EGRESS_WINDOW {
            tokio::select! {
                _ = self.credit_added.notified() => {}
                _ = aborted.wait_for(|a| *a) => return,
            }
        }
    }

    async fn send(&self, message: HostMessage) -> bool {
        match self.channel.upgrade() {
            Some(channel) => channel.send(&message).await.is_ok(),
            None => false,
        }
    }

    /// Guest data into the proxy, crediting the guest as the proxy takes it.
    async fn to_proxy(
        &self,
        mut from_guest: mpsc::UnboundedReceiver<FromGuest>,
        mut pump: WriteHalf<DuplexStream>,
        mut aborted: watch::Receiver<bool>,
        mut finished: watch::Receiver<bool>,
    ) {
        loop {
            let item = tokio::select! {
                item = from_guest.recv() => item,
                _ = aborted.wait_for(|a| *a) => None,
                _ = finished.wait_for(|f| *f) => None,
            };
            match item {
                Some(FromGuest::Data(data)) => {
                    if pump.write_all(&data).await.is_err() {
                        return;
                    }
                    let len = data.len() as u32;
                    let _ = self
                        .in_flight
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                            Some(v.saturating_sub(len))
                        });
                    self.send(HostMessage::EgressCredit {
                        stream: self.id,
                        bytes: len,
                    })
                    .await;
                }
                Some(FromGuest::Shutdown) => {
                    let _ = pump.shutdown().await;
                    return;
                }
                None => return,
            }
        }
    }

    /// Proxy output to the guest, within the guest's credit.
    async fn to_guest(&self, mut pump: ReadHalf<DuplexStream>, mut aborted: watch::Receiver<bool>) {
        let mut buf = vec![0u8; EGRESS_CHUNK];
        loop {
            let credit = self.credit.load(Ordering::SeqCst) as usize;
            if credit == 0 {
                tokio::select! {
                    _ = self.credit_added.notified() => continue,
                    _ = aborted.wait_for(|a| *a) => return,
                }
            }
            let want = credit.min(buf.len());
            let n = tokio::select! {
                read = pump.read(&mut buf[..want]) => read.unwrap_or(0),
                _ = aborted.wait_for(|a| *a) => return,
            };
            if n == 0 {
                self.send(HostMessage::EgressShutdown { stream: self.id })
                    .await;
                return;
            }
            self.credit.fetch_sub(n as u32, Ordering::SeqCst);
            if !self
                .send(HostMessage::EgressData {
                    stream: self.id,
                    data: buf[..n].to_vec(),
                })
                .await
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The host relay against a fake guest on a real Unix socket (authenticated like the agent)
    //! and the real egress proxy: bytes flow with credit, and a guest that breaks the rules loses
    //! the stream.

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use ztee_egress::{Allowlist, EgressConfig, EgressGrant, EgressLog, EgressProxy};

    use super::*;
    use crate::fake_guest::FakeGuest;

    async fn session() -> (Arc<Channel>, FakeGuest, Arc<EgressLog>, tempfile::TempDir) {
        session_with(EgressConfig::default()).await
    }

    async fn session_with(
        config: EgressConfig,
    ) -> (Arc<Channel>, FakeGuest, Arc<EgressLog>, tempfile::TempDir) {
        let (channel, guest, dir) = crate::fake_guest::session().await;
        let log = Arc::new(EgressLog::default());
        let proxy = Arc::new(EgressProxy::from_config(config).unwrap());
        let grant = EgressGrant {
            sandbox: "sbx-test".into(),
            allowlist: Allowlist::new(vec!["allowed.example:443".parse().unwrap()]),
            audit: log.clone(),
        };
        channel.set_egress(Arc::new(EgressRelay::new(
            proxy,
            grant,
            Arc::downgrade(&channel),
        )));
        (channel, guest, log, dir)
    }

    #[tokio::test]
    async fn a_stream_is_relayed_with_credit_and_closed_after_the_guest_drained_it() {
        let (_channel, mut guest, log, _dir) = session().await;
        let request = b"GET http://elsewhere.example/ HTTP/1.1\r\n\r\n".to_vec();
        guest.send(&GuestMessage::EgressOpen { stream: 9 }).await;
        guest
            .send(&GuestMessage::EgressData {
                stream: 9,
                data: request.clone(),
            })
            .await;
        let mut answer = Vec::new();
        let mut credited = 0;
        loop {
            match guest.next().await {
                HostMessage::EgressCredit { stream: 9, bytes } => credited += bytes as usize,
                HostMessage::EgressData { stream: 9, data } => {
                    answer.extend_from_slice(&data);
                    // Written to the program: credit it back, as the agent does.
                    guest
                        .send(&GuestMessage::EgressCredit {
                            stream: 9,
                            bytes: data.len() as u32,
                        })
                        .await;
                }
                HostMessage::EgressShutdown { stream: 9 } => {}
                HostMessage::EgressClose { stream: 9 } => break,
                other => panic!("unexpected {}", other.name()),
            }
        }
        assert_eq!(credited, request.len());
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
        assert!(answer.contains("elsewhere.example:80 is not on this sandbox's egress allowlist"));
        assert_eq!(log.records().len(), 1);
    }

    #[tokio::test]
    async fn a_guest_that_sends_more_than_a_chunk_loses_the_stream() {
        let (_channel, mut guest, _log, _dir) = session().await;
        guest.send(&GuestMessage::EgressOpen { stream: 3 }).await;
        guest
            .send(&GuestMessage::EgressData {
                stream: 3,
                data: vec![b'A'; EGRESS_CHUNK + 1],
            })
            .await;
        loop {
            match guest.next().await {
                HostMessage::EgressClose { stream: 3 } => break,
                HostMessage::EgressCredit { .. } => panic!("oversized data was accepted"),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_closed_at_once() {
        let (_channel, mut guest, _log, _dir) = session().await;
        for stream in 1..=(MAX_EGRESS_STREAMS as u32 + 1) {
            guest.send(&GuestMessage::EgressOpen { stream }).await;
        }
        match guest.next().await {
            HostMessage::EgressClose { stream } => {
                assert_eq!(stream, MAX_EGRESS_STREAMS as u32 + 1)
            }
            other => panic!("unexpected {}", other.name()),
        }
    }

    /// The next `EgressClose` the host sends within `wait`, skipping credit and data.
    async fn next_close(guest: &mut FakeGuest, wait: Duration) -> Option<StreamId> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, guest.next()).await {
                Ok(HostMessage::EgressClose { stream }) => return Some(stream),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn a_stream_the_guest_closed_keeps_its_slot_until_the_host_is_done_with_it() {
        // A DNS server that never answers: each stream's host task waits on its connect.
        let silent_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = EgressConfig {
            dns_servers: vec![silent_dns.local_addr().unwrap()],
            connect_timeout_secs: 4,
            ..EgressConfig::default()
        };
        let (_channel, mut guest, _log, _dir) = session_with(config).await;
        let limit = MAX_EGRESS_STREAMS as u32;
        for stream in 1..=limit {
            guest.send(&GuestMessage::EgressOpen { stream }).await;
            guest
                .send(&GuestMessage::EgressData {
                    stream,
                    data: b"CONNECT allowed.example:443 HTTP/1.1\r\n\r\n".to_vec(),
                })
                .await;
        }
        // Let the requests reach the proxy, then close every stream from the guest's side.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for stream in 1..=limit {
            guest.send(&GuestMessage::EgressClose { stream }).await;
        }
        // The host is still resolving for all of them: one more stream is refused at once.
        guest
            .send(&GuestMessage::EgressOpen { stream: limit + 1 })
            .await;
        assert_eq!(
            next_close(&mut guest, Duration::from_secs(2)).await,
            Some(limit + 1),
            "a stream beyond the limit was accepted while the host still served the closed ones"
        );
    }

    #[tokio::test]
    async fn a_flood_of_opens_is_refused_and_reported_as_one_record() {
        let (_channel, mut guest, log, _dir) = session().await;
        let flood = (OPEN_BURST as u32) + 200;
        for stream in 1..=flood {
            guest.send(&GuestMessage::EgressOpen { stream }).await;
            guest.send(&GuestMessage::EgressClose { stream }).await;
        }
        let mut refused = 0;
        while next_close(&mut guest, Duration::from_millis(500))
            .await
            .is_some()
        {
            refused += 1;
        }
        assert!(
            refused >= 150,
            "only {refused} of {flood} opens were refused"
        );
        tokio::time::sleep(REFUSAL_REPORT_INTERVAL * 2).await;
        let reports: Vec<_> = log
            .records()
            .into_iter()
            .filter(|r| r.rule.as_deref() == Some("egress.streams"))
            .collect();
        assert!(
            !reports.is_empty() && reports.len() <= 3,
            "{} refusal records for {refused} refusals",
            reports.len()
        );
        assert_eq!(reports[0].decision, Decision::Denied);
        assert!(
            reports[0].reason.contains("refused"),
            "{}",
            reports[0].reason
        );
    }
}
