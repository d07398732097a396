//! Bounds on what held requests keep in memory.
//!
//! A held request (code, env, files: possibly card data) stays in memory until its approval
//! ends, up to `ttl_s`. Without a bound, any principal allowed to run code could make the
//! gateway hold its JSON body limit per request for an hour, as often as its rate limit lets it.
//! The [`Ledger`] counts pending held requests and their bytes per principal, per tenant and in
//! total; a request over any of these caps is refused with 429 `approval_hold_limit`, before it
//! is parked.
//!
//! The check and the reservation are one step under one lock, so concurrent requests can never
//! together pass a cap. A reservation belongs to one approval id and is released when the held
//! request is dropped (approved and taken for execution, denied, expired, its requester gone, or
//! swept because it ended in another process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ztee_audit::{EventType, Outcome};
use ztee_state::config::HoldLimits;

use crate::action::{Action, HeldAction};
use crate::audit;
use crate::auth::Caller;
use crate::error::ActionError;
use crate::state::AppState;

/// Fixed cost counted for every held request on top of its content: the caller, the ids, the
/// map entry.
const ENTRY_OVERHEAD: u64 = 512;
/// Counted per secret a held request asks for (a name and an environment variable).
const SECRET_REQUEST_BYTES: u64 = 128;

/// The bytes a held request keeps in memory, counted from its content (code, command, files,
/// env, stdin, metadata, destinations), so a large request weighs what it holds.
pub fn held_bytes(held: &HeldAction) -> u64 {
    fn s(v: &str) -> u64 {
        v.len() as u64
    }
    fn map(m: &std::collections::BTreeMap<String, String>) -> u64 {
        m.iter().map(|(k, v)| s(k) + s(v)).sum()
    }
    fn list(l: &[String]) -> u64 {
        l.iter().map(|v| s(v)).sum()
    }
    fn cmd(c: &crate::action::Cmd) -> u64 {
        match c {
            crate::action::Cmd::Argv(argv) => list(argv),
            crate::action::Cmd::Shell(sh) => s(sh),
        }
    }
    let opt = |v: &Option<String>| v.as_deref().map_or(0, s);
    let content = match &held.action {
        Action::Run(r) => {
            r.cmd.as_ref().map_or(0, cmd)
                + opt(&r.language)
                + opt(&r.code)
                + r.files
                    .iter()
                    .map(|f| s(&f.path) + f.content.len() as u64)
                    .sum::<u64>()
                + map(&r.env)
                + opt(&r.stdin)
                + opt(&r.cwd)
                + opt(&r.image)
                + list(&r.egress)
                + r.secrets.len() as u64 * SECRET_REQUEST_BYTES
        }
        Action::Exec {
            sandbox,
            command: request,
        } => {
            s(sandbox)
                + cmd(&request.cmd)
                + opt(&request.stdin)
                + map(&request.env)
                + opt(&request.cwd)
        }
        Action::CreateSandbox(r) => {
            opt(&r.image)
                + map(&r.env)
                + map(&r.metadata)
                + list(&r.egress)
                + r.secrets.len() as u64 * SECRET_REQUEST_BYTES
        }
        Action::WriteFile {
            sandbox,
            path,
            content,
        } => s(sandbox) + s(path) + content.len() as u64,
        Action::DeleteSandbox { sandbox }
        | Action::ShowSandbox { sandbox }
        | Action::ReadFile { sandbox, .. } => s(sandbox),
        Action::StartProcess {
            sandbox,
            command: request,
            tag,
            ..
        } => {
            s(sandbox)
                + cmd(&request.cmd)
                + opt(&request.stdin)
                + map(&request.env)
                + opt(&request.cwd)
                + opt(tag)
        }
        Action::SendInput { sandbox, data, .. } => s(sandbox) + s(data),
        Action::RunCode { sandbox, run } => s(sandbox) + s(&run.code) + map(&run.env),
        Action::CreateContext { sandbox, cwd, .. } => s(sandbox) + opt(cwd),
        Action::RemoveContext { sandbox, context }
        | Action::RestartContext { sandbox, context } => s(sandbox) + s(context),
        Action::ListContexts { sandbox } => s(sandbox),
        Action::Filesystem { sandbox, .. } => s(sandbox) + 4096,
        Action::ConnectProcess { sandbox, .. }
        | Action::ResizeTerminal { sandbox, .. }
        | Action::ListProcesses { sandbox }
        | Action::CloseStdin { sandbox, .. }
        | Action::SignalProcess { sandbox, .. }
        | Action::SetTimeout { sandbox, .. } => s(sandbox),
        Action::ListSandboxes => 0,
        // Never parked (the caller waits on the answer), sized like any other content.
        Action::LlmExchange(exchange) => exchange.body.to_string().len() as u64,
        Action::McpToolCall(call) => s(&call.tool) + call.arguments.to_string().len() as u64,
        Action::PinMcpTools(set) => s(&set.upstream) + list(&set.tools) + s(&set.digest),
    };
    content + ENTRY_OVERHEAD
}

