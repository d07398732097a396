//! Long-lived helper programs inside a sandbox that speak JSON lines: the filesystem helper and
//! the code-execution contexts. Each runs as the sandbox user under the image's own `python3` (or
//! `node`, for JavaScript contexts), started with its program text as an argument (nothing is written into the sandbox that its
//! user could swap), and is reached through the engine's process control.
//!
//! What a helper prints is untrusted, like anything from inside a sandbox: lines are bounded,
//! parsed into typed values by their callers, and masked before they leave.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::ActionError;
use crate::exec::{ExecSpec, OutputEvent, OutputStream, ProcessControl, SandboxHandle};

/// A helper's program: its text and the interpreter of the image that runs it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Program {
    Python(&'static str),
    Node(&'static str),
}

impl Program {
    /// The interpreter's command, as the image must have it.
    pub(crate) fn command(self) -> &'static str {
        match self {
            Self::Python(_) => "python3",
            Self::Node(_) => "node",
        }
    }

    fn argv(self) -> Vec<String> {
        match self {
            // -u: lines reach the host as they are printed.
            Self::Python(text) => vec!["python3".into(), "-u".into(), "-c".into(), text.into()],
            // Node's writes to a pipe are synchronous on Linux: nothing to unbuffer.
            Self::Node(text) => vec!["node".into(), "-e".into(), text.into(), "--".into()],
        }
    }
}

/// A helper process and the lines it prints.
pub(crate) struct Helper {
    control: Arc<dyn ProcessControl>,
    output: Box<dyn OutputStream>,
    buffer: Vec<u8>,
    max_line: usize,
    /// Bytes it wrote to stderr (only counted: they may hold anything the sandbox's user wrote).
    stderr_bytes: usize,
    exited: bool,
}

impl Helper {
    /// Starts `program` with `args` in the sandbox, with its stdin open.
    pub(crate) async fn start(
        sandbox: &dyn SandboxHandle,
        program: Program,
        args: &[&str],
        env: std::collections::BTreeMap<String, String>,
        cwd: Option<String>,
        lifetime: Duration,
        max_line: usize,
    ) -> Result<Self, ActionError> {
        let mut argv = program.argv();
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let output = sandbox
            .exec(ExecSpec {
                argv,
                env,
                cwd,
                stdin: None,
                interactive: true,
                pty: None,
                timeout: lifetime,
            })
            .await
            .map_err(crate::pipeline::exec_error)?;
        let control = output
            .process()
            .ok_or_else(|| {
                ActionError::unavailable("this sandbox engine cannot keep a helper program running")
            })?
            .control;
        Ok(Self {
            control,
            output,
            buffer: Vec::new(),
            max_line,
            stderr_bytes: 0,
            exited: false,
        })
    }

    /// Whether the helper has ended (it is started again on next use).
    pub(crate) fn exited(&self) -> bool {
        self.exited
    }

    /// Sends one request line.
    pub(crate) async fn send(&mut self, request: &serde_json::Value) -> Result<(), ActionError> {
        let mut line = request.to_string();
        line.push('\n');
        self.control
            .write_stdin(Bytes::from(line))
            .await
            .map_err(crate::pipeline::exec_error)
    }

    /// Its input and signals, apart from its output (to interrupt it while a read waits).
    pub(crate) fn control(&self) -> Arc<dyn ProcessControl> {
        self.control.clone()
    }

    /// Ends the helper.
    pub(crate) async fn kill(&mut self) {
        let _ = self.control.signal(9).await;
        self.exited = true;
    }

    /// The next line it prints, parsed as JSON; `Ok(None)` once it has ended.
    pub(crate) async fn next_line(&mut self) -> Result<Option<serde_json::Value>, ActionError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line[..end]).map(Some).map_err(|e| {
                    self.exited = true;
                    ActionError::internal(format!(
                        "a sandbox helper printed a line that is not JSON: {e}"
                    ))
                });
            }
            if self.buffer.len() > self.max_line {
                self.kill().await;
                return Err(ActionError::new(
                    crate::error::ErrorKind::TooLarge,
                    "output_too_large",
                    format!(
                        "a result is larger than the {} bytes the gateway relays in one piece",
                        self.max_line
                    ),
                ));
            }
            if self.exited {
                return Ok(None);
            }
            match self.output.next_event().await {
                Some(OutputEvent::Stdout(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(OutputEvent::Stderr(bytes)) => self.stderr_bytes += bytes.len(),
                Some(OutputEvent::Exit { exit_code, .. }) => {
                    self.exited = true;
                    tracing::warn!(
                        ?exit_code,
                        stderr_bytes = self.stderr_bytes,
                        "a sandbox helper program ended"
                    );
                }
                None => self.exited = true,
            }
        }
    }
}
