//! The tool definitions each MCP upstream is pinned to: a digest of the set a person approved
//! (or that was trusted on first use), kept in the state database.

use rusqlite::{params, OptionalExtension};

use crate::store::{Store, StoreError};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS mcp_tool_pins (
    upstream TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    tools TEXT NOT NULL,
    approval TEXT,
    pinned_at INTEGER NOT NULL,
    seen TEXT
);";

/// The pinned set of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub digest: String,
    /// The tools' names, sorted.
    pub tools: Vec<String>,
    /// The approval that pinned it; `None` when it was trusted on first use.
    pub approval: Option<String>,
    /// The digest of the set the upstream offered last: when it is not the pinned one, the
    /// upstream's definitions changed and its tools are not called until a person approves.
    pub seen: Option<String>,
}

impl Pin {
    /// Whether the upstream still offers the set it is pinned to.
    pub fn current(&self) -> bool {
        self.seen.as_deref().is_none_or(|seen| seen == self.digest)
    }
}

/// Creates the pins table; the gateway calls it once at start.
pub fn create_table(store: &Store) -> Result<(), StoreError> {
    store.with_connection(|c| c.execute_batch(TABLE))
}

pub fn get(store: &Store, upstream: &str) -> Result<Option<Pin>, StoreError> {
    store.with_connection(|c| {
        c.query_row(
            "SELECT digest, tools, approval, seen FROM mcp_tool_pins WHERE upstream = ?1",
            params![upstream],
            |row| {
                let tools: String = row.get(1)?;
                Ok(Pin {
                    digest: row.get(0)?,
                    tools: serde_json::from_str(&tools).unwrap_or_default(),
                    approval: row.get(2)?,
                    seen: row.get(3)?,
                })
            },
        )
        .optional()
    })
}

/// Pins `upstream` to `pin`, replacing what it was pinned to.
pub fn put(store: &Store, upstream: &str, pin: &Pin) -> Result<(), StoreError> {
    let tools = serde_json::to_string(&pin.tools).unwrap_or_else(|_| "[]".into());
    store.with_connection(|c| {
        c.execute(
            "INSERT INTO mcp_tool_pins (upstream, digest, tools, approval, pinned_at, seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?2)
             ON CONFLICT(upstream) DO UPDATE SET digest = ?2, tools = ?3, approval = ?4,
                 pinned_at = ?5, seen = ?2",
            params![
                upstream,
                pin.digest,
                tools,
                pin.approval,
                i64::try_from(crate::approvals::now()).unwrap_or(i64::MAX)
            ],
        )
        .map(|_| ())
    })
}

/// Notes the set `upstream` offered last (nothing when it has no pin yet).
pub fn saw(store: &Store, upstream: &str, digest: &str) -> Result<(), StoreError> {
    store.with_connection(|c| {
        c.execute(
            "UPDATE mcp_tool_pins SET seen = ?2 WHERE upstream = ?1",
            params![upstream, digest],
        )
        .map(|_| ())
    })
}
