use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no .rego files found (a bundle is a directory of .rego files)")]
    EmptyBundle { dir: PathBuf },
    #[error("{path}: not valid JSON: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("policy bundle {bundle} does not compile: {reason}")]
    Compile { bundle: String, reason: String },
    #[error("{path}: not a valid policy input: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    Corpus {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the injection model {what} is invalid: {reason}")]
    Model { what: &'static str, reason: String },
}

impl PolicyError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
