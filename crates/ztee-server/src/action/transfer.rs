//! Sandbox file transfers without holding whole files on the async workers.
//!
//! A download is read from the guest in chunks and served as a stream:
//!
//! - The first [`PREFIX_BYTES`] are read before anything is sent. A file that ends within them
//!   is answered as one body, as before: masked if it is UTF-8 text (with the counts in
//!   `x-ztee-redactions`), refused with 422 if it is binary and DLP finds something in it.
//! - A larger file whose prefix is UTF-8 is text: it is masked as it streams, by the streaming
//!   redactor, which holds back enough of each chunk that a card number split between two
//!   chunks is still seen whole. An invalid byte further on becomes U+FFFD (a text file is never
//!   served partly unmasked). The counts cannot be a header (it leaves before the content is
//!   scanned): they are in the audit record written when the stream ends.
//! - A larger binary file cannot be masked in place, and whether it holds card data must be
//!   known before the status line leaves. It is read twice: the first pass scans it (nothing is
//!   sent) and remembers a keyed digest of every [`BLOCK_BYTES`] block; if DLP finds something
//!   the download is refused with 422. Otherwise the second pass sends it, each block only after
//!   its digest matched the first pass, so what leaves is exactly what was scanned; a file
//!   changed in between ends the stream with an error.
//!
//! DLP work runs on the blocking pool, chunk by chunk, never on the async workers. What one
//! download holds is bounded by the prefix, a chunk and the response's small queue; how many run
//! at once, per principal and in total, by [`crate::quota::TransferLimiter`]. The audit record is
//! written once, at the end, with the keyed digest of what was sent, computed as it was sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ztee_audit::{DecisionRecord, EventType, Outcome};

use crate::auth::Caller;
use crate::dlp::{RedactionCounts, SecretScope, StreamRedactor};
use crate::error::ActionError;
use crate::exec::FileChunks;
use crate::pipeline::{exec_error, ActionContext, Admitted, Work};
use crate::policy::PolicyInput;
use crate::quota::{TransferLimit, TransferPermit};
use crate::state::AppState;

/// Read before a download is answered; a file that ends within it is answered whole.
pub const PREFIX_BYTES: usize = 1024 * 1024;
/// Blocks a binary download is verified in between its two passes.
pub const BLOCK_BYTES: usize = 256 * 1024;
/// A client that takes nothing from the stream for this long is dropped, so a stalled download
/// does not keep its transfer place.
const SEND_IDLE: Duration = Duration::from_secs(60);
/// Chunks queued between the reader and the response body.
const QUEUE: usize = 2;

/// Takes a transfer place for `caller`, or refuses with 429 `transfer_limit` naming the limit.
pub fn permit(state: &AppState, caller: &Caller) -> Result<TransferPermit, ActionError> {
    state
        .transfers
        .acquire(&caller.principal.subject)
        .map_err(|limit| {
            let message = match limit {
                TransferLimit::Principal(n) => format!(
                    "you already have {n} file transfers in flight (max_transfers_per_principal); retry when one ends"
                ),
                TransferLimit::Total(n) => format!(
                    "the gateway already has {n} file transfers in flight (max_transfers); retry shortly"
                ),
            };
            let mut err = ActionError::new(
            crate::error::ErrorKind::RateLimited, "transfer_limit", message);
            err.retry_after_s = Some(1);
            err
        })
}

/// Runs `f` on the blocking pool: DLP over a chunk is CPU work that must not stall the async
/// workers.
pub async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ActionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ActionError::internal)
}

/// An upload's content at or below this is scanned inline; above it, on the blocking pool.
pub const INLINE_SCAN_BYTES: usize = 64 * 1024;

/// The refusal of a file larger than the upload limit (`max_file_bytes`).
pub fn too_large(limit: usize) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::TooLarge,
        "payload_too_large",
        format!("the file is larger than the upload limit of {limit} bytes (max_file_bytes)"),
    )
}

