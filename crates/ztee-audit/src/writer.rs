//! The writer: one thread owns the files; appenders hand it events through a channel.
//!
//! Durability: an append is acknowledged only after the record's bytes are written and
//! `fdatasync`ed, so an acknowledged event survives a SIGKILL of the process and a power loss.
//! Group commit: the writer takes every event queued while the previous fsync ran, writes them as
//! one batch and fsyncs once, so concurrent appenders wait at most for the fsync in progress plus
//! their own batch's, and throughput grows with concurrency instead of being one fsync per event.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use crate::event::rfc3339;
use crate::key::write_new_file;
use crate::record::{self, checkpoint_message, Checkpoint, Payload, GENESIS_HASH};
use crate::segment::{list_segments, segment_path, split_lines, HEAD_FILE, LOCK_FILE};
use crate::{AuditError, AuditEvent, NodeKey};

/// Where the log lives and how it rotates and checkpoints.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory of the segment files, normally `<data-dir>/audit`.
    pub dir: PathBuf,
    /// Start a new segment once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Write a signed checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or after this long, whichever comes first (only if events arrived since the last one).
    pub checkpoint_interval: Duration,
    /// Upper bound on events written per fsync.
    pub max_batch: usize,
    /// A file outside the data directory to which every signed checkpoint is also appended (the
    /// "witness"). `verify_with` compares the log against it, so a data directory rolled back to
    /// an older state is detected. `None` writes no witness.
    pub witness: Option<PathBuf>,
}

