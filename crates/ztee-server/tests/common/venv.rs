//! Python packages for tests that drive ztee with real clients: a virtualenv per requirement
//! list, under the cache directory, created on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `bin/python` of a venv holding `requirements` (a file under this crate), keyed by its content.
pub fn python(requirements: &Path) -> PathBuf {
    use sha2::Digest;
    let text = std::fs::read(requirements).unwrap();
    let key = hex::encode(&sha2::Sha256::digest(&text)[..6]);
    let cache = std::env::var_os("ZTEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ztee"));
    std::fs::create_dir_all(&cache).unwrap();
    let venv = cache.join(format!("venv-py-{key}"));
    let python = venv.join("bin/python");
    // Tests of one binary run in parallel threads: one of them installs, the others wait.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if python.is_file() {
        return python;
    }
    let tmp = cache.join(format!("venv-py-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .unwrap()
        .success()
        && Command::new(tmp.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(requirements)
            .status()
            .unwrap()
            .success();
    assert!(
        ok,
        "installing {} failed (needs python3-venv and PyPI)",
        requirements.display()
    );
    // Complete venvs only under the final name: a failed install never looks ready. Only
    // `bin/python` is used afterwards, which works from the renamed directory.
    if std::fs::rename(&tmp, &venv).is_err() {
        // Another test process finished first; use its venv.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    python
}
