//! The terminal belongs to the command, not to the libraries: the progress spinner for long
//! operations, and the one way a value is typed without being echoed (key passphrases, secret
//! values). Libraries take status callbacks and ready values instead.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;
use ztee_supply::keys::{Passphrase, PASSPHRASE_ENV};

/// Progress for long operations (builds, downloads, scans): a spinner with the current stage on
/// stderr when it is a terminal, plain lines otherwise.
pub struct Spinner {
    bar: ProgressBar,
    plain: bool,
}

impl Spinner {
    pub fn new(title: &str) -> Spinner {
        let bar = ProgressBar::new_spinner();
        let plain = bar.is_hidden();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(title.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner { bar, plain }
    }

    pub fn set(&self, message: &str) {
        if self.plain {
            eprintln!("{}: {message}", self.bar.prefix());
        }
        self.bar.set_message(message.to_string());
    }

    pub fn finish(&self, message: &str) {
        self.bar.finish_and_clear();
        eprintln!("{}: {message}", self.bar.prefix());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// A key passphrase from `ZTEE_KEY_PASSPHRASE`, else typed at the controlling terminal without
/// echo; with `confirm`, asked twice and compared.
pub fn read_passphrase(prompt: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Passphrase::new(value));
    }
    let mut first = prompt_tty(prompt).map_err(|e| {
        anyhow::anyhow!("key: no passphrase: set {PASSPHRASE_ENV} or run on a terminal ({e})")
    })?;
    if confirm {
        let second = prompt_tty("Repeat the passphrase: ")
            .map_err(|e| anyhow::anyhow!("key: no passphrase: {e}"))?;
        if first.as_bytes() != second.as_bytes() {
            anyhow::bail!("key: the two passphrases differ");
        }
    }
    // Moves the buffer out, so no unwiped copy of the passphrase is left behind.
    Ok(Passphrase::new(std::mem::take(&mut *first)))
}

/// One line typed on stdin, which must be a terminal, without echo, after `prompt` on stderr.
/// The line keeps its newline: the caller decides whether it is part of the value.
pub fn read_stdin_unechoed(prompt: &str) -> io::Result<Zeroizing<String>> {
    eprint!("{prompt}");
    let stdin = io::stdin();
    let line = read_line_unechoed(stdin.as_fd(), &mut stdin.lock());
    // The typed newline was not echoed either.
    eprintln!();
    line
}

/// Prompts on `/dev/tty` rather than stdin or stderr, so a passphrase can be typed while stdin
/// and stdout carry data.
fn prompt_tty(prompt: &str) -> io::Result<Zeroizing<String>> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    tty.write_all(prompt.as_bytes())?;
    tty.flush()?;
    let mut reader = BufReader::new(tty.try_clone()?);
    let line = read_line_unechoed(tty.as_fd(), &mut reader);
    tty.write_all(b"\n")?;
    let mut line = line?;
    strip_line_end(&mut line)?;
    Ok(line)
}

/// Removes the newline a typed line ends with. A line without one was cut off by end of input,
/// which is not a passphrase.
fn strip_line_end(line: &mut String) -> io::Result<()> {
    if line.pop() != Some('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "unexpected end of file",
        ));
    }
    if line.ends_with('\r') {
        line.pop();
    }
    Ok(())
}

/// Reads one line from `reader`, which reads the terminal `fd`, with echo off on `fd` while it
/// is typed. Refuses when `fd` is not a terminal, rather than read a secret that may be shown.
fn read_line_unechoed(
    fd: BorrowedFd<'_>,
    reader: &mut dyn BufRead,
) -> io::Result<Zeroizing<String>> {
    let _echo_off = EchoOff::new(fd)?;
    let mut line = Zeroizing::new(String::new());
    reader.read_line(&mut line)?;
    Ok(line)
}

/// Turns terminal echo off for as long as it lives, and restores what was there before.
struct EchoOff<'fd> {
    fd: BorrowedFd<'fd>,
    saved: libc::termios,
}

impl<'fd> EchoOff<'fd> {
    fn new(fd: BorrowedFd<'fd>) -> io::Result<Self> {
        // SAFETY: an all-zero termios is a valid value of this plain C struct; tcgetattr fills
        // it from an open descriptor `fd` borrows, and tcsetattr only reads it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd.as_raw_fd(), &mut t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { fd, saved })
        }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `new` on the same, still borrowed descriptor.
        unsafe {
            libc::tcsetattr(self.fd.as_raw_fd(), libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn reader_for(file: &File) -> io::Result<BufReader<File>> {
        Ok(BufReader::new(file.try_clone()?))
    }

    fn lflag(fd: BorrowedFd<'_>) -> libc::tcflag_t {
        // SAFETY: as in `EchoOff::new`: a zeroed termios filled by tcgetattr on an open fd.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
            t.c_lflag
        }
    }

    #[test]
    fn a_line_typed_at_a_terminal_is_not_echoed_and_echo_comes_back() {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors into the two ints; the other arguments
        // may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
        let (mut master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        assert_ne!(lflag(slave.as_fd()) & libc::ECHO, 0, "a new pty echoes");

        let reader_slave = slave.try_clone().unwrap();
        let typing = std::thread::spawn(move || {
            let mut reader = reader_for(&reader_slave).unwrap();
            read_line_unechoed(reader_slave.as_fd(), &mut reader).map(|l| l.to_string())
        });
        // The line discipline echoes when input arrives, so type only once echo is off.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lflag(slave.as_fd()) & libc::ECHO != 0 {
            assert!(std::time::Instant::now() < deadline, "echo never went off");
            std::thread::sleep(Duration::from_millis(5));
        }
        master.write_all(b"hunter22\n").unwrap();
        let line = typing.join().unwrap().unwrap();
        assert_eq!(line, "hunter22\n");
        assert_ne!(
            lflag(slave.as_fd()) & libc::ECHO,
            0,
            "echo was not restored"
        );

        // Nothing typed came back on the screen side.
        // SAFETY: fcntl on an open descriptor owned by `master`.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let mut shown = [0u8; 64];
        let n = master.read(&mut shown).unwrap_or(0);
        let shown = String::from_utf8_lossy(&shown[..n]);
        assert!(!shown.contains("hunter"), "echoed: {shown:?}");
    }

    #[test]
    fn refuses_to_read_unechoed_from_a_non_terminal() {
        let file = tempfile::tempfile().unwrap();
        let mut reader = reader_for(&file).unwrap();
        assert!(read_line_unechoed(file.as_fd(), &mut reader).is_err());
    }

    #[test]
    fn a_typed_line_loses_its_line_end_and_a_cut_line_is_refused() {
        for (typed, value) in [("pass phrase\n", "pass phrase"), ("pw\r\n", "pw")] {
            let mut line = typed.to_string();
            strip_line_end(&mut line).unwrap();
            assert_eq!(line, value);
        }
        let mut cut = "half".to_string();
        let err = strip_line_end(&mut cut).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
