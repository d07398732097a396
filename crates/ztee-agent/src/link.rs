//! The outgoing half of the channel, shared by every thread that reports to the host.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use ztee_wire::{GuestMessage, Sealer};

pub struct Link {
    state: Mutex<State>,
}

struct State {
    /// `None` while no host is connected (a vsock listener before its first connection).
    out: Option<File>,
    /// `None` until a session is authenticated; output produced meanwhile is dropped.
    sealer: Option<Sealer>,
}

impl Link {
    pub fn new(out: Option<File>) -> Self {
        Self {
            state: Mutex::new(State { out, sealer: None }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends on the authenticated session; false when there is none or the write failed.
    pub fn send(&self, message: &GuestMessage) -> bool {
        let mut state = self.state();
        let State { out, sealer } = &mut *state;
        let Some(sealer) = sealer.as_mut() else {
            return false;
        };
        let Some(out) = out.as_mut() else {
            return false;
        };
        match sealer.seal(message) {
            Ok(frame) => out.write_all(&frame).is_ok(),
            Err(err) => {
                eprintln!("ztee-agent: cannot encode {}: {err}", message.name());
                false
            }
        }
    }

    /// Sends a handshake message, which travels before the session has keys.
    pub fn send_handshake(&self, message: &GuestMessage) -> bool {
        let mut state = self.state();
        let Some(out) = state.out.as_mut() else {
            return false;
        };
        match Sealer::unauthenticated().seal(message) {
            Ok(frame) => out.write_all(&frame).is_ok(),
            Err(_) => false,
        }
    }

    /// Sends from now on to a new host connection.
    pub fn set_out(&self, out: File) {
        self.state().out = Some(out);
    }

    pub fn set_sealer(&self, sealer: Option<Sealer>) {
        self.state().sealer = sealer;
    }
}
