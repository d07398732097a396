use std::path::PathBuf;

/// Every failure the supply-chain library reports. Messages say what was wrong and where; they
/// never carry key material or passphrases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    /// A layer entry that unpacking refuses because of where or what it is: a path through a
    /// symbolic link or with `..`, a device node, a whiteout naming no file. `path` is the
    /// entry's name with control characters escaped.
    #[error("layer {layer}: refused entry \"{path}\": {reason}")]
    UnsafeLayerEntry {
        layer: String,
        path: String,
        reason: String,
    },
    /// A layer that would unpack to more bytes or entries than the limits allow (a tar bomb).
    #[error("layer {layer}: refused entry \"{path}\": {reason}")]
    LayerLimit {
        layer: String,
        path: String,
        reason: String,
    },
    #[error("image {0:?} is not in the local store (see `ztee image ls`)")]
    NotFound(String),
    #[error("blob {expected} failed its integrity check: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("key: {0}")]
    Key(String),
    #[error("verification failed: {0}")]
    Verification(String),
    #[error("policy {path}: {reason}")]
    Policy { path: String, reason: String },
    #[error("vulnerability database: {0}")]
    VulnDb(String),
    #[error("build: {0}")]
    Build(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsynced, then renamed,
/// so a reader never sees half a file and a crash leaves the old content.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("creating temp file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("writing", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into place", path, e.error))?;
    Ok(())
}
