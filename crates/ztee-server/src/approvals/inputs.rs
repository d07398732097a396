//! What a held sandbox command runs on, bound to its approval (review finding 13).
//!
//! A command held in an existing sandbox names files there (`sh run.sh`, `python3 /work/x.py`,
//! `/home/user/job`). Approving the command text alone would let the files change between the
//! hold and the run, so:
//! - at the hold, every argv element that names a path (absolute, or relative to the command's
//!   working directory) is read through the engine; each regular file is recorded by keyed digest and
//!   size (at most [`MAX_INPUTS`] files of at most [`MAX_INPUT_BYTES`] each, else the hold is
//!   refused), and what was not a file (absent, a directory) is remembered as such;
//! - while the approval is pending, the sandbox accepts no other command, upload or hold
//!   (409 `sandbox_held`), so the gateway itself cannot be used to swap a file;
//! - right before the approved command starts, every path is read again; any difference (other
//!   content, a file gone, a file appeared) refuses the run with `inputs_changed`.
//!
//! What this does not bind: a file the command reads that argv does not name (a module it
//! imports, a program found through `PATH`, paths inside `sh -c` text), and a change a guest
//! process makes between the second read and the command's start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use ztee_audit::ContentKey;
use ztee_audit::Outcome;

use super::Approvals;
use crate::action::{Action, HeldAction};
use crate::audit::caller_text;
use crate::dlp::DlpEngine;
use crate::error::ActionError;
use crate::exec::{ExecError, SandboxHandle};
use crate::pipeline::ActionContext;
use crate::state::AppState;

/// Most files one held command may be bound to.
pub const MAX_INPUTS: usize = 16;
/// Largest file a held command may be bound to.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;
/// Most distinct paths argv may name: each is one read through the guest agent, so a long argv
/// of words that are not files must not turn a hold into thousands of reads.
pub const MAX_CANDIDATES: usize = 64;
/// One read that takes longer refuses the hold (or the run): a FIFO named in argv blocks the
/// guest's open until a writer comes.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Where the guest agent runs a command without `cwd` (`HOME` of the sandbox user in
/// ztee-agent), so where its relative paths start.
pub const GUEST_HOME: &str = "/home/user";

/// A bound file as approvers see it: the path masked like any caller text, the content's
/// keyed digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: String,
    /// `hmac-sha256:<hex>` under the node's content key (the key of the audit trail's digests):
    /// a plain hash of a file holding only a card number could be reversed by trying every
    /// number, and these digests go to webhooks and approvers' screens.
    pub digest: String,
    pub size: u64,
}

/// What a path was when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Seen {
    File {
        digest: String,
        size: u64,
    },
    /// No such file.
    Absent,
    /// There, but not a readable regular file (a directory, a device, no permission).
    NotAFile,
}

impl Seen {
    fn describe(&self) -> String {
        match self {
            Seen::File { digest, .. } => digest.clone(),
            Seen::Absent => "absent".to_owned(),
            Seen::NotAFile => "not a readable regular file".to_owned(),
        }
    }
}

/// One path a held command names, as it was at the hold. The path is unmasked: it stays in
/// memory or sealed with the held request ([`super::sealed`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bound {
    path: String,
    seen: Seen,
}

/// The guest paths `argv` names, resolved against `cwd` (the agent's home without one), in
/// order, without repeats. The program (`argv[0]`) counts only when it is a path (has a `/`):
/// a bare name is looked up in `PATH`, not in the working directory. Options (`-x`, `--x=y`)
/// are not paths.
pub fn candidates(argv: &[String], cwd: Option<&str>) -> Vec<String> {
    let base = cwd.unwrap_or(GUEST_HOME).trim_end_matches('/');
    let mut out: Vec<String> = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if arg.is_empty()
            || arg.starts_with('-')
            || arg.contains('\0')
            || arg.len() > 4096
            || (i == 0 && !arg.contains('/'))
        {
            continue;
        }
        let path = if arg.starts_with('/') {
            arg.clone()
        } else {
            format!("{base}/{arg}")
        };
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

fn unbindable(message: String) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Unprocessable,
        "inputs_unbindable",
        message,
    )
}

fn too_large(dlp: &dyn DlpEngine, path: &str) -> ActionError {
    unbindable(format!(
        "{} is larger than {} MiB, the most a held command can be bound to; an approval binds \
         the files a held command names by digest (send the work as a one-shot run instead)",
        caller_text(dlp, path),
        MAX_INPUT_BYTES / (1024 * 1024)
    ))
}

