//! What the report looks at: one data directory and the configuration the gateway would load.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ztee_state::ServerConfig;

use crate::ComplianceError;

/// A ztee installation as found on disk.
pub struct Installation {
    pub data_dir: PathBuf,
    /// The configuration exactly as `ztee serve` would load it (defaults, file, environment).
    pub config: ServerConfig,
    pub config_file: Option<PathBuf>,
    /// An explicit policy bundle directory; otherwise `<data-dir>/policies`, else the built-in one.
    pub policy_dir: Option<PathBuf>,
}

impl Installation {
    pub fn load(
        data_dir: &Path,
        config_file: Option<&Path>,
        policy_dir: Option<&Path>,
    ) -> Result<Self, ComplianceError> {
        if !data_dir.is_dir() {
            return Err(ComplianceError::NoDataDir {
                path: data_dir.to_path_buf(),
            });
        }
        let config =
            ServerConfig::load(config_file).map_err(|e| ComplianceError::Config(e.to_string()))?;
        Ok(Installation {
            data_dir: data_dir.to_path_buf(),
            config,
            config_file: config_file.map(Path::to_path_buf),
            policy_dir: policy_dir.map(Path::to_path_buf),
        })
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    pub fn admission_policy(&self) -> PathBuf {
        self.data_dir.join("admission.yaml")
    }
}

/// The period the activity figures cover. Configuration, images and the chain are always
/// examined as they are now; retention looks at the whole trail.
#[derive(Debug, Clone)]
pub struct Window {
    /// `None`: since the trail began.
    pub since: Option<SystemTime>,
    pub until: SystemTime,
}

impl Window {
    pub fn all() -> Self {
        Window {
            since: None,
            until: SystemTime::now(),
        }
    }

    pub fn since(since: SystemTime) -> Self {
        Window {
            since: Some(since),
            until: SystemTime::now(),
        }
    }

    pub fn last_days(days: u64) -> Self {
        let until = SystemTime::now();
        Window {
            since: until.checked_sub(Duration::from_secs(days * 86_400)),
            until,
        }
    }

    pub fn contains(&self, time: SystemTime) -> bool {
        self.since.is_none_or(|since| time >= since) && time <= self.until
    }
}
