//! A policy bundle: the `.rego` files of a directory (recursively) plus an optional `data.json`
//! merged into `data`. Files ending in `_test.rego` hold tests and are loaded only by the test
//! runner.

use std::fs;
use std::path::{Path, PathBuf};

use crate::PolicyError;

/// The bundle shipped with ztee (the repository's `policies/` directory), used when the operator
/// has not installed one.
const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        "ztee/main.rego",
        include_str!("../../../policies/ztee/main.rego"),
    ),
    (
        "ztee/main_test.rego",
        include_str!("../../../policies/ztee/main_test.rego"),
    ),
];
const BUILTIN_DATA: &str = include_str!("../../../policies/data.json");

/// One source file of a bundle.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Path relative to the bundle root, as shown in errors and test output.
    pub name: String,
    pub text: String,
}

impl PolicyFile {
    pub fn is_test(&self) -> bool {
        self.name.ends_with("_test.rego")
    }
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    Dir(PathBuf),
    Builtin,
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub source: BundleSource,
    pub files: Vec<PolicyFile>,
    /// The bundle's `data.json`, if any.
    pub data: Option<serde_json::Value>,
}

impl Bundle {
    /// The default bundle compiled into ztee.
    pub fn builtin() -> Result<Self, PolicyError> {
        let data = serde_json::from_str(BUILTIN_DATA).map_err(|e| PolicyError::Data {
            path: PathBuf::from("<builtin>/data.json"),
            reason: e.to_string(),
        })?;
        Ok(Bundle {
            source: BundleSource::Builtin,
            files: BUILTIN_FILES
                .iter()
                .map(|(name, text)| PolicyFile {
                    name: (*name).to_string(),
                    text: (*text).to_string(),
                })
                .collect(),
            data: Some(data),
        })
    }

    /// Loads every `.rego` file under `dir` (sorted, so errors and test order are stable) and
    /// `dir/data.json` if present.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let mut paths = Vec::new();
        collect_rego(dir, &mut paths)?;
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::EmptyBundle {
                dir: dir.to_path_buf(),
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text = fs::read_to_string(&path).map_err(|e| PolicyError::io(&path, e))?;
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            files.push(PolicyFile { name, text });
        }
        let data_path = dir.join("data.json");
        let data = match fs::read_to_string(&data_path) {
            Ok(text) => Some(serde_json::from_str(&text).map_err(|e| PolicyError::Data {
                path: data_path.clone(),
                reason: e.to_string(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(PolicyError::io(&data_path, e)),
        };
        Ok(Bundle {
            source: BundleSource::Dir(dir.to_path_buf()),
            files,
            data,
        })
    }

    /// The bundle the gateway and the CLI use: `explicit` if given, else `<data_dir>/policies`
    /// if it exists, else the built-in default bundle.
    pub fn resolve(explicit: Option<&Path>, data_dir: &Path) -> Result<Self, PolicyError> {
        if let Some(dir) = explicit {
            return Self::from_dir(dir);
        }
        let installed = data_dir.join("policies");
        if installed.is_dir() {
            return Self::from_dir(&installed);
        }
        Self::builtin()
    }

    /// SHA-256 (hex) over the bundle's file names, sources and data, in order: what an operator
    /// compares with the approved bundle, and what the gateway records when it loads one.
    pub fn sha256(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        for file in &self.files {
            hasher.update((file.name.len() as u64).to_be_bytes());
            hasher.update(file.name.as_bytes());
            hasher.update((file.text.len() as u64).to_be_bytes());
            hasher.update(file.text.as_bytes());
        }
        if let Some(data) = &self.data {
            hasher.update(data.to_string().as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    pub fn describe(&self) -> String {
        match &self.source {
            BundleSource::Dir(dir) => dir.display().to_string(),
            BundleSource::Builtin => "built-in default bundle".to_string(),
        }
    }
}

fn collect_rego(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = fs::read_dir(dir).map_err(|e| PolicyError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError::io(dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| PolicyError::io(&path, e))?;
        if file_type.is_dir() {
            collect_rego(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "rego") {
            out.push(path);
        }
    }
    Ok(())
}
