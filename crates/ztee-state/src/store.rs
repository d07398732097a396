//! Durable state in one SQLite file: API keys (hashed), sandbox ownership and sizes.
//!
//! SQLite is embedded (bundled), so a single host needs nothing else. Every statement is small;
//! the connection sits behind a mutex and statements run on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: a previous statement panicked; restart the server")]
    Poisoned,
    #[error("state database: worker task failed: {0}")]
    Join(String),
}

/// One API key as stored: never the key itself, only the SHA-256 of its secret part.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub role: String,
    pub description: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
}

/// A sandbox as the gateway tracks it: who owns it and what it reserves against quotas.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxRecord {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub image: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub timeout_s: u64,
    pub created_at: String,
    pub metadata: serde_json::Value,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secret_sha256 BLOB NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    image TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes(tenant);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);
";

pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// `time` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl Store {
    /// Opens (creating if needed) the database at `path` for administrative writes: WAL mode,
    /// `synchronous=FULL`, so an acknowledged key creation or revocation survives a power loss.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, "FULL")
    }

    /// Opens the database for the server, whose own writes are sandbox reservations (cleared
    /// at every start anyway) and removals of queued audit events (replayed, never lost, if a
    /// removal is lost): `synchronous=NORMAL`, which in WAL mode skips the fsync per commit but
    /// keeps the database consistent. Keys written by `ztee apikey` keep their FULL durability.
    pub fn open_for_server(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, "NORMAL")
    }

    fn open_with(path: &Path, synchronous: &str) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// One statement (or a few) on the connection, for tables the gateway's own modules keep
    /// in this file (approval records).
    pub fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.with(f)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&conn)?)
    }

    /// Runs `f` on the blocking pool, for calls from async handlers.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    pub fn insert_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys (id, tenant, role, description, secret_sha256, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    record.id,
                    record.tenant,
                    record.role,
                    record.description,
                    record.secret_sha256,
                    record.created_at
                ],
            )
            .map(|_| ())
        })
    }

    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, tenant, role, description, secret_sha256, created_at, revoked_at
                 FROM api_keys WHERE id = ?1",
                params![id],
                api_key_from_row,
            )
            .optional()
        })
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, tenant, role, description, secret_sha256, created_at, revoked_at
                 FROM api_keys ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], api_key_from_row)?;
            rows.collect()
        })
    }

    /// Returns false when no key has this id or it was already revoked.
    pub fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_rfc3339();
        self.with(|c| {
            c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )
            .map(|n| n > 0)
        })
    }

    pub fn active_api_key_count(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
    }

    /// Reserves a sandbox against the tenant's quotas in one transaction, so two concurrent
    /// creations cannot both squeeze under the limit. Returns the tenant's usage when refused.
    pub fn reserve_sandbox(
        &self,
        record: &SandboxRecord,
        max_sandboxes: u32,
        max_memory_mib: u64,
    ) -> Result<Result<(), TenantUsage>, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let usage = usage_in(&tx, &record.tenant)?;
        if usage.sandboxes + 1 > u64::from(max_sandboxes)
            || usage.memory_mib + u64::from(record.memory_mib) > max_memory_mib
        {
            return Ok(Err(usage));
        }
        tx.execute(
            "INSERT INTO sandboxes (id, tenant, owner, image, memory_mib, vcpus, timeout_s, created_at, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.id,
                record.tenant,
                record.owner,
                record.image,
                record.memory_mib,
                record.vcpus,
                record.timeout_s,
                record.created_at,
                record.metadata.to_string()
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, tenant, owner, image, memory_mib, vcpus, timeout_s, created_at, metadata
                 FROM sandboxes WHERE id = ?1",
                params![id],
                sandbox_from_row,
            )
            .optional()
        })
    }

    /// Sandboxes of one tenant, or of every tenant when `tenant` is `None`.
    pub fn sandboxes(&self, tenant: Option<&str>) -> Result<Vec<SandboxRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, tenant, owner, image, memory_mib, vcpus, timeout_s, created_at, metadata
                 FROM sandboxes WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map(params![tenant], sandbox_from_row)?;
            rows.collect()
        })
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    /// Removes every sandbox row: at start-up, since no VM outlives the process that ran it.
    pub fn clear_sandboxes(&self) -> Result<usize, StoreError> {
        self.with(|c| c.execute("DELETE FROM sandboxes", []))
    }

    /// Queues an audit event (JSON) written while another process holds the audit log; the
    /// gateway moves queued events into the log.
    pub fn queue_audit_event(&self, event_json: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit_outbox (event) VALUES (?1)",
                params![event_json],
            )
            .map(|_| ())
        })
    }

    /// Queued events, oldest first, with their queue ids.
    pub fn queued_audit_events(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT seq, event FROM audit_outbox ORDER BY seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    pub fn remove_queued_audit_event(&self, seq: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM audit_outbox WHERE seq = ?1", params![seq])
                .map(|_| ())
        })
    }

    pub fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        self.with(|c| usage_in(c, tenant))
    }
}

/// What a tenant currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantUsage {
    pub sandboxes: u64,
    pub memory_mib: u64,
}

fn usage_in(c: &Connection, tenant: &str) -> rusqlite::Result<TenantUsage> {
    c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(memory_mib), 0) FROM sandboxes WHERE tenant = ?1",
        params![tenant],
        |r| {
            Ok(TenantUsage {
                sandboxes: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                memory_mib: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            })
        },
    )
}

fn api_key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        role: r.get(2)?,
        description: r.get(3)?,
        secret_sha256: r.get(4)?,
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

fn sandbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    let metadata: String = r.get(8)?;
    Ok(SandboxRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        owner: r.get(2)?,
        image: r.get(3)?,
        memory_mib: r.get(4)?,
        vcpus: r.get(5)?,
        timeout_s: r.get(6)?,
        created_at: r.get(7)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sandbox(id: &str, tenant: &str, mem: u32) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            tenant: tenant.into(),
            owner: "apikey:k".into(),
            image: "default".into(),
            memory_mib: mem,
            vcpus: 1,
            timeout_s: 60,
            created_at: now_rfc3339(),
            metadata: serde_json::json!({"k": "v"}),
        }
    }

    #[test]
    fn quotas_are_enforced_per_tenant_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert!(store
            .reserve_sandbox(&sandbox("a", "t1", 128), 2, 300)
            .unwrap()
            .is_ok());
        // Memory limit: 128 + 256 > 300.
        let refused = store
            .reserve_sandbox(&sandbox("b", "t1", 256), 2, 300)
            .unwrap();
        assert_eq!(
            refused,
            Err(TenantUsage {
                sandboxes: 1,
                memory_mib: 128
            })
        );
        assert!(store
            .reserve_sandbox(&sandbox("c", "t1", 128), 2, 300)
            .unwrap()
            .is_ok());
        // Count limit.
        assert!(store
            .reserve_sandbox(&sandbox("d", "t1", 1), 2, 300)
            .unwrap()
            .is_err());
        // Another tenant is unaffected.
        assert!(store
            .reserve_sandbox(&sandbox("e", "t2", 128), 2, 300)
            .unwrap()
            .is_ok());
        assert_eq!(store.sandboxes(Some("t1")).unwrap().len(), 2);
        assert_eq!(store.sandboxes(None).unwrap().len(), 3);
        assert!(store.delete_sandbox("a").unwrap());
        assert!(!store.delete_sandbox("a").unwrap());
        assert_eq!(store.tenant_usage("t1").unwrap().memory_mib, 128);
        assert_eq!(store.sandbox("c").unwrap().unwrap().metadata["k"], "v");
    }
}
