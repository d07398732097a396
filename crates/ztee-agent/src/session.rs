//! One authenticated session with the host at a time: handshake, then requests until the host
//! disconnects (a new session may follow, e.g. after a snapshot restore) or asks to power off.

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use ztee_wire::auth::proofs_match;
use ztee_wire::message::FailureKind;
use ztee_wire::{
    BootSecret, FrameDecoder, GuestMessage, HostMessage, Nonce, Opener, RequestId, Sealer,
    SessionKeys, PROTOCOL_VERSION,
};

use crate::link::Link;
use crate::transport::{HostLink, Received};
use crate::{egress, exec, files, lease, sandbox};

/// Input for a running request: command stdin or file upload data.
pub enum Input {
    Data(Vec<u8>),
    Close,
    /// A new size for a command's pseudo-terminal.
    Resize(ztee_wire::PtySize),
}

/// Requests in flight, by id.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<HashMap<RequestId, Pending>>>);

pub struct Pending {
    pub input: Option<Sender<Input>>,
    /// Process group to signal, for commands.
    pub process_group: Option<i32>,
}

impl Requests {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `id`; false when it is already in use.
    pub fn insert(&self, id: RequestId, pending: Pending) -> bool {
        let mut map = self.map();
        if map.contains_key(&id) {
            return false;
        }
        map.insert(id, pending);
        true
    }

    pub fn set_process_group(&self, id: RequestId, pgid: i32) {
        if let Some(p) = self.map().get_mut(&id) {
            p.process_group = Some(pgid);
        }
    }

    pub fn remove(&self, id: RequestId) {
        self.map().remove(&id);
    }

    fn input(&self, id: RequestId, input: Input) -> bool {
        match self.map().get(&id).and_then(|p| p.input.as_ref()) {
            Some(tx) => tx.send(input).is_ok(),
            None => false,
        }
    }

    fn signal(&self, id: RequestId, signal: i32) -> bool {
        match self.map().get(&id).and_then(|p| p.process_group) {
            Some(pgid) => {
                // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
                unsafe { libc::kill(-pgid, signal) == 0 }
            }
            None => false,
        }
    }

    /// Kills every running command (the session that asked for them is gone).
    fn abort_all(&self) {
        // Dropping the input senders tells uploads they were abandoned.
        for (_, pending) in self.map().drain() {
            if let Some(pgid) = pending.process_group {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
}

enum Phase {
    AwaitHello,
    AwaitConfirm {
        host_nonce: Nonce,
        guest_nonce: Nonce,
    },
    Active,
}

pub fn serve(mut host: Box<dyn HostLink>, mut secret: BootSecret) {
    let link = match host.initial_writer() {
        Ok(out) => Arc::new(Link::new(out)),
        Err(err) => {
            eprintln!("ztee-agent: cannot duplicate the channel: {err}");
            return;
        }
    };
    let requests = Requests::default();
    let mut phase = Phase::AwaitHello;
    let mut opener = Opener::unauthenticated();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let reset = |phase: &mut Phase, opener: &mut Opener, decoder: &mut FrameDecoder| {
        *phase = Phase::AwaitHello;
        *opener = Opener::unauthenticated();
        *decoder = FrameDecoder::new();
        link.set_sealer(None);
        requests.abort_all();
        egress::close_all();
    };
    loop {
        let n = match host.receive(&mut buf) {
            Ok(Received::Data(n)) => n,
            Ok(Received::Disconnected) => {
                if !matches!(phase, Phase::AwaitHello) || decoder.buffered() > 0 {
                    reset(&mut phase, &mut opener, &mut decoder);
                }
                continue;
            }
            Ok(Received::Connected(out)) => {
                // A new host: nothing of an earlier session carries over.
                reset(&mut phase, &mut opener, &mut decoder);
                link.set_out(out);
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("ztee-agent: channel read failed: {err}");
                return;
            }
        };
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    eprintln!("ztee-agent: dropping session: {err}");
                    reset(&mut phase, &mut opener, &mut decoder);
                    break;
                }
            };
            let message: HostMessage = match opener.open(&frame) {
                Ok(message) => message,
                Err(err) => {
                    eprintln!("ztee-agent: dropping session: {err}");
                    reset(&mut phase, &mut opener, &mut decoder);
                    break;
                }
            };
            match (&phase, message) {
                (_, HostMessage::Hello { version, nonce }) if !opener.is_authenticated() => {
                    let guest_nonce = random_nonce();
                    link.send_handshake(&GuestMessage::HelloAck {
                        version: PROTOCOL_VERSION,
                        nonce: guest_nonce,
                        proof: secret.agent_proof(&nonce, &guest_nonce),
                    });
                    phase = if version == PROTOCOL_VERSION {
                        Phase::AwaitConfirm {
                            host_nonce: nonce,
                            guest_nonce,
                        }
                    } else {
                        Phase::AwaitHello
                    };
                }
                (
                    Phase::AwaitConfirm {
                        host_nonce,
                        guest_nonce,
                    },
                    HostMessage::Confirm { proof },
                ) => {
                    if !proofs_match(&secret.host_proof(host_nonce, guest_nonce), &proof) {
                        eprintln!("ztee-agent: host failed to prove the VM secret");
                        reset(&mut phase, &mut opener, &mut decoder);
                        break;
                    }
                    let keys = SessionKeys::derive(&secret, host_nonce, guest_nonce);
                    opener = Opener::keyed(keys.host_to_guest);
                    link.set_sealer(Some(Sealer::keyed(keys.guest_to_host)));
                    phase = Phase::Active;
                    link.send(&GuestMessage::Ready {
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                        kernel_release: kernel_release(),
                    });
                }
                (Phase::Active, HostMessage::PowerOff) => {
                    requests.abort_all();
                    return;
                }
                (Phase::Active, message) => {
                    handle(message, &link, &requests, &mut secret);
                }
                (_, message) => {
                    eprintln!(
                        "ztee-agent: dropping session: {} before authentication",
                        message.name()
                    );
                    reset(&mut phase, &mut opener, &mut decoder);
                    break;
                }
            }
        }
    }
}