/// Which cap a refused request would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    PrincipalCount,
    PrincipalBytes,
    TenantCount,
    TenantBytes,
    TotalCount,
    TotalBytes,
}

impl Cap {
    /// The rule id in the audit trail.
    pub fn rule(self) -> &'static str {
        match self {
            Cap::PrincipalCount => "approval_hold_limit.principal_count",
            Cap::PrincipalBytes => "approval_hold_limit.principal_bytes",
            Cap::TenantCount => "approval_hold_limit.tenant_count",
            Cap::TenantBytes => "approval_hold_limit.tenant_bytes",
            Cap::TotalCount => "approval_hold_limit.total_count",
            Cap::TotalBytes => "approval_hold_limit.total_bytes",
        }
    }

    fn describe(self, limits: &HoldLimits) -> String {
        match self {
            Cap::PrincipalCount => format!(
                "you already have {} requests waiting for approval (max_per_principal)",
                limits.max_per_principal
            ),
            Cap::PrincipalBytes => format!(
                "your requests waiting for approval would hold more than {} bytes (max_bytes_per_principal)",
                limits.max_bytes_per_principal
            ),
            Cap::TenantCount => format!(
                "your tenant already has {} requests waiting for approval (max_per_tenant)",
                limits.max_per_tenant
            ),
            Cap::TenantBytes => format!(
                "your tenant's requests waiting for approval would hold more than {} bytes (max_bytes_per_tenant)",
                limits.max_bytes_per_tenant
            ),
            Cap::TotalCount => format!(
                "the gateway already holds {} requests waiting for approval (max_total)",
                limits.max_total
            ),
            Cap::TotalBytes => format!(
                "the requests waiting for approval on this gateway would hold more than {} bytes (max_total_bytes)",
                limits.max_total_bytes
            ),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Usage {
    count: usize,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn sub(&mut self, bytes: u64) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

struct Reservation {
    principal: (String, String),
    tenant: String,
    bytes: u64,
}

#[derive(Default)]
struct Book {
    by_id: HashMap<String, Reservation>,
    principals: HashMap<(String, String), Usage>,
    tenants: HashMap<String, Usage>,
    total: Usage,
}

impl Book {
    fn release(&mut self, id: &str) {
        let Some(r) = self.by_id.remove(id) else {
            return;
        };
        self.total.sub(r.bytes);
        if let Some(u) = self.principals.get_mut(&r.principal) {
            u.sub(r.bytes);
            if u.is_empty() {
                self.principals.remove(&r.principal);
            }
        }
        if let Some(u) = self.tenants.get_mut(&r.tenant) {
            u.sub(r.bytes);
            if u.is_empty() {
                self.tenants.remove(&r.tenant);
            }
        }
    }
}

/// Pending held requests, counted per principal, per tenant and in total.
pub struct Ledger {
    limits: HoldLimits,
    book: Arc<Mutex<Book>>,
}

/// A reservation not yet handed over to a parked request: released when dropped, so a park that
/// fails half-way (the record cannot be stored, the request is refused for another reason)
/// gives its slot back.
#[must_use]
pub struct Slot {
    id: String,
    book: Option<Arc<Mutex<Book>>>,
}

impl Slot {
    /// The request is parked: the reservation now lasts until [`Ledger::release`] for its id.
    pub fn keep(mut self) {
        self.book = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(book) = self.book.take() {
            lock(&book).release(&self.id);
        }
    }
}

/// The book behind its lock, also after a panic elsewhere poisoned it: every update is applied
/// whole before the lock is released, so the counts are still consistent.
fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ledger {
    pub fn new(limits: HoldLimits) -> Self {
        Self {
            limits,
            book: Arc::new(Mutex::new(Book::default())),
        }
    }

    pub fn limits(&self) -> &HoldLimits {
        &self.limits
    }

    /// Checks every cap for one more held request of `bytes` and, if none is passed, reserves it
    /// for approval `id`, in the same critical section.
    pub fn reserve(&self, id: &str, tenant: &str, subject: &str, bytes: u64) -> Result<Slot, Cap> {
        let l = &self.limits;
        let mut book = lock(&self.book);
        let principal = (tenant.to_owned(), subject.to_owned());
        let p = book.principals.get(&principal).copied().unwrap_or_default();
        let t = book.tenants.get(tenant).copied().unwrap_or_default();
        let all = book.total;
        let over = |u: Usage, count: usize, max_bytes: u64| {
            (
                u.count + 1 > count,
                u.bytes.saturating_add(bytes) > max_bytes,
            )
        };
        let checks = [
            (
                over(p, l.max_per_principal, l.max_bytes_per_principal),
                Cap::PrincipalCount,
                Cap::PrincipalBytes,
            ),
            (
                over(t, l.max_per_tenant, l.max_bytes_per_tenant),
                Cap::TenantCount,
                Cap::TenantBytes,
            ),
            (
                over(all, l.max_total, l.max_total_bytes),
                Cap::TotalCount,
                Cap::TotalBytes,
            ),
        ];
        for ((count_over, bytes_over), count_cap, bytes_cap) in checks {
            if count_over {
                return Err(count_cap);
            }
            if bytes_over {
                return Err(bytes_cap);
            }
        }
        book.principals
            .entry(principal.clone())
            .or_default()
            .add(bytes);
        book.tenants
            .entry(tenant.to_owned())
            .or_default()
            .add(bytes);
        book.total.add(bytes);
        book.by_id.insert(
            id.to_owned(),
            Reservation {
                principal,
                tenant: tenant.to_owned(),
                bytes,
            },
        );
        Ok(Slot {
            id: id.to_owned(),
            book: Some(self.book.clone()),
        })
    }

    /// Gives back the reservation of approval `id` (none: nothing happens).
    pub fn release(&self, id: &str) {
        lock(&self.book).release(id);
    }

    /// Releases every reservation whose id `parked` no longer holds.
    pub fn retain(&self, parked: impl Fn(&str) -> bool) {
        let mut book = lock(&self.book);
        let gone: Vec<String> = book
            .by_id
            .keys()
            .filter(|id| !parked(id))
            .cloned()
            .collect();
        for id in gone {
            book.release(&id);
        }
    }

    /// Pending held requests and their bytes for one principal.
    #[cfg(test)]
    pub fn usage(&self, tenant: &str, subject: &str) -> (usize, u64) {
        let book = lock(&self.book);
        book.principals
            .get(&(tenant.to_owned(), subject.to_owned()))
            .map_or((0, 0), |u| (u.count, u.bytes))
    }
}

/// Refuses a request over a hold cap: one audit event (the denial and the cap, no content),
/// then 429 `approval_hold_limit` naming the cap.
pub async fn refuse(state: &AppState, caller: &Caller, cap: Cap) -> ActionError {
    let limits = state.approvals.holds.limits();
    let message = format!(
        "this request needs an approval, but it cannot be held: {}; wait for pending approvals to be decided or expire",
        cap.describe(limits)
    );
    let event = audit::event(
        EventType::ApprovalRequest,
        Outcome::Denied,
        audit::audit_principal(&caller.principal),
        caller.request_id.as_str(),
        caller.origin_ip,
        None,
    )
    .with_decision(ztee_audit::DecisionRecord {
        decision: ztee_audit::DecisionKind::Deny,
        risk: String::new(),
        rule_ids: vec!["approval_hold_limit".to_owned(), cap.rule().to_owned()],
        reasons: vec![cap.describe(limits)],
    });
    if let Err(e) = state.pipeline.record(event).await {
        return e;
    }
    let mut err = ActionError::new(
        crate::error::ErrorKind::RateLimited,
        "approval_hold_limit",
        message,
    );
    err.retry_after_s = Some(60);
    err
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn small() -> HoldLimits {
        HoldLimits {
            max_per_principal: 2,
            max_bytes_per_principal: 1000,
            max_per_tenant: 3,
            max_bytes_per_tenant: 10_000,
            max_total: 4,
            max_total_bytes: 100_000,
        }
    }

    #[test]
    fn caps_count_per_principal_tenant_and_total() {
        let l = Ledger::new(small());
        l.reserve("1", "t", "a", 10).unwrap().keep();
        l.reserve("2", "t", "a", 10).unwrap().keep();
        assert_eq!(
            l.reserve("3", "t", "a", 10).err(),
            Some(Cap::PrincipalCount)
        );
        l.reserve("3", "t", "b", 10).unwrap().keep();
        assert_eq!(l.reserve("4", "t", "c", 10).err(), Some(Cap::TenantCount));
        l.reserve("4", "u", "c", 10).unwrap().keep();
        assert_eq!(l.reserve("5", "v", "d", 10).err(), Some(Cap::TotalCount));
        l.release("1");
        l.reserve("5", "t", "a", 10).unwrap().keep();
        assert_eq!(l.usage("t", "a"), (2, 20));
    }

    #[test]
    fn caps_bytes_and_a_dropped_slot_gives_its_bytes_back() {
        let l = Ledger::new(small());
        let slot = l.reserve("1", "t", "a", 900).unwrap();
        assert_eq!(
            l.reserve("2", "t", "a", 101).err(),
            Some(Cap::PrincipalBytes)
        );
        drop(slot);
        assert_eq!(l.usage("t", "a"), (0, 0));
        l.reserve("2", "t", "a", 1000).unwrap().keep();
        l.retain(|id| id != "2");
        assert_eq!(l.usage("t", "a"), (0, 0));
    }

    #[test]
    fn concurrent_reservations_never_pass_a_cap() {
        let l = Arc::new(Ledger::new(HoldLimits {
            max_per_principal: 5,
            ..small()
        }));
        let granted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..64 {
                let (l, granted) = (l.clone(), &granted);
                s.spawn(move || {
                    if let Ok(slot) = l.reserve(&i.to_string(), "t", "a", 1) {
                        slot.keep();
                        granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        // The tenant cap (3) is the tighter one here.
        assert_eq!(granted.into_inner(), 3);
        assert_eq!(l.usage("t", "a").0, 3);
    }
}
