//! The guest half of egress: a listener on `127.0.0.1:<port>` whose connections are relayed, byte
//! for byte, to the host's egress proxy over the agent channel. The guest does not interpret the
//! proxy requests: every decision (allowlist, addresses, SNI, DLP) is made on the host.
//!
//! Flow control: each side may have at most `EGRESS_WINDOW` bytes of a stream in flight. The
//! reader thread of a connection sends only what the host has credited, and the writer thread
//! returns credit to the host as it writes the host's data to the program. So a stream that
//! nobody reads stalls by itself instead of filling memory or the channel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use ztee_wire::message::FailureKind;
use ztee_wire::{
    GuestMessage, RequestId, StreamId, EGRESS_CHUNK, EGRESS_WINDOW, MAX_EGRESS_STREAMS,
};

use crate::link::Link;

/// The relay, once the host has started it for this VM's sandbox.
static RELAY: OnceLock<Arc<Relay>> = OnceLock::new();

struct Relay {
    link: Arc<Link>,
    streams: Mutex<HashMap<StreamId, Arc<Stream>>>,
    next_id: AtomicU32,
}

struct Stream {
    id: StreamId,
    socket: TcpStream,
    /// Host data for the writer thread; `None` asks it to shut down the write side.
    to_program: Mutex<Option<Sender<Option<Vec<u8>>>>>,
    /// Bytes the host still accepts from this stream.
    credit: Mutex<u32>,
    credit_changed: Condvar,
    closed: AtomicBool,
}

/// `EgressStart`: listens on `127.0.0.1:port` and answers `Done`, or `Failed` if it cannot.
pub fn start(id: RequestId, port: u16, link: Arc<Link>) {
    if RELAY.get().is_some() {
        link.send(&GuestMessage::Done { id });
        return;
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(err) => {
            link.send(&GuestMessage::Failed {
                id,
                kind: FailureKind::Io,
                message: format!("cannot listen on 127.0.0.1:{port}: {err}"),
            });
            return;
        }
    };
    let relay = Arc::new(Relay {
        link: link.clone(),
        streams: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(1),
    });
    if RELAY.set(relay.clone()).is_err() {
        link.send(&GuestMessage::Done { id });
        return;
    }
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            match connection {
                Ok(socket) => relay.open(socket),
                Err(err) => eprintln!("ztee-agent: egress accept failed: {err}"),
            }
        }
    });
    link.send(&GuestMessage::Done { id });
}

/// `EgressData`: bytes for the program.
pub fn data(stream: StreamId, data: Vec<u8>) {
    if let Some(s) = find(stream) {
        let sender = s.to_program.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = sender.as_ref() {
            let _ = tx.send(Some(data));
        }
    }
}

/// `EgressShutdown`: the host sends no more; the program reads EOF once the queue is written.
pub fn shutdown(stream: StreamId) {
    if let Some(s) = find(stream) {
        if let Some(tx) = s
            .to_program
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(None);
        }
    }
}

/// `EgressClose`: ends the stream at once.
pub fn close(stream: StreamId) {
    if let Some(relay) = RELAY.get() {
        relay.remove(stream);
    }
}

/// `EgressCredit`: the host passed on `bytes` more of the program's data.
pub fn credit(stream: StreamId, bytes: u32) {
    if let Some(s) = find(stream) {
        let mut credit = s.credit.lock().unwrap_or_else(|p| p.into_inner());
        *credit = credit.saturating_add(bytes).min(EGRESS_WINDOW);
        s.credit_changed.notify_all();
    }
}

/// The session that relayed the streams is gone: drop every connection.
pub fn close_all() {
    if let Some(relay) = RELAY.get() {
        let ids: Vec<StreamId> = relay.map().keys().copied().collect();
        for id in ids {
            relay.remove(id);
        }
    }
}

fn find(stream: StreamId) -> Option<Arc<Stream>> {
    RELAY.get()?.map().get(&stream).cloned()
}

impl Relay {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, id: StreamId) {
        if let Some(stream) = self.map().remove(&id) {
            stream.closed.store(true, Ordering::SeqCst);
            let _ = stream.socket.shutdown(Shutdown::Both);
            stream
                .to_program
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            stream.credit_changed.notify_all();
        }
    }

    fn open(self: &Arc<Self>, socket: TcpStream) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (Ok(reader), Ok(writer)) = (socket.try_clone(), socket.try_clone()) else {
            return;
        };
        let (tx, rx) = channel::<Option<Vec<u8>>>();
        let stream = Arc::new(Stream {
            id,
            socket,
            to_program: Mutex::new(Some(tx)),
            credit: Mutex::new(EGRESS_WINDOW),
            credit_changed: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        {
            let mut map = self.map();
            if map.len() >= MAX_EGRESS_STREAMS {
                // Too many at once: this connection is refused (closed) in the guest.
                return;
            }
            map.insert(id, stream.clone());
        }
        if !self.link.send(&GuestMessage::EgressOpen { stream: id }) {
            self.remove(id);
            return;
        }
        let relay = self.clone();
        let s = stream.clone();
        std::thread::spawn(move || relay.pump_to_host(&s, reader));
        let relay = self.clone();
        std::thread::spawn(move || {
            let mut writer = writer;
            while let Ok(item) = rx.recv() {
                match item {
                    Some(data) => {
                        if writer.write_all(&data).is_err() {
                            relay.abort(&stream);
                            return;
                        }
                        relay.link.send(&GuestMessage::EgressCredit {
                            stream: stream.id,
                            bytes: data.len() as u32,
                        });
                    }
                    None => {
                        let _ = writer.shutdown(Shutdown::Write);
                        return;
                    }
                }
            }
        });
    }

    /// Program -> host, within the host's credit.
    fn pump_to_host(&self, stream: &Stream, mut reader: TcpStream) {
        let mut buf = vec![0u8; EGRESS_CHUNK];
        loop {
            let allowed = {
                let mut credit = stream.credit.lock().unwrap_or_else(|p| p.into_inner());
                while *credit == 0 && !stream.closed.load(Ordering::SeqCst) {
                    credit = stream
                        .credit_changed
                        .wait(credit)
                        .unwrap_or_else(|p| p.into_inner());
                }
                (*credit as usize).min(EGRESS_CHUNK)
            };
            if stream.closed.load(Ordering::SeqCst) {
                return;
            }
            let n = match reader.read(&mut buf[..allowed]) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.abort(stream);
                    return;
                }
            };
            if n == 0 {
                if !stream.closed.load(Ordering::SeqCst) {
                    self.link
                        .send(&GuestMessage::EgressShutdown { stream: stream.id });
                }
                return;
            }
            {
                let mut credit = stream.credit.lock().unwrap_or_else(|p| p.into_inner());
                *credit = credit.saturating_sub(n as u32);
            }
            if !self.link.send(&GuestMessage::EgressData {
                stream: stream.id,
                data: buf[..n].to_vec(),
            }) {
                self.abort(stream);
                return;
            }
        }
    }

    /// The program's side failed: tell the host and forget the stream.
    fn abort(&self, stream: &Stream) {
        if !stream.closed.swap(true, Ordering::SeqCst) {
            self.link
                .send(&GuestMessage::EgressClose { stream: stream.id });
        }
        self.remove(stream.id);
    }
}
