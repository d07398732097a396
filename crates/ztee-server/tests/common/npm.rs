//! npm packages for tests that drive ztee with real JavaScript programs: a fixture directory's
//! committed package.json and package-lock.json installed with `npm ci` into a directory of the
//! cache, once per lockfile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache/ztee")
}

/// Copies `files` (package.json and package-lock.json among them) from `fixture` into the cache
/// directory `name`, runs `npm ci` there unless that lockfile is installed already, and returns
/// the directory. `Err` when node or npm cannot run here.
pub fn install(fixture: &Path, name: &str, files: &[&str]) -> Result<PathBuf, String> {
    // Tests of one binary run in parallel threads: one installs, the others wait.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for file in files {
        std::fs::copy(fixture.join(file), dir.join(file))
            .map_err(|e| format!("copying {file}: {e}"))?;
    }
    let lock = std::fs::read(dir.join("package-lock.json")).map_err(|e| e.to_string())?;
    let stamp = dir.join("node_modules/.ztee-lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm ci failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(&stamp, &lock).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}
