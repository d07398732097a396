//! Commands in a sandbox: what to run, and the stream of what happens.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use ztee_wire::message::FailureKind;
use ztee_wire::{ExitKind, GuestMessage, HostMessage, RequestId, MAX_DATA_CHUNK};

use crate::channel::Channel;
use crate::error::sanitize_guest_text;
use crate::VmError;

/// Default cap on a command's combined stdout and stderr.
pub const DEFAULT_MAX_OUTPUT: u64 = 64 * 1024 * 1024;

/// How long past its time limit the host waits for a command's exit before it gives up on the
/// guest and kills the VM. The agent enforces the limit itself and reports `TimedOut`; the grace
/// covers killing the process group and reporting under a loaded host. The host does not rely
/// on the guest for the limit: a guest that never reports an exit loses its VM.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);

/// A command to run as the sandbox user.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox; the user's home when `None`.
    pub cwd: Option<String>,
    /// Wall-clock limit, enforced inside the guest, and by the host [`EXIT_GRACE`] later.
    /// `None` runs until the command ends: the caller bounds it (the gateway always sets one).
    pub timeout: Option<Duration>,
    pub max_output_bytes: u64,
    /// Keep stdin open for [`Execution::write_stdin`]; otherwise the command reads EOF.
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (its output arrives as stdout; stdin stays open).
    pub pty: Option<ztee_wire::PtySize>,
}

impl ExecSpec {
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            env: Vec::new(),
            cwd: None,
            timeout: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT,
            stdin: false,
            pty: None,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    TimedOut,
    OutputLimit,
}

impl From<ExitKind> for ExitStatus {
    fn from(kind: ExitKind) -> Self {
        match kind {
            ExitKind::Code(code) => Self::Code(code),
            ExitKind::Signal(signal) => Self::Signal(signal),
            ExitKind::TimedOut => Self::TimedOut,
            ExitKind::OutputLimit => Self::OutputLimit,
        }
    }
}

impl From<ExitStatus> for ExitKind {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code(code) => Self::Code(code),
            ExitStatus::Signal(signal) => Self::Signal(signal),
            ExitStatus::TimedOut => Self::TimedOut,
            ExitStatus::OutputLimit => Self::OutputLimit,
        }
    }
}

impl ExitStatus {
    /// The exit code a shell would report: the code, 128+signal, 124 for a timeout (as
    /// timeout(1) does) and 125 for an output flood.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
            Self::TimedOut => 124,
            Self::OutputLimit => 125,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
}

/// A running command. Events arrive in the order the guest produced them.
pub struct Execution {
    id: RequestId,
    pid: u32,
    events: mpsc::Receiver<GuestMessage>,
    channel: Arc<Channel>,
    finished: bool,
    /// When the host stops waiting for the exit: the limit plus [`EXIT_GRACE`].
    deadline: Option<tokio::time::Instant>,
}

/// Everything a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Execution {
    pub(crate) async fn start(channel: Arc<Channel>, spec: ExecSpec) -> Result<Self, VmError> {
        if spec.argv.is_empty() {
            return Err(VmError::InvalidRequest("empty command".into()));
        }
        let (id, mut events) = channel.open_request()?;
        let deadline = spec
            .timeout
            .map(|limit| tokio::time::Instant::now() + limit.saturating_add(EXIT_GRACE));
        let request = ztee_wire::message::ExecRequest {
            id,
            argv: spec.argv.clone(),
            env: spec.env,
            cwd: spec.cwd,
            timeout_ms: spec
                .timeout
                .map(|t| t.as_millis().min(u64::MAX as u128) as u64),
            max_output_bytes: spec.max_output_bytes,
            stdin: spec.stdin,
            pty: spec.pty,
        };
        let started = async {
            channel.send(&HostMessage::Exec(request)).await?;
            match channel.reply(&mut events, "start a command").await? {
                GuestMessage::Started { pid, .. } => Ok(pid),
                GuestMessage::Failed { kind, message, .. } => {
                    Err(failure(kind, &message, &spec.argv[0]))
                }
                other => Err(VmError::Guest(format!(
                    "unexpected {} before the command started",
                    other.name()
                ))),
            }
        }
        .await;
        match started {
            Ok(pid) => Ok(Self {
                id,
                pid,
                events,
                channel,
                finished: false,
                deadline,
            }),
            Err(err) => {
                channel.close_request(id);
                Err(err)
            }
        }
    }

    /// The command's pid inside the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event, or `None` after [`ExecEvent::Exit`] has been returned.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, VmError> {
        if self.finished {
            return Ok(None);
        }
        let next = match self.deadline {
            Some(deadline) => {
                self.channel
                    .next_before(
                        &mut self.events,
                        deadline,
                        "end a command within its time limit",
                    )
                    .await
            }
            None => self.events.recv().await.ok_or(VmError::ChannelClosed),
        };
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                self.finished = true;
                return Err(err);
            }
        };
        match message {
            GuestMessage::Stdout { data, .. } => Ok(Some(ExecEvent::Stdout(data))),
            GuestMessage::Stderr { data, .. } => Ok(Some(ExecEvent::Stderr(data))),
            GuestMessage::Exited { status, .. } => {
                self.finished = true;
                self.channel.close_request(self.id);
                Ok(Some(ExecEvent::Exit(status.into())))
            }
            GuestMessage::Failed { message, .. } => {
                self.finished = true;
                Err(VmError::Guest(sanitize_guest_text(&message)))
            }
            other => Err(VmError::Guest(format!(
                "unexpected {} during a command",
                other.name()
            ))),
        }
    }

    /// Runs to the end, collecting all output.
    pub async fn output(mut self) -> Result<Output, VmError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Stdout(data)) => stdout.extend_from_slice(&data),
                Some(ExecEvent::Stderr(data)) => stderr.extend_from_slice(&data),
                Some(ExecEvent::Exit(status)) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                    })
                }
                None => return Err(VmError::ChannelClosed),
            }
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), VmError> {
        self.control().write_stdin(data).await
    }

    pub async fn close_stdin(&self) -> Result<(), VmError> {
        self.control().close_stdin().await
    }

    /// Sends `signal` to the command's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), VmError> {
        self.control().signal(signal).await
    }

    /// A handle that writes to the command's stdin and signals it while another task reads its
    /// events. Once the command has ended the guest ignores what the handle sends.
    pub fn control(&self) -> ExecControl {
        ExecControl {
            id: self.id,
            channel: self.channel.clone(),
        }
    }
}