/// Reads `path` in the sandbox. `Err` when it cannot be known what it is (the engine failed, the
/// read timed out) or it is too large to bind.
async fn read(
    dlp: &dyn DlpEngine,
    key: &ContentKey,
    handle: &dyn SandboxHandle,
    path: &str,
) -> Result<Seen, ActionError> {
    let read = tokio::time::timeout(READ_TIMEOUT, handle.read_file(path)).await;
    match read {
        Ok(Ok(content)) if content.len() > MAX_INPUT_BYTES => Err(too_large(dlp, path)),
        Ok(Ok(content)) => Ok(Seen::File {
            digest: format!("hmac-sha256:{}", hex::encode(key.digest(&content))),
            size: content.len() as u64,
        }),
        Ok(Err(ExecError::NotFound(_))) => Ok(Seen::Absent),
        // The agent's answers for a directory or device ("not a regular file") and for a file
        // the sandbox user may not read. Anything else (the engine's transfer limit, an I/O
        // error) leaves the content unknown, so nothing is bound and the hold is refused.
        Ok(Err(ExecError::Guest(message)))
            if message.contains("not a regular file")
                || message.contains("Permission denied")
                || message.contains("permission denied") =>
        {
            Ok(Seen::NotAFile)
        }
        Ok(Err(ExecError::Guest(message))) if message.contains("limit") => {
            Err(too_large(dlp, path))
        }
        Ok(Err(e)) => Err(unbindable(format!(
            "{} could not be read in the sandbox to bind it to the approval: {}",
            caller_text(dlp, path),
            caller_text(dlp, &e.to_string())
        ))),
        Err(_) => Err(unbindable(format!(
            "reading {} in the sandbox to bind it to the approval took longer than {} s",
            caller_text(dlp, path),
            READ_TIMEOUT.as_secs()
        ))),
    }
}

/// Reads every path `argv` names (see [`candidates`]) for a command about to be held.
pub async fn bind(
    dlp: &dyn DlpEngine,
    key: &ContentKey,
    handle: &dyn SandboxHandle,
    argv: &[String],
    cwd: Option<&str>,
) -> Result<Vec<Bound>, ActionError> {
    let paths = candidates(argv, cwd);
    if paths.len() > MAX_CANDIDATES {
        return Err(unbindable(format!(
            "the command names {} possible paths; a held command is bound to what its argv \
             names and at most {MAX_CANDIDATES} are read (send the work as a one-shot run)",
            paths.len()
        )));
    }
    let mut bound = Vec::with_capacity(paths.len());
    let mut files = 0;
    for path in paths {
        let seen = read(dlp, key, handle, &path).await?;
        if matches!(seen, Seen::File { .. }) {
            files += 1;
            if files > MAX_INPUTS {
                return Err(unbindable(format!(
                    "the command names more than {MAX_INPUTS} files; a held command can be \
                     bound to at most {MAX_INPUTS} (send the work as a one-shot run)"
                )));
            }
        }
        bound.push(Bound { path, seen });
    }
    Ok(bound)
}

/// Audits a hold refused because its files cannot be bound (the action's event already says
/// it was held) and returns the refusal.
pub async fn refuse_unbindable(
    state: &AppState,
    ctx: &ActionContext<'_>,
    refusal: ActionError,
) -> ActionError {
    let event =
        state
            .pipeline
            .event(ctx, Outcome::Denied)
            .with_decision(ztee_audit::DecisionRecord {
                decision: ztee_audit::DecisionKind::Deny,
                risk: "HIGH".into(),
                rule_ids: vec!["approval.inputs_unbindable".into()],
                reasons: vec![refusal.message.clone()],
            });
    match state.pipeline.record(event).await {
        Ok(()) => refusal,
        Err(e) => e,
    }
}

/// The bound files as the approval record shows them.
pub fn shown(dlp: &dyn DlpEngine, bound: &[Bound]) -> Vec<InputRecord> {
    bound
        .iter()
        .filter_map(|b| match &b.seen {
            Seen::File { digest, size } => Some(InputRecord {
                path: caller_text(dlp, &b.path),
                digest: digest.clone(),
                size: *size,
            }),
            _ => None,
        })
        .collect()
}

