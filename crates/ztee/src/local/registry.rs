//! On-disk records of CLI-held sandboxes: `<data dir>/sandboxes/<id>/{record.json,control.sock}`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ztee_vm::runtime::process_start_time;
use ztee_vm::{is_sandbox_id, JailInfo, SandboxInfo, VmError};

use super::io_error;

/// What `ztee sandbox ls/inspect` show about one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalRecord {
    pub id: String,
    pub supervisor_pid: u32,
    pub supervisor_start: u64,
    /// Seconds since the Unix epoch after which the sandbox is destroyed.
    pub expires_at: u64,
    pub vm: RecordedInfo,
    /// Destinations granted through the egress proxy; empty: no network.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Secrets injected, by name (`NAME` or `NAME=ENVVAR`); never values.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// A stored copy of [`SandboxInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedInfo {
    pub backend: String,
    pub accelerator: String,
    pub vmm_pid: u32,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub scratch_mib: u32,
    pub guest_kernel: String,
    pub agent_version: String,
    pub created_at: u64,
    pub start: String,
    pub ready_ms: u64,
    pub image: String,
    /// The VMM's jail; absent for unjailed VMs (and records written before jails existed).
    #[serde(default)]
    pub jail: Option<JailInfo>,
}

impl From<&SandboxInfo> for RecordedInfo {
    fn from(info: &SandboxInfo) -> Self {
        Self {
            backend: info.backend.to_string(),
            accelerator: info.accelerator.to_string(),
            vmm_pid: info.vmm_pid,
            memory_mib: info.memory_mib,
            vcpus: info.vcpus,
            scratch_mib: info.scratch_mib,
            guest_kernel: info.guest_kernel.clone(),
            agent_version: info.agent_version.clone(),
            created_at: info.created_at,
            start: info.start.to_string(),
            ready_ms: info.ready_ms,
            image: info.image.clone(),
            jail: info.jail.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("sandboxes"),
        }
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn control_socket(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("control.sock")
    }

    pub(crate) fn create_dir(&self, id: &str) -> Result<PathBuf, VmError> {
        let dir = self.sandbox_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error("create sandbox dir", &dir, e))?;
        Ok(dir)
    }

    pub(crate) fn write(&self, record: &LocalRecord) -> Result<(), VmError> {
        let dir = self.sandbox_dir(&record.id);
        let temp = dir.join("record.json.tmp");
        let path = dir.join("record.json");
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| VmError::InvalidSpec(format!("cannot encode sandbox record: {e}")))?;
        fs::write(&temp, json).map_err(|e| io_error("write sandbox record", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| io_error("write sandbox record", &path, e))
    }

    pub(crate) fn remove(&self, id: &str) {
        let _ = fs::remove_dir_all(self.sandbox_dir(id));
    }

    /// The live sandbox `id`, or a "no such sandbox" error.
    pub fn get(&self, id: &str) -> Result<LocalRecord, VmError> {
        let missing = || VmError::InvalidRequest(format!("no such sandbox: {id}"));
        if !is_sandbox_id(id) {
            return Err(missing());
        }
        let record = self.read(id).ok_or_else(missing)?;
        if !is_live(&record) {
            self.remove(id);
            return Err(missing());
        }
        Ok(record)
    }

    /// Every live sandbox, oldest first; records of dead supervisors are removed on the way.
    pub fn list(&self) -> Vec<LocalRecord> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_sandbox_id(&name) {
                continue;
            }
            match self.read(&name) {
                Some(record) if is_live(&record) => records.push(record),
                Some(_) => self.remove(&name),
                // A record being written right now, or a supervisor that died while booting.
                None if older_than(&entry.path(), std::time::Duration::from_secs(300)) => {
                    self.remove(&name)
                }
                None => {}
            }
        }
        records.sort_by_key(|r| r.vm.created_at);
        records
    }

    fn read(&self, id: &str) -> Option<LocalRecord> {
        let bytes = fs::read(self.sandbox_dir(id).join("record.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Whether the record's supervisor still runs: its pid with the start time it recorded, so a
/// recycled pid does not keep a dead sandbox listed.
fn is_live(record: &LocalRecord) -> bool {
    record.supervisor_pid != 0
        && process_start_time(record.supervisor_pid) == Some(record.supervisor_start)
}

/// Whether `path` was last modified more than `age` ago.
fn older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}
