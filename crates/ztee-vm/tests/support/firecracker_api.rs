//! A local stand-in for Firecracker's API socket, for contract tests on hosts where Firecracker
//! cannot run. It is not Firecracker: it boots nothing. It holds Firecracker's API rules as
//! written in its published schema and docs, **Firecracker v1.10**
//! (`src/firecracker/swagger/firecracker.yaml`, `docs/api_requests/`, `docs/snapshotting/`),
//! checks every request against them, answers the way Firecracker documents (`204` with no
//! body on success; `400` with `{"fault_message": "..."}` on a refused request), and records
//! every call in order.
//!
//! Rules, per endpoint (all bodies: JSON objects; unknown fields are refused, since Firecracker
//! deserializes with `deny_unknown_fields`; a wrong JSON type is refused):
//!
//! | call | body | allowed when |
//! |---|---|---|
//! | `PUT /machine-config` | `vcpu_count` int 1-32 (req.), `mem_size_mib` int >= 1 (req.), `smt` bool (then `vcpu_count` 1 or even), `track_dirty_pages` bool, `cpu_template` one of `C3 T2 T2S T2CL T2A V1N1 None`, `huge_pages` one of `None 2M` | before InstanceStart |
//! | `PUT /boot-source` | `kernel_image_path` string (req., file must exist), `boot_args` string, `initrd_path` string (file must exist) | before InstanceStart |
//! | `PUT /drives/{id}` | `drive_id` string (req., = `{id}`), `is_root_device` bool (req.), `path_on_host` string (file must exist), `is_read_only` bool, `partuuid` string, `cache_type` `Unsafe`/`Writeback`, `io_engine` `Sync`/`Async`, `rate_limiter` RateLimiter, `socket` string | before InstanceStart |
//! | `PUT /vsock` | `guest_cid` int >= 3 (req.), `uds_path` string (req.), `vsock_id` string | before InstanceStart |
//! | `PUT /entropy` | `rate_limiter` RateLimiter | before InstanceStart |
//! | `PUT /actions` | `action_type` one of `FlushMetrics InstanceStart SendCtrlAltDel` (req.) | InstanceStart: before start, with a boot source; SendCtrlAltDel: after start |
//! | `PATCH /vm` | `state` `Paused`/`Resumed` (req.) | after InstanceStart (or a snapshot load) |
//! | `PUT /snapshot/create` | `snapshot_path`, `mem_file_path` strings (req.), `snapshot_type` `Full`/`Diff` (Diff needs `track_dirty_pages`) | VM paused |
//! | `PUT /snapshot/load` | `snapshot_path` string (req., file must exist), exactly one of `mem_backend` {`backend_type` `File`/`Uffd`, `backend_path` string; both req.} or `mem_file_path` string, `enable_diff_snapshots` bool, `resume_vm` bool | before start and before any boot-specific resource was configured |
//!
//! RateLimiter: `bandwidth`, `ops` TokenBucket; TokenBucket: `size` int >= 0 (req.),
//! `refill_time` int >= 0 (req.), `one_time_burst` int >= 0. Any other method or path is a
//! `400` ("Invalid request method and/or path"), as Firecracker answers it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The two messages Firecracker gives for calls in the wrong phase.
pub const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";
pub const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";

/// One request as the stand-in received it, and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Paused,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Whether any boot-specific resource was configured (snapshot load is refused then).
    configured: bool,
    boot_source: bool,
    track_dirty_pages: bool,
    calls: Vec<Call>,
}

/// A stand-in Firecracker API socket. Paths in requests are resolved under `root`, as a jailed
/// Firecracker resolves them in its chroot.
pub struct StandIn {
    pub socket: PathBuf,
    pub root: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    pub fn start(socket: &Path, root: &Path) -> Self {
        let listener = UnixListener::bind(socket).unwrap();
        let state = Arc::new(Mutex::new(State {
            phase: Phase::NotStarted,
            configured: false,
            boot_source: false,
            track_dirty_pages: false,
            calls: Vec::new(),
        }));
        let root = root.to_path_buf();
        let task = {
            let state = state.clone();
            let root = root.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let state = state.clone();
                    let root = root.clone();
                    tokio::spawn(async move { serve(stream, state, root).await });
                }
            })
        };
        Self {
            socket: socket.to_path_buf(),
            root,
            state,
            task,
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `METHOD path` of every call so far.
    pub fn call_lines(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| format!("{} {} {}", c.method, c.path, c.status))
            .collect()
    }
}

