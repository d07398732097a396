//! ztee's guardrails: a Rego policy (evaluated with `regorus`) decides allow / deny /
//! require_approval with reasons and a risk level for every sandbox, LLM and tool action, and a
//! prompt-injection detector scores the text those actions carry.
//!
//! ```
//! use ztee_policy::{Action, PolicyEngine, PolicyInput, PolicyPrincipal, PolicyRequest, Verdict};
//!
//! let engine = PolicyEngine::builtin()?; // compile once, share everywhere
//! let input = PolicyInput {
//!     principal: PolicyPrincipal {
//!         subject: "agent-7".into(),
//!         tenant: "acme".into(),
//!         roles: vec!["sandbox:run".into()],
//!         tier: "standard".into(),
//!     },
//!     action: Action::Run,
//!     request: PolicyRequest { code: Some("print(1 + 1)".into()), ..Default::default() },
//!     dlp: Default::default(),
//!     injection: Default::default(),
//!     trace: Vec::new(),
//! };
//! let decision = engine.evaluate(&input);
//! assert_eq!(decision.verdict, Verdict::Allow);
//! # Ok::<(), ztee_policy::PolicyError>(())
//! ```

mod bundle;
mod decision;
mod engine;
mod error;
pub mod injection;
mod input;
mod testing;

pub use bundle::{Bundle, BundleSource, PolicyFile};
pub use decision::{Decision, Reason, Risk, Verdict, POLICY_ERROR_RULE};
pub use engine::{PolicyEngine, ENTRY_POINT};
pub use error::PolicyError;
pub use input::{
    Action, Attachment, DlpSummary, EgressTarget, InjectionSummary, Message, PolicyInput,
    PolicyPrincipal, PolicyRequest, Provider, ToolCall, TraceKind, TraceStep, TRACE_WINDOW,
};
pub use testing::{run_tests, TestResult, TestStatus};