impl AuditConfig {
    /// Defaults: `<data_dir>/audit`, 64 MiB segments, a checkpoint every 1000 events or 60 s,
    /// and the witness file named by the environment variable [`WITNESS_ENV`] if it is set (so
    /// every process writing this node's log witnesses it, whatever starts it).
    pub fn new(data_dir: &Path) -> Self {
        AuditConfig {
            dir: data_dir.join("audit"),
            max_file_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            max_batch: 4096,
            witness: std::env::var_os(WITNESS_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// The environment variable [`AuditConfig::new`] takes the witness file from.
pub const WITNESS_ENV: &str = "ZTEE_AUDIT_WITNESS";

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: [u8; 32],
}

type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

enum Job {
    Append(Box<AuditEvent>, Reply),
    Checkpoint(Reply),
}

/// The shared, append-only audit log. `Send + Sync`: put it in an `Arc` and append from any task.
/// Dropping it writes a final checkpoint and stops the writer thread.
pub struct AuditLog {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log and starts its writer thread. Takes an exclusive lock on the
    /// directory: a second writer, in this or another process, gets [`AuditError::Locked`].
    pub fn open(config: AuditConfig, key: NodeKey) -> Result<Self, AuditError> {
        let writer = Writer::open(config.clone(), key)?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ztee-audit-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(|e| AuditError::io(&config.dir, e))?;
        Ok(AuditLog {
            jobs: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            dir: config.dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn submit(&self, job: Job) -> Result<(), AuditError> {
        let guard = self.jobs.lock().map_err(|_| AuditError::Closed)?;
        let sender = guard.as_ref().ok_or(AuditError::Closed)?;
        sender.send(job).map_err(|_| AuditError::Closed)
    }

    /// Appends an event; returns once it is on disk and fsynced.
    pub async fn append(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Append(Box::new(event), reply))?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// [`AuditLog::append`] for threads outside an async runtime. Do not call it on a runtime
    /// thread: it blocks until the fsync completes.
    pub fn append_blocking(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Append(Box::new(event), reply))?;
        done.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Writes a signed checkpoint now (also done periodically and on close).
    pub async fn checkpoint(&self) -> Result<Receipt, AuditError> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Checkpoint(reply))?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    pub fn checkpoint_blocking(&self) -> Result<Receipt, AuditError> {
        let (reply, done) = oneshot::channel();
        self.submit(Job::Checkpoint(reply))?;
        done.blocking_recv().map_err(|_| AuditError::Closed)?
    }

    /// Stops accepting events, writes a final checkpoint and waits for the writer thread.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            if thread.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    config: AuditConfig,
    key: NodeKey,
    key_id: String,
    file: File,
    segment: u32,
    size: u64,
    next_seq: u64,
    head: [u8; 32],
    events_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Set after a failed write: the on-disk state is unknown, so nothing more is accepted.
    failed: Option<String>,
    // Held for the writer's lifetime; closing it releases the flock.
    _lock: File,
}

impl Writer {
    fn open(config: AuditConfig, key: NodeKey) -> Result<Self, AuditError> {
        let dir = &config.dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuditError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        if let Some(witness) = &config.witness {
            check_witness_location(dir, witness)?;
        }

        let segments = list_segments(dir)?;
        let mut next_seq = 1;
        let mut head = GENESIS_HASH;
        // Find the last record, walking back over empty segments (a crash right after rotation).
        for (_, path) in segments.iter().rev() {
            if let Some((seq, hash)) = last_record(path)? {
                next_seq = seq + 1;
                head = hash;
                break;
            }
        }
        let (segment, path) = match segments.last() {
            Some((number, path)) => (*number, path.clone()),
            None => (1, segment_path(dir, 1)),
        };
        let file = open_segment(&path)?;
        let size = file.metadata().map_err(|e| AuditError::io(&path, e))?.len();
        let key_id = key.public().key_id();
        tracing::info!(dir = %dir.display(), next_seq, key_id = %key_id, "audit log opened");
        Ok(Writer {
            config,
            key,
            key_id,
            file,
            segment,
            size,
            next_seq,
            head,
            events_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            failed: None,
            _lock: lock,
        })
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            let wait = self
                .config
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint.elapsed());
            let first = match jobs.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if self.events_since_checkpoint > 0 {
                        self.checkpoint_logged();
                    } else {
                        self.last_checkpoint = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
            if self.events_since_checkpoint >= self.config.checkpoint_every
                || (self.events_since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
            {
                self.checkpoint_logged();
            }
            if self.size >= self.config.max_file_bytes {
                if let Err(e) = self.rotate() {
                    self.fail(e.to_string());
                }
            }
        }
        if self.events_since_checkpoint > 0 {
            self.checkpoint_logged();
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(%reason, "audit log write failed; refusing further events");
        self.failed = Some(reason);
    }

    fn write_batch(&mut self, batch: Vec<Job>) {
        let mut buffer = Vec::with_capacity(batch.len() * 512);
        let mut replies: Vec<(Reply, Receipt)> = Vec::with_capacity(batch.len());
        let mut checkpoint_requests = Vec::new();
        let (mut seq, mut head) = (self.next_seq, self.head);
        for job in batch {
            match job {
                Job::Append(event, reply) => {
                    if let Some(reason) = &self.failed {
                        let _ = reply.send(Err(AuditError::WriteFailed(reason.clone())));
                        continue;
                    }
                    match record::encode(seq, &head, &Payload::Event(event)) {
                        Ok((line, hash)) => {
                            buffer.extend_from_slice(&line);
                            replies.push((reply, Receipt { seq, hash }));
                            seq += 1;
                            head = hash;
                        }
                        Err(e) => {
                            let _ = reply
                                .send(Err(AuditError::WriteFailed(format!("encoding event: {e}"))));
                        }
                    }
                }
                Job::Checkpoint(reply) => checkpoint_requests.push(reply),
            }
        }
        if !buffer.is_empty() {
            let path = segment_path(&self.config.dir, self.segment);
            let written = self
                .file
                .write_all(&buffer)
                .and_then(|()| self.file.sync_data());
            match written {
                Ok(()) => {
                    self.size += buffer.len() as u64;
                    self.events_since_checkpoint += replies.len() as u64;
                    self.next_seq = seq;
                    self.head = head;
                    for (reply, receipt) in replies {
                        let _ = reply.send(Ok(receipt));
                    }
                }
                Err(e) => {
                    let reason = format!("{}: {e}", path.display());
                    self.fail(reason.clone());
                    for (reply, _) in replies {
                        let _ = reply.send(Err(AuditError::WriteFailed(reason.clone())));
                    }
                }
            }
        }
        for reply in checkpoint_requests {
            let _ = reply.send(self.checkpoint());
        }
    }

    fn checkpoint_logged(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "writing audit checkpoint failed");
        }
    }

    /// Appends a checkpoint signing the current head, fsyncs it and copies it to `head.json`.
    fn checkpoint(&mut self) -> Result<Receipt, AuditError> {
        if let Some(reason) = &self.failed {
            return Err(AuditError::WriteFailed(reason.clone()));
        }
        let seq = self.next_seq;
        // Truncate to what the log stores, so the signed text and the stored text agree.
        let time_text = rfc3339::format(SystemTime::now());
        let time = humantime::parse_rfc3339(&time_text)
            .map_err(|e| AuditError::WriteFailed(format!("formatting checkpoint time: {e}")))?;
        let signature = self
            .key
            .sign(&checkpoint_message(seq, &self.head, &time_text));
        let payload = Payload::Checkpoint(Checkpoint {
            time,
            key_id: self.key_id.clone(),
            signature: hex::encode(signature),
        });
        let (line, hash) = record::encode(seq, &self.head, &payload)
            .map_err(|e| AuditError::WriteFailed(format!("encoding checkpoint: {e}")))?;
        let path = segment_path(&self.config.dir, self.segment);
        if let Err(e) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            let reason = format!("{}: {e}", path.display());
            self.fail(reason.clone());
            return Err(AuditError::WriteFailed(reason));
        }
        self.size += line.len() as u64;
        self.next_seq = seq + 1;
        self.head = hash;
        self.events_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        // The head file lets `verify` detect a log truncated back past this checkpoint.
        write_new_file(&self.config.dir.join(HEAD_FILE), &line, 0o600)?;
        // The witness lets it detect the whole directory rolled back to an older state. A
        // witness that cannot be written stops the log like any other failed write: carrying on
        // would leave a gap in what the operator relies on to catch a rollback.
        if let Some(witness) = &self.config.witness {
            if let Err(e) = append_witness(witness, &line) {
                let reason = format!("witness {}: {e}", witness.display());
                self.fail(reason.clone());
                return Err(AuditError::WriteFailed(reason));
            }
        }
        Ok(Receipt { seq, hash })
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let next = self.segment + 1;
        let path = segment_path(&self.config.dir, next);
        let file = open_segment(&path)?;
        File::open(&self.config.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AuditError::io(&self.config.dir, e))?;
        tracing::info!(segment = %path.display(), "audit log rotated");
        self.file = file;
        self.segment = next;
        self.size = 0;
        Ok(())
    }
}

/// A witness inside the audit directory would be rolled back with it: refuse it. Its directory
/// must exist (it is the operator's, on another disk or mount, not ours to create).
fn check_witness_location(audit_dir: &Path, witness: &Path) -> Result<(), AuditError> {
    let parent = match witness.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = fs::canonicalize(parent).map_err(|e| AuditError::io(parent, e))?;
    let audit_dir = fs::canonicalize(audit_dir).map_err(|e| AuditError::io(audit_dir, e))?;
    if parent.starts_with(&audit_dir) {
        return Err(AuditError::InvalidValue {
            field: "witness",
            value: witness.display().to_string(),
            expected: "a file outside the audit directory (a rollback of the directory would take it along)",
        });
    }
    Ok(())
}

/// Appends one checkpoint line to the witness and fsyncs it.
fn append_witness(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(line)?;
    file.sync_data()
}

fn open_segment(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io(path, e))
}

fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    // SAFETY: flock on a file descriptor we own and keep open; it has no memory-safety effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(AuditError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(AuditError::io(&path, err));
    }
    Ok(file)
}

/// The sequence number and hash of the last record in a segment. A torn final line (a write
/// interrupted by a crash, never acknowledged) is cut off so the next append starts cleanly.
fn last_record(path: &Path) -> Result<Option<(u64, [u8; 32])>, AuditError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| AuditError::io(path, e))?;
    let (lines, torn) = split_lines(&bytes);
    if let Some(torn) = torn {
        let keep = (bytes.len() - torn.len()) as u64;
        tracing::warn!(
            file = %path.display(),
            bytes = torn.len(),
            "cutting off an incomplete final line left by a crash (it was never acknowledged)"
        );
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(keep).and_then(|()| f.sync_all()))
            .map_err(|e| AuditError::io(path, e))?;
    }
    let Some((index, line)) = lines.iter().enumerate().rev().find(|(_, l)| !l.is_empty()) else {
        return Ok(None);
    };
    match record::decode(line) {
        Ok(record) => Ok(Some((record.seq, record.hash))),
        Err(e) => Err(AuditError::CorruptTail {
            path: path.to_path_buf(),
            line: index + 1,
            reason: match e {
                record::LineError::Malformed(reason) => reason,
                record::LineError::HashMismatch => {
                    "the record's hash does not match its content".to_string()
                }
            },
        }),
    }
}