fn handle(message: HostMessage, link: &Arc<Link>, requests: &Requests, secret: &mut BootSecret) {
    let fail = |id, kind, text: &str| {
        link.send(&GuestMessage::Failed {
            id,
            kind,
            message: text.to_string(),
        });
    };
    match message {
        HostMessage::Lease {
            id,
            entropy,
            hostname,
            machine_id,
            next_secret,
            unix_time_ns,
            max_processes,
        } => match lease::apply(&entropy, &hostname, &machine_id, unix_time_ns) {
            Ok(()) => {
                sandbox::set_max_processes(max_processes);
                *secret = BootSecret::from_bytes(next_secret);
                link.send(&GuestMessage::Done { id });
            }
            Err(err) => fail(id, FailureKind::InvalidRequest, &err),
        },
        HostMessage::Exec(request) => exec::start(request, link.clone(), requests.clone()),
        HostMessage::Stdin { id, data } => {
            requests.input(id, Input::Data(data));
        }
        HostMessage::CloseStdin { id } | HostMessage::FileEnd { id } => {
            requests.input(id, Input::Close);
        }
        HostMessage::FileChunk { id, data } => {
            if !requests.input(id, Input::Data(data)) {
                fail(
                    id,
                    FailureKind::InvalidRequest,
                    "no file upload with this id",
                );
            }
        }
        HostMessage::Resize { id, size } => {
            requests.input(id, Input::Resize(size));
        }
        HostMessage::Signal { id, signal } => {
            if !(1..=64).contains(&signal) {
                fail(
                    id,
                    FailureKind::InvalidRequest,
                    "signal number out of range",
                );
            } else {
                requests.signal(id, signal);
            }
        }
        HostMessage::WriteFile { id, path, mode } => {
            files::start_write(id, path, mode, link.clone(), requests.clone())
        }
        HostMessage::ReadFile { id, path } => {
            files::start_read(id, path, link.clone(), requests.clone())
        }
        HostMessage::Ping { id } => {
            link.send(&GuestMessage::Done { id });
        }
        HostMessage::EgressStart { id, port } => egress::start(id, port, link.clone()),
        HostMessage::EgressData { stream, data } => egress::data(stream, data),
        HostMessage::EgressShutdown { stream } => egress::shutdown(stream),
        HostMessage::EgressClose { stream } => egress::close(stream),
        HostMessage::EgressCredit { stream, bytes } => egress::credit(stream, bytes),
        HostMessage::Hello { .. } | HostMessage::Confirm { .. } | HostMessage::PowerOff => {}
    }
}

fn random_nonce() -> Nonce {
    let mut nonce = [0u8; 32];
    if getrandom::getrandom(&mut nonce).is_err() {
        // The kernel CRNG is always available to PID 1 after boot; this is unreachable in
        // practice, and a zero nonce would only weaken session separation, not authentication.
        eprintln!("ztee-agent: getrandom failed");
    }
    nonce
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
