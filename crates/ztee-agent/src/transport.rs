//! The byte stream to the host, over whichever device the VMM offers: a virtio-serial port
//! named [`ztee_wire::VIRTIO_PORT_NAME`] (QEMU) or a vsock listener on
//! [`ztee_wire::VSOCK_PORT`] (Firecracker). The kernel command line says which
//! (`ztee.transport=vsock` or `ztee.transport=virtio-serial`); without it the agent probes for the
//! devices. The session above sees the same [`HostLink`] either way.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PORTS_DIR: &str = "/sys/class/virtio-ports";
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How long to sleep while the host end is not connected (reads return 0 then) before looking
/// again. The port raises SIGIO when the host connects, which ends the wait at once; the timeout
/// only bounds the cost of a missed signal. An idle VM therefore wakes ten times a second, not
/// hundreds: that is what lets many pooled VMs sit on one host.
const DISCONNECTED_WAIT: Duration = Duration::from_millis(100);

/// What a read from the host produced.
pub enum Received {
    /// `n` bytes are in the buffer.
    Data(usize),
    /// The host end went away: the session starts over.
    Disconnected,
    /// A new host connection; replies go to this handle from now on.
    Connected(File),
}

/// The host end of the agent channel, whichever device carries it.
pub trait HostLink {
    /// Where replies go before the first [`Received::Connected`], if anywhere.
    fn initial_writer(&self) -> std::io::Result<Option<File>>;
    /// Waits for bytes, a disconnection or a new connection.
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<Received>;
}

/// Which device carries the agent channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    VirtioSerial,
    Vsock,
}

/// The transport the kernel command line names, if it names one.
pub fn kind_from_cmdline(cmdline: &str) -> Result<Option<Kind>, String> {
    match cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("ztee.transport="))
    {
        None => Ok(None),
        Some("vsock") => Ok(Some(Kind::Vsock)),
        Some("virtio-serial") => Ok(Some(Kind::VirtioSerial)),
        Some(other) => Err(format!(
            "ztee.transport={other} is not a transport (vsock or virtio-serial)"
        )),
    }
}

/// Opens the agent's end of the channel: the transport the kernel command line names, else the
/// first device that appears (the virtio-serial port, or a virtio vsock device).
pub fn open() -> Result<Box<dyn HostLink>, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let kind = match kind_from_cmdline(&cmdline)? {
        Some(kind) => kind,
        None => probe()?,
    };
    match kind {
        Kind::VirtioSerial => Ok(Box::new(SerialPort(open_virtio_port()?))),
        Kind::Vsock => {
            let listener = VsockListener::bind(ztee_wire::VSOCK_PORT)?;
            // The host waits for this line on the console before it snapshots a template VM.
            eprintln!("{READY_MARKER}");
            Ok(Box::new(listener))
        }
    }
}

/// The virtio device id of a vsock device (virtio spec, "Device Types").
const VIRTIO_ID_VSOCK: &str = "0x0013";

