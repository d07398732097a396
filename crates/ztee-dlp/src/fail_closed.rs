//! What happens to text that could not be masked: it is withheld, never released as it was.
//! Masking with the built-in operators needs no keys, so a failure is a detector bug; the rule
//! is the same everywhere text leaves (command output, downloads, model answers and streams).

use crate::error::DlpError;

/// What replaces text that could not be masked.
pub const WITHHELD: &str = "[withheld: masking failed]";

/// A masked stream that releases nothing more once masking failed: the first failure releases
/// [`WITHHELD`], every later part (failed or not) nothing.
#[derive(Debug, Default)]
pub struct FailClosed {
    failed: bool,
}

impl FailClosed {
    /// What may leave of one masked part of the stream. `what` names the stream in the log.
    pub fn release(&mut self, masked: Result<String, DlpError>, what: &str) -> String {
        match masked {
            Ok(text) if !self.failed => text,
            Ok(_) => String::new(),
            Err(e) if !self.failed => {
                tracing::error!(error = %e, stream = what, "masking failed; withholding the rest of the stream");
                self.failed = true;
                WITHHELD.to_owned()
            }
            Err(_) => String::new(),
        }
    }

    /// True once a part could not be masked.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure_nothing_more_leaves() {
        let mut stream = FailClosed::default();
        assert_eq!(stream.release(Ok("a".into()), "t"), "a");
        let failure = DlpError::ScoreThreshold(2.0);
        assert_eq!(stream.release(Err(failure), "t"), WITHHELD);
        assert_eq!(stream.release(Ok("b".into()), "t"), "");
        assert!(stream.failed());
    }
}
