//! A real OpenID Provider (npm `oidc-provider`) on loopback, started per test.
//!
//! Its npm dependencies are installed from the committed package.json and package-lock.json into
//! `${ZTEE_CACHE_DIR:-$HOME/.cache/ztee}/oidc-provider-fixture` (with `npm ci`, once per lockfile).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");

static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How long a starting provider may take to print its READY line.
const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

/// Installs the provider once; `Err` when node or npm cannot run here.
pub fn install() -> Result<PathBuf, String> {
    let mut guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = guard.clone() {
        return Ok(dir);
    }
    let dir = super::npm::install(
        Path::new(FIXTURE),
        "oidc-provider-fixture",
        &["package.json", "package-lock.json", "provider.mjs"],
    )?;
    *guard = Some(dir.clone());
    Ok(dir)
}

pub struct Provider {
    pub issuer: String,
    child: Child,
}

impl Provider {
    /// Starts a provider signing with the RSA key in `key_file` (created when missing).
    pub fn start(key_file: &Path) -> Result<Provider, String> {
        Self::start_on(key_file, "0")
    }

    /// Like [`Provider::start`] on a given port (to restart "the same" issuer with a new key).
    pub fn start_on(key_file: &Path, port: &str) -> Result<Provider, String> {
        let dir = install()?;
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port)
            .env("KEY_FILE", key_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("node: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // A provider that never says READY (node stuck on a loaded machine) must not hang the
        // suite: wait a generous, bounded time for the line.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let line = match rx.recv_timeout(READY_DEADLINE) {
            Ok(read) => read.map_err(|e| e.to_string())?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "provider did not say READY within {} s",
                    READY_DEADLINE.as_secs()
                ));
            }
        };
        let issuer = line
            .trim()
            .strip_prefix("READY ")
            .ok_or_else(|| format!("provider did not start: {line:?}"))?
            .to_owned();
        Ok(Provider { issuer, child })
    }

    /// An access token for `client` (client credentials grant) for the audience `resource`.
    pub async fn token(&self, client: &str, resource: &str) -> String {
        let resp: serde_json::Value = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", &format!("{client}-secret")),
                ("resource", resource),
                ("scope", "api"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {resp}"))
            .to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
