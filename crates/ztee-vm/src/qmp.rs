//! A minimal QMP (QEMU Machine Protocol) client: JSON objects over a Unix socket, one command at
//! a time. Used to pause, snapshot and restore VMs. QEMU is trusted less than ztee but more than
//! the guest; replies are still parsed strictly and bounded.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::VmError;

/// Longest reply line accepted from QEMU.
const MAX_LINE: usize = 1024 * 1024;

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    /// Every exchange on this session ends by then: a QEMU that stops answering (stuck, or
    /// stopped by a signal) fails the caller instead of holding it.
    deadline: Instant,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities. Every read
    /// and write on the session is bounded by `deadline`.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Self, VmError> {
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await
                }
                Err(err) => return Err(VmError::io("connect to QMP socket", socket, err)),
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
            deadline,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Qmp(format!("unexpected greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, VmError> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        tokio::time::timeout_at(deadline, self.read_message_unbounded())
            .await
            .map_err(|_| VmError::Qmp("QEMU did not answer before the deadline".into()))?
    }

    async fn read_message_unbounded(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await
                .map_err(|e| VmError::Qmp(format!("read: {e}")))?;
            if n == 0 {
                return Err(VmError::Qmp("QEMU closed the QMP socket".into()));
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map_err(|e| VmError::Qmp(format!("malformed reply: {e}")));
        }
    }

    /// Runs one command and returns its `return` value; asynchronous events are skipped.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, VmError> {
        let request = json!({ "execute": command, "arguments": arguments });
        let mut bytes = serde_json::to_vec(&request)
            .map_err(|e| VmError::Qmp(format!("encode {command}: {e}")))?;
        bytes.push(b'\n');
        let deadline = tokio::time::Instant::from_std(self.deadline);
        tokio::time::timeout_at(deadline, self.writer.write_all(&bytes))
            .await
            .map_err(|_| VmError::Qmp(format!("QEMU did not take {command} before the deadline")))?
            .map_err(|e| VmError::Qmp(format!("write {command}: {e}")))?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            let description = reply
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .unwrap_or("no description");
            return Err(VmError::Qmp(format!("{command}: {description}")));
        }
    }

    /// Polls `query-migrate` until the migration completes (or fails, or `deadline` passes).
    pub async fn wait_migration(&mut self, deadline: Instant) -> Result<(), VmError> {
        loop {
            let info = self.execute("query-migrate", json!({})).await?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description");
                    return Err(VmError::Qmp(format!("migration failed: {why}")));
                }
                _ if Instant::now() > deadline => {
                    return Err(VmError::Qmp("migration did not complete in time".into()))
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            }
        }
    }

    /// Polls `query-status` until the VM runs.
    pub async fn wait_running(&mut self, deadline: Instant) -> Result<(), VmError> {
        loop {
            let status = self.execute("query-status", json!({})).await?;
            if status.get("running").and_then(Value::as_bool) == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let state = status.get("status").cloned().unwrap_or(Value::Null);
                return Err(VmError::Qmp(format!("VM did not resume (state {state})")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}