async fn serve(mut stream: UnixStream, state: Arc<Mutex<State>>, root: PathBuf) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: headers, then Content-Length bytes.
        let header_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut close = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if name.trim().eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let body_start = header_end + 4;
        while buf.len() < body_start + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + length].to_vec();
        buf.drain(..body_start + length);
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let (status, fault) = {
            let mut state = state.lock().unwrap();
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let outcome = handle(&mut state, &root, &method, &path, &body);
            let status = match &outcome {
                Ok(()) => 204,
                Err(_) => 400,
            };
            state.calls.push(Call {
                method: method.clone(),
                path: path.clone(),
                body: parsed,
                status,
            });
            (status, outcome.err())
        };
        let response = match fault {
            None => "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
                .to_string(),
            Some(message) => {
                let body = json!({ "fault_message": message }).to_string();
                format!(
                    "HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

type Outcome = Result<(), String>;

fn handle(state: &mut State, root: &Path, method: &str, path: &str, raw: &[u8]) -> Outcome {
    let invalid = || {
        Err(format!(
            "Invalid request method and/or path: {method} {path}."
        ))
    };
    let drive_id = path.strip_prefix("/drives/").filter(|id| !id.is_empty());
    let known = matches!(
        (method, path),
        ("PUT", "/machine-config")
            | ("PUT", "/boot-source")
            | ("PUT", "/vsock")
            | ("PUT", "/entropy")
            | ("PUT", "/actions")
            | ("PATCH", "/vm")
            | ("PUT", "/snapshot/create")
            | ("PUT", "/snapshot/load")
    ) || (method == "PUT" && drive_id.is_some());
    if !known {
        return invalid();
    }
    if raw.is_empty() {
        return Err(format!("Empty {method} request."));
    }
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })?;
    let Value::Object(body) = body else {
        return Err("An error occurred when deserializing the json body of a request: expected a JSON object.".into());
    };
    let pre_boot = |state: &State| {
        if state.phase == Phase::NotStarted {
            Ok(())
        } else {
            Err(POST_BOOT.to_string())
        }
    };
    match (method, path) {
        ("PUT", "/machine-config") => {
            fields(
                &body,
                &[
                    "vcpu_count",
                    "mem_size_mib",
                    "smt",
                    "track_dirty_pages",
                    "cpu_template",
                    "huge_pages",
                ],
            )?;
            let vcpus = int(&body, "vcpu_count", true)?.unwrap_or(0);
            let memory = int(&body, "mem_size_mib", true)?.unwrap_or(0);
            let smt = boolean(&body, "smt")?.unwrap_or(false);
            let dirty = boolean(&body, "track_dirty_pages")?.unwrap_or(false);
            one_of(
                &body,
                "cpu_template",
                &["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"],
                false,
            )?;
            one_of(&body, "huge_pages", &["None", "2M"], false)?;
            pre_boot(state)?;
            if !(1..=32).contains(&vcpus) || (smt && vcpus > 1 && vcpus % 2 == 1) {
                return Err("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.".into());
            }
            if memory == 0 {
                return Err("The memory size (MiB) is invalid.".into());
            }
            state.track_dirty_pages = dirty;
            state.configured = true;
            Ok(())
        }
        ("PUT", "/boot-source") => {
            fields(&body, &["kernel_image_path", "boot_args", "initrd_path"])?;
            let kernel = string(&body, "kernel_image_path", true)?.unwrap_or_default();
            string(&body, "boot_args", false)?;
            let initrd = string(&body, "initrd_path", false)?;
            pre_boot(state)?;
            exists(root, &kernel, "Cannot open kernel image")?;
            if let Some(initrd) = initrd {
                exists(root, &initrd, "Cannot open initrd image")?;
            }
            state.boot_source = true;
            state.configured = true;
            Ok(())
        }
        ("PUT", _) if drive_id.is_some() => {
            fields(
                &body,
                &[
                    "drive_id",
                    "path_on_host",
                    "is_root_device",
                    "is_read_only",
                    "partuuid",
                    "cache_type",
                    "rate_limiter",
                    "io_engine",
                    "socket",
                ],
            )?;
            let id = string(&body, "drive_id", true)?.unwrap_or_default();
            boolean_required(&body, "is_root_device")?;
            boolean(&body, "is_read_only")?;
            string(&body, "partuuid", false)?;
            one_of(&body, "cache_type", &["Unsafe", "Writeback"], false)?;
            one_of(&body, "io_engine", &["Sync", "Async"], false)?;
            string(&body, "socket", false)?;
            let host_path = string(&body, "path_on_host", false)?;
            if let Some(limiter) = body.get("rate_limiter") {
                rate_limiter(limiter)?;
            }
            pre_boot(state)?;
            if Some(id.as_str()) != drive_id {
                return Err("The id from the path does not match the id from the body!".into());
            }
            match host_path {
                Some(p) => exists(root, &p, "Unable to open the block device backing file")?,
                None if body.get("socket").is_none() => {
                    return Err("missing field `path_on_host`".into())
                }
                None => {}
            }
            state.configured = true;
            Ok(())
        }
        ("PUT", "/vsock") => {
            fields(&body, &["guest_cid", "uds_path", "vsock_id"])?;
            let cid = int(&body, "guest_cid", true)?.unwrap_or(0);
            string(&body, "uds_path", true)?;
            string(&body, "vsock_id", false)?;
            pre_boot(state)?;
            if cid < 3 {
                return Err(format!(
                    "Invalid guest CID {cid}: the guest CID must be at least 3."
                ));
            }
            state.configured = true;
            Ok(())
        }
        ("PUT", "/entropy") => {
            fields(&body, &["rate_limiter"])?;
            if let Some(limiter) = body.get("rate_limiter") {
                rate_limiter(limiter)?;
            }
            pre_boot(state)?;
            state.configured = true;
            Ok(())
        }
        ("PUT", "/actions") => {
            fields(&body, &["action_type"])?;
            let action = one_of(
                &body,
                "action_type",
                &["FlushMetrics", "InstanceStart", "SendCtrlAltDel"],
                true,
            )?;
            match action.as_deref() {
                Some("InstanceStart") => {
                    pre_boot(state)?;
                    if !state.boot_source {
                        return Err("Cannot start microvm without kernel configuration.".into());
                    }
                    state.phase = Phase::Running;
                    Ok(())
                }
                Some("SendCtrlAltDel") => {
                    if state.phase == Phase::NotStarted {
                        return Err(PRE_BOOT.into());
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        ("PATCH", "/vm") => {
            fields(&body, &["state"])?;
            let wanted = one_of(&body, "state", &["Paused", "Resumed"], true)?;
            if state.phase == Phase::NotStarted {
                return Err(PRE_BOOT.into());
            }
            state.phase = if wanted.as_deref() == Some("Paused") {
                Phase::Paused
            } else {
                Phase::Running
            };
            Ok(())
        }
        ("PUT", "/snapshot/create") => {
            fields(&body, &["snapshot_type", "snapshot_path", "mem_file_path"])?;
            let snapshot = string(&body, "snapshot_path", true)?.unwrap_or_default();
            let memory = string(&body, "mem_file_path", true)?.unwrap_or_default();
            let kind = one_of(&body, "snapshot_type", &["Full", "Diff"], false)?;
            match state.phase {
                Phase::NotStarted => return Err(PRE_BOOT.into()),
                Phase::Running => {
                    return Err("Cannot create a snapshot: the microVM is not paused.".into())
                }
                Phase::Paused => {}
            }
            if kind.as_deref() == Some("Diff") && !state.track_dirty_pages {
                return Err("Diff snapshots are not enabled: track_dirty_pages is off.".into());
            }
            for (file, what) in [(&snapshot, "microVM state"), (&memory, "guest memory")] {
                let host = resolve(root, file);
                std::fs::write(&host, what.as_bytes())
                    .map_err(|e| format!("Cannot write the {what} file {file}: {e}"))?;
            }
            Ok(())
        }
        ("PUT", "/snapshot/load") => {
            fields(
                &body,
                &[
                    "snapshot_path",
                    "mem_file_path",
                    "mem_backend",
                    "enable_diff_snapshots",
                    "resume_vm",
                ],
            )?;
            let snapshot = string(&body, "snapshot_path", true)?.unwrap_or_default();
            boolean(&body, "enable_diff_snapshots")?;
            let resume = boolean(&body, "resume_vm")?.unwrap_or(false);
            let memory = match (body.get("mem_backend"), string(&body, "mem_file_path", false)?) {
                (Some(backend), None) => {
                    let Value::Object(backend) = backend else {
                        return Err("mem_backend: invalid type, expected a struct MemoryBackend".into());
                    };
                    fields(backend, &["backend_type", "backend_path"])?;
                    one_of(backend, "backend_type", &["File", "Uffd"], true)?;
                    string(backend, "backend_path", true)?.unwrap_or_default()
                }
                (None, Some(path)) => path,
                _ => return Err("Snapshot load request body must contain exactly one of `mem_backend` and `mem_file_path`.".into()),
            };
            if state.phase != Phase::NotStarted || state.configured {
                return Err("Loading a microVM snapshot not allowed after configuring boot-specific resources.".into());
            }
            exists(root, &snapshot, "Cannot open the snapshot file")?;
            exists(root, &memory, "Cannot open the memory file")?;
            state.phase = if resume {
                Phase::Running
            } else {
                Phase::Paused
            };
            Ok(())
        }
        _ => invalid(),
    }
}

fn resolve(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn exists(root: &Path, path: &str, what: &str) -> Outcome {
    if resolve(root, path).is_file() {
        Ok(())
    } else {
        Err(format!(
            "{what} {path}: No such file or directory (os error 2)"
        ))
    }
}

fn fields(body: &Map<String, Value>, known: &[&str]) -> Outcome {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(format!(
            "An error occurred when deserializing the json body of a request: unknown field `{unknown}`, expected one of {}.",
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        )),
        None => Ok(()),
    }
}

fn type_error(key: &str, expected: &str) -> String {
    format!("An error occurred when deserializing the json body of a request: invalid type for `{key}`, expected {expected}.")
}

fn missing(key: &str) -> String {
    format!(
        "An error occurred when deserializing the json body of a request: missing field `{key}`."
    )
}

fn int(body: &Map<String, Value>, key: &str, required: bool) -> Result<Option<u64>, String> {
    match body.get(key) {
        None if required => Err(missing(key)),
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| type_error(key, "an unsigned integer")),
    }
}

fn string(body: &Map<String, Value>, key: &str, required: bool) -> Result<Option<String>, String> {
    match body.get(key) {
        None if required => Err(missing(key)),
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(type_error(key, "a string")),
    }
}

fn boolean(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(key, "a boolean")),
    }
}

fn boolean_required(body: &Map<String, Value>, key: &str) -> Result<bool, String> {
    boolean(body, key)?.ok_or_else(|| missing(key))
}

fn one_of(
    body: &Map<String, Value>,
    key: &str,
    variants: &[&str],
    required: bool,
) -> Result<Option<String>, String> {
    let Some(value) = string(body, key, required)? else {
        return Ok(None);
    };
    if variants.contains(&value.as_str()) {
        Ok(Some(value))
    } else {
        Err(format!(
            "An error occurred when deserializing the json body of a request: unknown variant `{value}` for `{key}`, expected one of {}.",
            variants.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ))
    }
}

fn rate_limiter(value: &Value) -> Outcome {
    let Value::Object(limiter) = value else {
        return Err(type_error("rate_limiter", "a struct RateLimiter"));
    };
    fields(limiter, &["bandwidth", "ops"])?;
    for key in ["bandwidth", "ops"] {
        if let Some(bucket) = limiter.get(key) {
            let Value::Object(bucket) = bucket else {
                return Err(type_error(key, "a struct TokenBucket"));
            };
            fields(bucket, &["size", "one_time_burst", "refill_time"])?;
            int(bucket, "size", true)?;
            int(bucket, "refill_time", true)?;
            int(bucket, "one_time_burst", false)?;
        }
    }
    Ok(())
}