/// A file on its way out of a sandbox, masked (text) or verified free of findings (binary).
pub enum FileContent {
    /// A file that fit in the prefix, with what masking replaced in it.
    Whole {
        content: Bytes,
        redactions: RedactionCounts,
    },
    /// A larger file, as it is read. An error item ends it: the reader must treat what came
    /// before as a broken transfer, never as a short file. The redaction counts are in the
    /// audit record written when it ends.
    Stream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

/// Inbound DLP and policy for an upload ([`crate::pipeline::Pipeline::admit`]); a large file's
/// scan runs on the blocking pool rather than on an async worker.
pub async fn admit_upload(
    state: &AppState,
    ctx: &mut ActionContext<'_>,
    work: Work,
) -> Result<Admitted, ActionError> {
    let size: usize = work.files.iter().map(|f| f.content.len()).sum();
    if size <= INLINE_SCAN_BYTES {
        return state.pipeline.admit(ctx, work).await;
    }
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    let (event_type, resource, policy) = (ctx.event_type, ctx.resource.clone(), ctx.policy.clone());
    let runtime = tokio::runtime::Handle::current();
    let (admitted, policy) = off_worker(move || {
        let mut ctx = ActionContext {
            caller: &caller,
            event_type,
            resource,
            policy,
            approval: None,
        };
        // A blocking-pool thread may wait on the runtime: the audit and store I/O inside are
        // still driven by the runtime's own threads.
        let admitted = runtime.block_on(pipeline.admit(&mut ctx, work));
        (admitted, ctx.policy)
    })
    .await?;
    ctx.policy = policy;
    admitted
}

/// What a download's audit record is made of, owned so it can be written when the stream ends.
pub struct DownloadAudit {
    pub caller: Caller,
    pub resource: Option<String>,
    pub policy: PolicyInput,
    pub decision: DecisionRecord,
}

impl DownloadAudit {
    fn event(&self, state: &AppState, outcome: Outcome) -> ztee_audit::AuditEvent {
        let ctx = ActionContext {
            caller: &self.caller,
            event_type: EventType::FileRead,
            resource: self.resource.clone(),
            policy: self.policy.clone(),
            approval: None,
        };
        state.pipeline.event(&ctx, outcome)
    }

    async fn failure(&self, state: &AppState) -> Result<(), ActionError> {
        let event = self
            .event(state, Outcome::Failure)
            .with_decision(self.decision.clone());
        state.pipeline.record(event).await
    }
}

/// A redactor that runs on the blocking pool, one chunk at a time.
struct Masker {
    carry: ztee_dlp::Utf8Stream,
    redactor: Option<Box<dyn StreamRedactor>>,
}

impl Masker {
    fn new(state: &AppState, scope: Option<&SecretScope>) -> Self {
        Self {
            carry: ztee_dlp::Utf8Stream::default(),
            redactor: Some(state.pipeline.dlp.stream_for(scope)),
        }
    }

    /// Masks `bytes` (the end of the input when `None`); returns what is final so far.
    async fn push(&mut self, bytes: Option<&[u8]>) -> Result<String, ActionError> {
        let mut text = String::new();
        match bytes {
            Some(b) => self.carry.push(b, &mut text),
            None => self.carry.finish(&mut text),
        }
        let mut redactor = self
            .redactor
            .take()
            .ok_or_else(|| ActionError::internal("the download's redactor was lost"))?;
        let last = bytes.is_none();
        let (redactor, out) = off_worker(move || {
            let mut out = redactor.push(&text);
            if last {
                out.push_str(&redactor.finish());
            }
            (redactor, out)
        })
        .await?;
        self.redactor = Some(redactor);
        Ok(out)
    }

