//! The trace of a principal's tool session through the MCP guard, for policy rules over
//! sequences (`input.trace`).
//!
//! An MCP call carries no history, unlike a chat request, so the guard keeps it: every call it
//! let through and every result it relayed, reduced to facts (the tool, the entities DLP found,
//! the injection score; never text). It is kept per principal across every upstream, not per
//! MCP session: the attack it answers reads from one server (a web page) and sends through
//! another (e-mail), and a new session must not wash a taint away. Steps older than
//! [`STEP_TTL`] are dropped, at most [`TRACE_WINDOW`] are kept per principal, and at most
//! [`MAX_PRINCIPALS`] principals are tracked (the least recently active is forgotten first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ztee_policy::{TraceStep, TRACE_WINDOW};

use crate::principal::Principal;

/// How long a step counts.
pub const STEP_TTL: Duration = Duration::from_secs(30 * 60);

/// Principals tracked at once.
pub const MAX_PRINCIPALS: usize = 10_000;

type Key = (String, String);

#[derive(Default)]
pub struct ToolTraces {
    inner: Mutex<HashMap<Key, Steps>>,
}

struct Steps {
    last: Instant,
    steps: VecDeque<(Instant, TraceStep)>,
}

fn key(principal: &Principal) -> Key {
    (principal.tenant.clone(), principal.subject.clone())
}

impl ToolTraces {
    /// The principal's recent steps, oldest first.
    pub fn steps(&self, principal: &Principal) -> Vec<TraceStep> {
        let now = Instant::now();
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key(principal))
            .map(|s| {
                s.steps
                    .iter()
                    .filter(|(at, _)| now.duration_since(*at) < STEP_TTL)
                    .map(|(_, step)| step.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Appends `step` to the principal's trace.
    pub fn push(&self, principal: &Principal, step: TraceStep) {
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(principal);
        if !map.contains_key(&k) && map.len() >= MAX_PRINCIPALS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(k).or_insert_with(|| Steps {
            last: now,
            steps: VecDeque::new(),
        });
        entry.last = now;
        while entry
            .steps
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= STEP_TTL)
            || entry.steps.len() >= TRACE_WINDOW
        {
            entry.steps.pop_front();
        }
        entry.steps.push_back((now, step));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::principal::AuthMethod;
    use ztee_policy::TraceKind;

    fn caller(subject: &str) -> Principal {
        Principal::new(
            subject.into(),
            "acme".into(),
            vec!["agent".into()],
            AuthMethod::ApiKey,
        )
    }

    fn step(tool: &str) -> TraceStep {
        TraceStep {
            kind: TraceKind::ToolResult,
            tool: tool.into(),
            dlp: Default::default(),
            injection: Default::default(),
        }
    }

    #[test]
    fn each_principal_has_its_own_bounded_trace() {
        let traces = ToolTraces::default();
        let (a, b) = (caller("apikey:a"), caller("apikey:b"));
        for i in 0..(TRACE_WINDOW + 3) {
            traces.push(&a, step(&format!("t{i}")));
        }
        traces.push(&b, step("fetch_page"));
        let steps = traces.steps(&a);
        assert_eq!(steps.len(), TRACE_WINDOW);
        assert_eq!(steps[0].tool, "t3");
        assert_eq!(traces.steps(&b).len(), 1);
        assert!(traces.steps(&caller("apikey:c")).is_empty());
    }
}
