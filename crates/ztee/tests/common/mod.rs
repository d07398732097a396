//! What the command-line tests share: the `ztee` binary with a clean environment, the guest
//! assets, and a real `ztee serve` on a loopback port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Where `make guest` put the kernel, rootfs and agent (or `ZTEE_GUEST_DIR`).
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/ztee/guest")
}

/// `ztee ARGS` on `data_dir`, with none of the caller's ztee settings and no stdin.
pub fn ztee(data_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ztee"));
    command
        .args(args)
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_GUEST_DIR", guest_dir())
        .env_remove("ZTEE_LOG")
        .env_remove("ZTEE_API_KEY_FILE")
        .env_remove("ZTEE_CONFIG")
        .stdin(Stdio::null());
    command
}

/// A process's status and both outputs, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// False (after a loud SKIPPED line) when QEMU cannot start here, so VM tests cannot run.
pub fn qemu_available() -> bool {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return false;
    }
    true
}

/// A `ztee serve` on a free loopback port, stopped (SIGTERM) when dropped.
pub struct Serve {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub listen: String,
    /// The admin API key it created at its first start.
    pub admin_key: String,
}

impl Serve {
    /// Starts it on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = ztee(data_dir, &["serve", "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Dropped (and so stopped) if it never gets to listen.
        let mut serve = Self {
            child,
            listen,
            admin_key: String::new(),
        };
        let admin_key = BufReader::new(stdout).lines().next().unwrap().unwrap();
        assert!(admin_key.starts_with("ztee_"), "{admin_key}");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines.next().expect("serve ended before listening").unwrap();
            if line.contains("listening on") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        serve.admin_key = admin_key;
        serve
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