/// The files of a held request, as its approval record shows them.
pub fn of_request(dlp: &dyn DlpEngine, held: &HeldAction) -> Vec<InputRecord> {
    shown(dlp, &held.bound)
}

/// Reads every bound path again right before the approved command starts. On any difference
/// the run is refused (409 `inputs_changed`) and the refusal audited with the path masked and
/// both states (digests of content).
pub async fn check_before_run(
    state: &AppState,
    ctx: &ActionContext<'_>,
    handle: &dyn SandboxHandle,
    approval: &str,
    bound: &[Bound],
) -> Result<(), ActionError> {
    let dlp = state.pipeline.dlp.as_ref();
    for b in bound {
        let now = match read(dlp, &state.pipeline.content_key, handle, &b.path).await {
            Ok(now) => now.describe(),
            Err(e) => format!("unreadable ({})", e.message),
        };
        if now == b.seen.describe() {
            continue;
        }
        let path = caller_text(dlp, &b.path);
        let reason = format!(
            "inputs_changed: {path} changed after approval {approval} was requested ({} then, \
             {now} now); the approved command was not run",
            b.seen.describe()
        );
        let event =
            state
                .pipeline
                .event(ctx, Outcome::Denied)
                .with_decision(ztee_audit::DecisionRecord {
                    decision: ztee_audit::DecisionKind::Deny,
                    risk: "HIGH".into(),
                    rule_ids: vec!["approval.inputs_changed".into()],
                    reasons: vec![reason.clone()],
                });
        state.pipeline.record(event).await?;
        return Err(ActionError::new(
            crate::error::ErrorKind::Conflict,
            "inputs_changed",
            reason,
        ));
    }
    Ok(())
}

/// The pending approval holding `sandbox`, if any.
pub fn held_on(approvals: &Approvals, sandbox: &str) -> Option<String> {
    let parked = approvals.parked.lock().ok()?;
    parked.iter().find_map(|(id, p)| match &p.held.action {
        Action::Exec { sandbox: s, .. } if s == sandbox => Some(id.clone()),
        _ => None,
    })
}

/// The 409 for using a sandbox that a pending approval holds.
pub fn sandbox_held(sandbox: &str, approval: &str) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Conflict,
        "sandbox_held",
        format!(
            "sandbox {sandbox} is held by approval {approval}: while a command waits for its \
             approval the sandbox accepts no other command, upload or held request (delete the \
             sandbox to end the approval)"
        ),
    )
}

/// Refuses a command, upload or hold in a sandbox a pending approval holds.
pub fn ensure_not_held(state: &AppState, sandbox: &str) -> Result<(), ActionError> {
    match held_on(&state.approvals, sandbox) {
        Some(approval) => Err(sandbox_held(sandbox, &approval)),
        None => Ok(()),
    }
}

/// Expires the approval holding a sandbox being deleted: its command can never run.
pub async fn expire_on_delete(state: &std::sync::Arc<AppState>, sandbox: &str) {
    let approvals = &state.approvals;
    while let Some(id) = held_on(approvals, sandbox) {
        approvals.forget(&id);
        let Ok(read) = approvals.load_versioned(&id).await else {
            continue;
        };
        if read.record.status != super::Status::Pending {
            continue;
        }
        let mut record = read.record.clone();
        record.status = super::Status::Expired;
        record.status_reason = Some(format!(
            "sandbox {sandbox} was deleted while the command waited; it was not run"
        ));
        match approvals.replace(&read, &record).await {
            Ok(true) => {
                super::record_expiry(state, &id).await;
                super::notify(state, &record, "approval.expired");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(approval = %id, error = %e.message, "expiring a held command")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_paths_resolve_against_the_working_directory() {
        assert_eq!(
            candidates(&argv(&["python3", "/work/x.py", "data.csv"]), Some("/work")),
            ["/work/x.py", "/work/data.csv"]
        );
        assert_eq!(
            candidates(&argv(&["sh", "run.sh", "-e", "--opt=/x", "run.sh"]), None),
            ["/home/user/run.sh"]
        );
        assert_eq!(
            candidates(&argv(&["./job", "a"]), Some("/")),
            ["/./job", "/a"]
        );
        assert_eq!(
            candidates(&argv(&["/home/user/job.sh"]), None),
            ["/home/user/job.sh"]
        );
    }
}