    fn counts(&self) -> RedactionCounts {
        self.redactor
            .as_ref()
            .map(|r| r.counts())
            .unwrap_or_default()
    }
}

/// Whether `prefix` is UTF-8, allowing a sequence cut at its end (the next chunk completes it).
fn is_text(prefix: &[u8]) -> bool {
    match std::str::from_utf8(prefix) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Reads up to [`PREFIX_BYTES`] (or the whole file, if shorter); `true` when the file ended.
async fn read_prefix(chunks: &mut dyn FileChunks) -> Result<(Vec<u8>, bool), ActionError> {
    let mut prefix = Vec::new();
    while prefix.len() < PREFIX_BYTES {
        match chunks.next_chunk().await.map_err(exec_error)? {
            Some(chunk) => prefix.extend_from_slice(&chunk),
            None => return Ok((prefix, true)),
        }
    }
    Ok((prefix, false))
}

/// Serves the file at `path` of `sandbox` (already admitted by policy), holding `permit` until
/// the transfer ends.
pub async fn download(
    state: Arc<AppState>,
    sandbox: Arc<crate::state::LiveSandbox>,
    path: String,
    audit: DownloadAudit,
    permit: TransferPermit,
) -> Result<FileContent, ActionError> {
    let scope = sandbox.secrets.as_ref().and_then(|s| s.scope());
    let read = async {
        let mut chunks = sandbox
            .handle
            .read_file_chunks(&path)
            .await
            .map_err(exec_error)?;
        let (prefix, ended) = read_prefix(chunks.as_mut()).await?;
        Ok::<_, ActionError>((chunks, prefix, ended))
    }
    .await;
    let (chunks, prefix, ended) = match read {
        Ok(read) => read,
        Err(e) => {
            audit.failure(&state).await?;
            return Err(e);
        }
    };
    if ended {
        return whole(&state, &path, prefix, scope, audit).await;
    }
    if is_text(&prefix) {
        return Ok(stream_text(state, chunks, prefix, scope, audit, permit));
    }
    // Binary: scan it all first, then send it verified against the scan.
    let scanned = match scan_binary(&state, chunks, prefix, scope).await {
        Ok(scanned) => scanned,
        Err(e) => {
            audit.failure(&state).await?;
            return Err(e);
        }
    };
    if !scanned.found.is_empty() {
        let event = audit
            .event(&state, Outcome::Denied)
            .with_output(&scanned.digest);
        state.pipeline.record(event).await?;
        return Err(binary_refusal(&path, &scanned.found));
    }
    let second = match sandbox.handle.read_file_chunks(&path).await {
        Ok(chunks) => chunks,
        Err(e) => {
            audit.failure(&state).await?;
            return Err(exec_error(e));
        }
    };
    Ok(stream_binary(state, second, scanned, audit, permit))
}

fn binary_refusal(path: &str, found: &[String]) -> ActionError {
    ActionError::dlp_blocked(format!(
        "{path} is binary and holds sensitive data ({}) that cannot be masked in place",
        found.join(", ")
    ))
}

/// A file that fit in the prefix: one body, masked (text) or checked (binary), on the blocking
/// pool.
async fn whole(
    state: &AppState,
    path: &str,
    content: Vec<u8>,
    scope: Option<SecretScope>,
    audit: DownloadAudit,
) -> Result<FileContent, ActionError> {
    let dlp = state.pipeline.dlp.clone();
    let checked = off_worker(move || match String::from_utf8(content) {
        Ok(text) => {
            let r = dlp.redact_in(scope.as_ref(), &text);
            Ok((Bytes::from(r.text), r.counts))
        }
        Err(e) => {
            let content = e.into_bytes();
            let found = dlp.scan_in(scope.as_ref(), &String::from_utf8_lossy(&content));
            if found.is_empty() {
                Ok((Bytes::from(content), RedactionCounts::new()))
            } else {
                Err((found, Bytes::from(content)))
            }
        }
    })
    .await?;
    let (body, counts) = match checked {
        Ok(done) => done,
        Err((found, content)) => {
            let event = audit
                .event(state, Outcome::Denied)
                .with_output(&state.pipeline.content_key.digest(&content));
            state.pipeline.record(event).await?;
            return Err(binary_refusal(path, &found));
        }
    };
    state.metrics.redactions("outbound", &counts);
    let event = audit
        .event(state, Outcome::Success)
        .with_decision(audit.decision.clone())
        .with_output(&state.pipeline.content_key.digest(&body))
        .with_redactions(&counts);
    state.pipeline.record(event).await?;
    Ok(FileContent::Whole {
        content: body,
        redactions: counts,
    })
}

type Sender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Hands `bytes` to the response body; `false` when the client is gone or stalled.
async fn send(tx: &Sender, bytes: Bytes) -> bool {
    if bytes.is_empty() {
        return true;
    }
    matches!(
        tokio::time::timeout(SEND_IDLE, tx.send(Ok(bytes))).await,
        Ok(Ok(()))
    )
}

/// Ends the body with an error, so the client sees a broken transfer, never a short file.
async fn abort(tx: &Sender, why: &str) {
    let _ = tx.send(Err(std::io::Error::other(why.to_owned()))).await;
}

/// How a streamed download ended, for its audit record.
enum End {
    Done,
    ClientGone,
    Failed(String),
}

async fn record_end(
    state: &AppState,
    audit: &DownloadAudit,
    end: &End,
    digest: &[u8],
    counts: &RedactionCounts,
) {
    state.metrics.redactions("outbound", counts);
    let outcome = match end {
        End::Done => Outcome::Success,
        End::ClientGone | End::Failed(_) => Outcome::Failure,
    };
    let event = audit
        .event(state, outcome)
        .with_decision(audit.decision.clone())
        .with_output(digest)
        .with_redactions(counts);
    if let Err(e) = state.pipeline.record(event).await {
        // The body has left already; what remains is to say so loudly.
        tracing::error!(error = %e.message, "recording a streamed download");
    }
    if let End::Failed(why) = end {
        tracing::warn!(reason = %why, "a streamed download ended early");
    }
}

fn stream_text(
    state: Arc<AppState>,
    mut chunks: Box<dyn FileChunks>,
    prefix: Vec<u8>,
    scope: Option<SecretScope>,
    audit: DownloadAudit,
    permit: TransferPermit,
) -> FileContent {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let _permit = permit;
        let mut masker = Masker::new(&state, scope.as_ref());
        let mut digest = state.pipeline.content_key.hasher();
        let mut next = Some(Bytes::from(prefix));
        let end = loop {
            let input = match next.take() {
                Some(chunk) => Some(chunk),
                None => match chunks.next_chunk().await {
                    Ok(chunk) => chunk,
                    Err(e) => break End::Failed(exec_error(e).message),
                },
            };
            let out = match masker.push(input.as_deref()).await {
                Ok(out) => out,
                Err(e) => break End::Failed(e.message),
            };
            digest.update(out.as_bytes());
            if !send(&tx, Bytes::from(out)).await {
                break End::ClientGone;
            }
            if input.is_none() {
                break End::Done;
            }
        };
        if let End::Failed(why) = &end {
            abort(&tx, why).await;
        }
        record_end(&state, &audit, &end, &digest.finalize(), &masker.counts()).await;
    });
    FileContent::Stream(rx)
}

