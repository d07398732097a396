//! Secrets a CLI-held sandbox was given: written into the guest when it starts, added to every
//! command's environment, and redacted from everything that leaves through the control socket
//! (command output and files copied out), so `ztee sandbox exec` and `cp` never print a value.

use std::sync::Arc;

use ztee_dlp::{MaskStyle, Operator, Operators, Scanner, StreamScanner};
use ztee_vm::VmError;

pub struct LocalSecrets {
    /// Guest path and value of each secret file (`/run/secrets/NAME`, written mode 0400).
    pub files: Vec<(String, Vec<u8>)>,
    /// Environment variables every command gets; a command's own `env` entries win.
    pub env: Vec<(String, String)>,
    /// The secrets' names (`NAME` or `NAME=ENVVAR`), for the sandbox's record. Never values.
    pub names: Vec<String>,
    /// A scanner that finds every injected value (in each of its encodings).
    pub redactor: Arc<Scanner>,
}

fn operators() -> Operators {
    Operators::new(Operator::Mask(MaskStyle::Pci))
}

impl LocalSecrets {
    /// Redactors for one command's stdout and stderr.
    pub(crate) fn streams(&self) -> (StreamScanner, StreamScanner) {
        (
            StreamScanner::new(self.redactor.clone(), operators()),
            StreamScanner::new(self.redactor.clone(), operators()),
        )
    }

    /// A file on its way out: text with every value masked. A binary file that holds a value
    /// cannot be masked without corrupting it, so it is refused.
    pub(crate) fn redact_file(&self, data: Vec<u8>) -> Result<Vec<u8>, VmError> {
        let findings = |text: &str| !self.redactor.scan(text).is_empty();
        match String::from_utf8(data) {
            Ok(text) if !findings(&text) => Ok(text.into_bytes()),
            Ok(text) => {
                let mut stream = StreamScanner::new(self.redactor.clone(), operators());
                let mut out = stream.feed(&text).map_err(redaction_failed)?;
                out.push_str(&stream.finish().map_err(redaction_failed)?);
                Ok(out.into_bytes())
            }
            Err(binary) if findings(&String::from_utf8_lossy(binary.as_bytes())) => {
                Err(VmError::PermissionDenied(
                    "the file holds an injected secret and is binary, so it cannot be masked; it was not copied".into(),
                ))
            }
            Err(binary) => Ok(binary.into_bytes()),
        }
    }
}

pub(crate) fn redaction_failed(err: ztee_dlp::DlpError) -> VmError {
    VmError::InvalidRequest(format!(
        "redacting the output failed, so it is withheld: {err}"
    ))
}
