//! Audit events from processes that cannot hold the audit log.
//!
//! The audit log has one writer (it is locked). `ztee apikey create` and `revoke` run while the
//! server may hold it, so they queue their events in the state database; whoever holds the log
//! (the server, every few seconds and at start, or the CLI itself when the server is down) moves
//! them in, oldest first, deleting each only after it is durable in the log.

use std::sync::Weak;
use std::time::Duration;

use ztee_audit::AuditEvent;

use crate::audit::AuditSink;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("audit trail: {0}")]
    Audit(String),
}

pub fn queue(store: &Store, event: &AuditEvent) -> Result<(), OutboxError> {
    store.queue_audit_event(&serde_json::to_string(event)?)?;
    Ok(())
}

/// Moves queued events into `sink`; returns how many moved. A queued row that does not parse is
/// left in place and reported: deleting it would lose an audit record.
pub async fn drain(store: &Store, sink: &dyn AuditSink) -> Result<usize, OutboxError> {
    let s = store.clone();
    let queued = tokio::task::spawn_blocking(move || s.queued_audit_events())
        .await
        .map_err(|e| OutboxError::Audit(e.to_string()))??;
    let mut moved = 0;
    for (seq, json) in queued {
        let event: AuditEvent = serde_json::from_str(&json)?;
        sink.append(event).await.map_err(OutboxError::Audit)?;
        store.remove_queued_audit_event(seq)?;
        moved += 1;
    }
    Ok(moved)
}

/// The server's periodic drain. Holds the log weakly so that it closes (with its final signed
/// checkpoint) when the server drops it.
pub fn spawn_drainer(store: Store, sink: Weak<dyn AuditSink>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(sink) = sink.upgrade() else { return };
            match drain(&store, sink.as_ref()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "moved queued audit events into the log"),
                Err(e) => tracing::error!(error = %e, "moving queued audit events"),
            }
        }
    });
}

/// Outcome of [`record_from_cli`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written to the audit log (the server was not running).
    InLog,
    /// Queued; the running server moves it into the log within seconds.
    Queued,
}

/// Records an event from a command-line process: queued first (so it is never lost), then moved
/// into the log right away if no server holds it.
pub fn record_from_cli(
    store: &Store,
    data_dir: &std::path::Path,
    event: &AuditEvent,
) -> Result<Recorded, OutboxError> {
    queue(store, event)?;
    let key = ztee_audit::NodeKey::load_or_generate(data_dir)
        .map_err(|e| OutboxError::Audit(e.to_string()))?;
    let log = match ztee_audit::AuditLog::open(ztee_audit::AuditConfig::new(data_dir), key) {
        Ok(log) => log,
        Err(ztee_audit::AuditError::Locked { .. }) => return Ok(Recorded::Queued),
        Err(e) => return Err(OutboxError::Audit(e.to_string())),
    };
    for (seq, json) in store.queued_audit_events()? {
        let event: AuditEvent = serde_json::from_str(&json)?;
        log.append_blocking(event)
            .map_err(|e| OutboxError::Audit(e.to_string()))?;
        store.remove_queued_audit_event(seq)?;
    }
    log.close();
    Ok(Recorded::InLog)
}