/// Input and signals for one running command, apart from its event stream (see
/// [`Execution::control`]).
#[derive(Clone)]
pub struct ExecControl {
    id: RequestId,
    channel: Arc<Channel>,
}

impl ExecControl {
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), VmError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.channel
                .send(&HostMessage::Stdin {
                    id: self.id,
                    data: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), VmError> {
        self.channel
            .send(&HostMessage::CloseStdin { id: self.id })
            .await
    }

    /// Sends `signal` to the command's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), VmError> {
        self.channel
            .send(&HostMessage::Signal {
                id: self.id,
                signal,
            })
            .await
    }

    /// Resizes the command's pseudo-terminal (ignored for a command without one).
    pub async fn resize(&self, size: ztee_wire::PtySize) -> Result<(), VmError> {
        self.channel
            .send(&HostMessage::Resize { id: self.id, size })
            .await
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.channel.close_request(self.id);
    }
}

/// The error for a guest's `Failed` reply about `subject` (the command or path the request named).
/// Public so that a relay of the agent protocol (the command line's sandbox supervisor forwards
/// the engine's replies over its control socket) turns them back into the same errors, with the
/// same texts, as the engine does; the text is sanitized as untrusted guest text.
pub fn failure(kind: FailureKind, message: &str, subject: &str) -> VmError {
    let message = sanitize_guest_text(message);
    match kind {
        FailureKind::NotFound if message.starts_with("command not found") => {
            VmError::CommandNotFound(sanitize_guest_text(subject))
        }
        FailureKind::NotFound => VmError::FileNotFound(message),
        FailureKind::PermissionDenied => VmError::PermissionDenied(message),
        FailureKind::InvalidRequest => VmError::InvalidRequest(message),
        FailureKind::Io => VmError::Guest(message),
    }
}

/// A running command, wherever it runs: in a sandbox this process owns ([`Execution`]) or in
/// one another process holds and relays (the command line's sandbox supervisor).
#[allow(async_fn_in_trait)] // used with concrete types only; no Send bound is needed
pub trait CommandStream {
    /// The next event, or `None` after [`ExecEvent::Exit`].
    async fn next_event(&mut self) -> Result<Option<ExecEvent>, VmError>;
    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), VmError>;
    async fn close_stdin(&mut self) -> Result<(), VmError>;
}

impl CommandStream for Execution {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>, VmError> {
        Execution::next_event(self).await
    }
    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), VmError> {
        Execution::write_stdin(self, data).await
    }
    async fn close_stdin(&mut self) -> Result<(), VmError> {
        Execution::close_stdin(self).await
    }
}

#[cfg(test)]
mod tests {
    //! The host's own bound on a command: a guest that starts a command and then never reports
    //! its exit loses the channel (and, through the sandbox's watchdog, its VM).

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::fake_guest;

    #[tokio::test(start_paused = true)]
    async fn a_command_whose_exit_never_comes_fails_at_its_limit_plus_grace() {
        let (channel, mut guest, _dir) = fake_guest::session().await;
        let held = tokio::spawn(async move {
            let HostMessage::Exec(request) = guest.next().await else {
                panic!("expected Exec")
            };
            guest
                .send(&GuestMessage::Started {
                    id: request.id,
                    pid: 42,
                })
                .await;
            // Silent from here on, with the connection open: no output, no exit.
            guest
        });
        let mut spec = ExecSpec::new(vec!["sleep".into(), "1000".into()]);
        spec.timeout = Some(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let mut execution = Execution::start(channel.clone(), spec).await.unwrap();
        let _guest = held.await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(600), execution.next_event())
            .await
            .expect("the host must not wait on the guest past the command's limit")
            .unwrap_err();
        assert!(matches!(err, VmError::GuestUnresponsive { .. }), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) + EXIT_GRACE && waited < Duration::from_secs(60),
            "{waited:?}"
        );
        assert!(channel.is_closed(), "the guest is abandoned");
        assert!(matches!(execution.next_event().await, Ok(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_answers_a_request_fails_it_within_the_reply_timeout() {
        let (channel, _guest, _dir) = fake_guest::session().await;
        let (id, mut replies) = channel.open_request().unwrap();
        channel.send(&HostMessage::Ping { id }).await.unwrap();
        let err = tokio::time::timeout(
            crate::channel::REPLY_TIMEOUT * 4,
            channel.reply(&mut replies, "answer a ping"),
        )
        .await
        .expect("bounded by the reply timeout")
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("did not answer a ping within 30s; its VM was stopped"),
            "{err}"
        );
        assert!(channel.is_closed());
        assert!(matches!(
            channel.open_request(),
            Err(VmError::ChannelClosed)
        ));
        // Whoever watches the channel (the sandbox's watchdog) is woken.
        tokio::time::timeout(Duration::from_secs(1), channel.closed())
            .await
            .expect("closed() resolves once the guest is abandoned");
    }
}