fn probe() -> Result<Kind, String> {
    let started = Instant::now();
    loop {
        if find_port()?.is_some() {
            return Ok(Kind::VirtioSerial);
        }
        if has_virtio_vsock() {
            return Ok(Kind::Vsock);
        }
        if started.elapsed() > PORT_WAIT {
            return Err(format!(
                "neither a virtio-serial port named {} nor a vsock device after {PORT_WAIT:?}",
                ztee_wire::VIRTIO_PORT_NAME
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn has_virtio_vsock() -> bool {
    fs::read_dir("/sys/bus/virtio/devices")
        .map(|entries| {
            entries.flatten().any(|entry| {
                fs::read_to_string(entry.path().join("device"))
                    .map(|id| id.trim() == VIRTIO_ID_VSOCK)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// A virtio-serial port: one file, connected or not as the host's socket is.
struct SerialPort(File);

impl HostLink for SerialPort {
    fn initial_writer(&self) -> std::io::Result<Option<File>> {
        self.0.try_clone().map(Some)
    }

    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<Received> {
        match read_some(&mut self.0, buf)? {
            0 => Ok(Received::Disconnected),
            n => Ok(Received::Data(n)),
        }
    }
}

/// A listening stream socket (AF_VSOCK in a guest): one host connection at a time; when it ends,
/// the next one is accepted.
pub struct VsockListener {
    listener: OwnedFd,
    connection: Option<File>,
}

impl VsockListener {
    /// Listens on vsock `port` for any CID (the host connects from CID 2, or through
    /// Firecracker's hybrid vsock).
    pub fn bind(port: u32) -> Result<Self, String> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned at once below.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("vsock socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid starting value.
        let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        address.svm_port = port;
        address.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: bind(2) and listen(2) on the descriptor we own, with a pointer to a local
        // sockaddr_vm and its exact size.
        unsafe {
            if libc::bind(
                listener.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            ) != 0
            {
                return Err(format!(
                    "bind vsock port {port}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if libc::listen(listener.as_raw_fd(), 1) != 0 {
                return Err(format!(
                    "listen on vsock port {port}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(Self::from_listener(listener))
    }

    /// Serves connections accepted from `listener`, a listening stream socket of any family.
    pub fn from_listener(listener: OwnedFd) -> Self {
        Self {
            listener,
            connection: None,
        }
    }

    fn accept(&self) -> std::io::Result<File> {
        loop {
            // SAFETY: accept4(2) on the listening descriptor we own; the peer address is not
            // asked for (null pointers).
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` is a new descriptor nobody else owns.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl HostLink for VsockListener {
    fn initial_writer(&self) -> std::io::Result<Option<File>> {
        Ok(None)
    }

    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<Received> {
        let Some(connection) = self.connection.as_mut() else {
            let connection = self.accept()?;
            let writer = connection.try_clone()?;
            self.connection = Some(connection);
            return Ok(Received::Connected(writer));
        };
        match connection.read(buf) {
            Ok(0) => {
                self.connection = None;
                Ok(Received::Disconnected)
            }
            Ok(n) => Ok(Received::Data(n)),
            // A snapshot restore resets every vsock connection; so may the host.
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                self.connection = None;
                Ok(Received::Disconnected)
            }
            Err(err) => Err(err),
        }
    }
}

/// Finds and opens the agent's port, waiting briefly for the device to be probed, and asks for
/// SIGIO when the host connects.
pub fn open_virtio_port() -> Result<File, String> {
    let started = Instant::now();
    loop {
        if let Some(path) = find_port()? {
            let port = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            request_sigio(&port)?;
            // The host waits for this line on the console before it snapshots a template VM.
            eprintln!("{READY_MARKER}");
            return Ok(port);
        }
        if started.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {} after {PORT_WAIT:?}",
                ztee_wire::VIRTIO_PORT_NAME
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn find_port() -> Result<Option<PathBuf>, String> {
    let entries = match fs::read_dir(PORTS_DIR) {
        Ok(entries) => entries,
        Err(_) => return Ok(None),
    };
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == ztee_wire::VIRTIO_PORT_NAME {
            return Ok(Some(PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Printed on the console once the agent listens on its port.
pub const READY_MARKER: &str = "ztee-agent: listening";

fn request_sigio(port: &File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fd = port.as_raw_fd();
    // SAFETY: fcntl(2) on an fd we own, with integer arguments only.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == -1 {
            return Err(format!("F_SETOWN: {}", std::io::Error::last_os_error()));
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) == -1 {
            return Err(format!("O_ASYNC: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Blocks SIGIO in the calling thread. Called first thing in `main`, so every thread inherits
/// the mask and SIGIO (whose default action terminates) is only ever consumed by
/// `wait_for_host`; children get a clean mask in `sandbox::enter`.
pub fn block_sigio() {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_for_host() {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: DISCONNECTED_WAIT.as_nanos() as libc::c_long,
    };
    // SAFETY: as in `block_sigio`; sigtimedwait only reads the set and timeout.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
    }
}

/// Reads what is available; returns 0 while the host end is disconnected (after waiting for it
/// to connect, up to a short timeout), so the caller can reset its session and try again.
pub fn read_some(port: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    match port.read(buf) {
        Ok(0) => {
            wait_for_host();
            Ok(0)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use ztee_wire::{
        BootSecret, FrameDecoder, GuestMessage, HostMessage, Opener, Sealer, SessionKeys,
        PROTOCOL_VERSION,
    };

    #[test]
    fn the_command_line_names_the_transport() {
        let kind = |c: &str| kind_from_cmdline(c);
        assert_eq!(
            kind("console=ttyS0 ztee.transport=vsock quiet"),
            Ok(Some(Kind::Vsock))
        );
        assert_eq!(
            kind("ztee.transport=virtio-serial"),
            Ok(Some(Kind::VirtioSerial))
        );
        assert_eq!(kind("console=ttyS0 rdinit=/init"), Ok(None));
        assert!(kind("ztee.transport=tcp").is_err());
    }

    /// The host side of the agent protocol, blocking: handshake, then pings.
    struct Host {
        stream: UnixStream,
        sealer: Sealer,
        opener: Opener,
        decoder: FrameDecoder,
    }

    impl Host {
        fn connect(path: &std::path::Path, secret: &BootSecret) -> Self {
            let stream = UnixStream::connect(path).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut host = Self {
                stream,
                sealer: Sealer::unauthenticated(),
                opener: Opener::unauthenticated(),
                decoder: FrameDecoder::new(),
            };
            let host_nonce = [7u8; 32];
            host.send(&HostMessage::Hello {
                version: PROTOCOL_VERSION,
                nonce: host_nonce,
            });
            let GuestMessage::HelloAck { nonce, proof, .. } = host.receive() else {
                panic!("no HelloAck")
            };
            assert_eq!(proof, secret.agent_proof(&host_nonce, &nonce));
            host.send(&HostMessage::Confirm {
                proof: secret.host_proof(&host_nonce, &nonce),
            });
            let keys = SessionKeys::derive(secret, &host_nonce, &nonce);
            host.sealer = Sealer::keyed(keys.host_to_guest);
            host.opener = Opener::keyed(keys.guest_to_host);
            assert!(matches!(host.receive(), GuestMessage::Ready { .. }));
            host
        }

        fn send(&mut self, message: &HostMessage) {
            let frame = self.sealer.seal(message).unwrap();
            self.stream.write_all(&frame).unwrap();
        }

        fn receive(&mut self) -> GuestMessage {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    return self.opener.open(&frame).unwrap();
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).unwrap();
                assert!(n > 0, "the agent closed the connection");
                self.decoder.push(&buf[..n]);
            }
        }

        fn ping(&mut self, id: u32) {
            self.send(&HostMessage::Ping { id });
            assert!(matches!(self.receive(), GuestMessage::Done { id: got } if got == id));
        }
    }

    /// The agent's session served through the listener transport — the code a vsock listener
    /// runs, over a Unix listening socket, since this host cannot connect to its own vsock
    /// ports. One host after another: each gets a fresh, authenticated session.
    #[test]
    fn sessions_over_a_listener_survive_host_reconnects() {
        let dir = std::env::temp_dir().join(format!("ztee-agent-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let listener = VsockListener::from_listener(OwnedFd::from(listener));
        let secret = BootSecret::from_bytes([9u8; 32]);
        let agent_secret = BootSecret::from_bytes([9u8; 32]);
        std::thread::spawn(move || crate::session::serve(Box::new(listener), agent_secret));

        let mut first = Host::connect(&path, &secret);
        first.ping(1);
        first.ping(2);
        drop(first);
        // A restore resets vsock connections; the next host gets a new session.
        let mut second = Host::connect(&path, &secret);
        second.ping(3);
        drop(second);
        // A host that does not know the secret gets no session: the agent's proof does not
        // match what it expects (and the agent would refuse its Confirm).
        let wrong = BootSecret::from_bytes([1u8; 32]);
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| Host::connect(&path, &wrong));
        let message = result
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(message.contains("assertion"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered only after a timeout"
        );
        let mut third = Host::connect(&path, &secret);
        third.ping(4);
        let _ = fs::remove_dir_all(&dir);
    }

    /// The real AF_VSOCK listener, bound on this host's kernel. Whether a connection reaches
    /// it depends on a vsock transport: a guest has the virtio one; a host needs
    /// `vsock_loopback` for `VMADDR_CID_LOCAL`. When the host has it, a connection must be
    /// accepted; when not, only the bind is checked (and the test says so).
    #[test]
    fn the_vsock_listener_binds_and_serves_over_loopback_when_the_host_allows() {
        // An unusual port: another test run on this host may hold one.
        let port = 40_000 + (std::process::id() % 20_000);
        let listener = match VsockListener::bind(port) {
            Ok(listener) => listener,
            Err(err) if err.contains("Address family not supported") => {
                eprintln!("this kernel has no AF_VSOCK: {err}");
                return;
            }
            Err(err) => panic!("{err}"),
        };
        // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
        let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: getsockname on the listener's descriptor into a local sockaddr_vm of `len` bytes.
        let rc = unsafe {
            libc::getsockname(
                listener.listener.as_raw_fd(),
                std::ptr::addr_of_mut!(address).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(address.svm_port, port);
        assert_eq!(address.svm_cid, libc::VMADDR_CID_ANY);
        if loopback_connects(port) {
            let mut listener = listener;
            let mut buf = [0u8; 16];
            assert!(matches!(
                listener.receive(&mut buf),
                Ok(Received::Connected(_))
            ));
        } else {
            eprintln!("no vsock loopback transport on this host: connection not tested");
        }
    }

    /// Connects to `port` on `VMADDR_CID_LOCAL`; true when a transport carried it.
    fn loopback_connects(port: u32) -> bool {
        // SAFETY: a socket we own, connected to a local sockaddr_vm, then closed.
        unsafe {
            let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return false;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut address: libc::sockaddr_vm = std::mem::zeroed();
            address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            address.svm_port = port;
            address.svm_cid = 1; // VMADDR_CID_LOCAL
            libc::connect(
                fd.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            ) == 0
        }
    }
}