/// Splits a byte stream into [`BLOCK_BYTES`] blocks, whatever the chunks it arrives in.
struct Blocks {
    buf: Vec<u8>,
}

impl Blocks {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(BLOCK_BYTES),
        }
    }

    /// Adds `bytes`; returns the blocks it completed.
    fn push(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut full = Vec::new();
        while !bytes.is_empty() {
            let take = (BLOCK_BYTES - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == BLOCK_BYTES {
                full.push(std::mem::replace(
                    &mut self.buf,
                    Vec::with_capacity(BLOCK_BYTES),
                ));
            }
        }
        full
    }

    /// The last, partial block (none when the stream ended on a block boundary).
    fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// The first pass over a binary file.
struct Scanned {
    /// Entity types DLP found.
    found: Vec<String>,
    /// Keyed digest of each block, in order.
    blocks: Vec<[u8; 32]>,
    /// Keyed digest of the whole file.
    digest: [u8; 32],
}

/// The first pass: the prefix already read, then the rest of the same read.
async fn scan_binary(
    state: &AppState,
    mut chunks: Box<dyn FileChunks>,
    prefix: Vec<u8>,
    scope: Option<SecretScope>,
) -> Result<Scanned, ActionError> {
    let key = &state.pipeline.content_key;
    let mut masker = Masker::new(state, scope.as_ref());
    let mut blocks = Blocks::new();
    let mut digests = Vec::new();
    let mut whole = key.hasher();
    let mut next = Some(Bytes::from(prefix));
    loop {
        let chunk = match next.take() {
            Some(prefix) => prefix,
            None => match chunks.next_chunk().await.map_err(exec_error)? {
                Some(chunk) => chunk,
                None => break,
            },
        };
        whole.update(&chunk);
        for block in blocks.push(&chunk) {
            digests.push(key.digest(&block));
        }
        // Only the counts matter: nothing of this pass is sent.
        masker.push(Some(&chunk)).await?;
    }
    if let Some(block) = blocks.finish() {
        digests.push(key.digest(&block));
    }
    masker.push(None).await?;
    Ok(Scanned {
        found: masker.counts().into_keys().collect(),
        blocks: digests,
        digest: whole.finalize(),
    })
}

fn stream_binary(
    state: Arc<AppState>,
    mut chunks: Box<dyn FileChunks>,
    scanned: Scanned,
    audit: DownloadAudit,
    permit: TransferPermit,
) -> FileContent {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let _permit = permit;
        let key = state.pipeline.content_key.clone();
        let mut digest = key.hasher();
        let mut blocks = Blocks::new();
        let mut expected = scanned.blocks.iter();
        let changed = "the file changed while it was downloaded; nothing after the change was sent";
        let end = 'read: loop {
            let chunk = match chunks.next_chunk().await {
                Ok(chunk) => chunk,
                Err(e) => break End::Failed(exec_error(e).message),
            };
            let ready = match &chunk {
                Some(chunk) => blocks.push(chunk),
                None => std::mem::replace(&mut blocks, Blocks::new())
                    .finish()
                    .into_iter()
                    .collect(),
            };
            for block in ready {
                // Sent only when it is exactly the block the scan saw.
                if expected.next() != Some(&key.digest(&block)) {
                    break 'read End::Failed(changed.to_owned());
                }
                digest.update(&block);
                if !send(&tx, Bytes::from(block)).await {
                    break 'read End::ClientGone;
                }
            }
            if chunk.is_none() {
                if expected.next().is_some() {
                    break End::Failed(changed.to_owned());
                }
                break End::Done;
            }
        };
        if let End::Failed(why) = &end {
            abort(&tx, why).await;
        }
        record_end(
            &state,
            &audit,
            &end,
            &digest.finalize(),
            &RedactionCounts::new(),
        )
        .await;
    });
    FileContent::Stream(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blocks_are_the_same_whatever_the_chunks() {
        let data: Vec<u8> = (0..(BLOCK_BYTES * 2 + 10)).map(|i| i as u8).collect();
        let mut a = Blocks::new();
        let mut got_a: Vec<Vec<u8>> = data.chunks(1000).flat_map(|c| a.push(c)).collect();
        got_a.extend(a.finish());
        let mut b = Blocks::new();
        let mut got_b = b.push(&data);
        got_b.extend(b.finish());
        assert_eq!(got_a, got_b);
        assert_eq!(got_a.len(), 3);
        assert_eq!(got_a[2].len(), 10);
    }

    #[test]
    fn a_prefix_cut_inside_a_character_is_still_text() {
        assert!(is_text("caf\u{e9}".as_bytes()));
        assert!(is_text(&"caf\u{e9}".as_bytes()[..4]));
        assert!(!is_text(&[0x66, 0xff, 0x00]));
    }
}
