//! The gateway's pipeline for an operator at a terminal.
//!
//! `ztee run` goes through the same stages as `POST /v1/run`: inbound DLP and the policy
//! decision (the data directory's bundle, as `ztee serve` would load it), the image's admission,
//! outbound DLP over the command's output, and one audit record in the node's trail. The trail
//! has one writer: while a gateway holds it, the record is queued in the state database and
//! the gateway moves it in within seconds (as for `ztee apikey`); otherwise it is written at once.
//! A request the policy holds for approval is refused here: approvals are decided through a
//! gateway, where an approver can see them.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use ztee_audit::{AuditEvent, EventType, Outcome};
use ztee_server::audit::AuditSink;
use ztee_server::pipeline::{ActionContext, Admitted, Pipeline, Work};
use ztee_server::Principal;
use ztee_server::{ActionError, Caller};
use ztee_state::store::Store;

use crate::globals::GlobalArgs;

/// The exit code of a request the policy denied or would hold for approval.
pub const EXIT_POLICY: u8 = 4;

/// The action core, set up for this host's data directory, and the operator who acts.
pub struct LocalCore {
    pub state: Arc<ztee_server::AppState>,
    pub caller: Caller,
}

/// Why the core did not let a request through: the message for the operator and the exit code.
pub struct Refusal {
    pub message: String,
    pub exit_code: u8,
}

impl Refusal {
    /// Tells the operator on stderr; the exit code to end with.
    pub fn report(self) -> u8 {
        eprintln!("error: {}", self.message);
        self.exit_code
    }
}

impl From<ActionError> for Refusal {
    /// The exit code says who refused: the image's admission policy (3), the policy bundle or
    /// DLP (4), anything else (1).
    fn from(e: ActionError) -> Self {
        let exit_code = match e.code {
            "image_refused" => crate::vm::EXIT_REFUSED,
            "policy_denied" | "approval_required" | "dlp_blocked" => EXIT_POLICY,
            _ => 1,
        };
        Self {
            message: e.message,
            exit_code,
        }
    }
}

impl LocalCore {
    /// Loads the configuration (`ZTEE_CONFIG`, as `ztee serve` does), the policy bundle of the
    /// data directory and the node's keys. `executor` is the VM engine commands run on;
    /// `secrets` the broker for the secrets a command asks for; `observe` also sees every
    /// record written (masked), after the trail has it.
    pub fn open(
        globals: &GlobalArgs,
        executor: Arc<dyn ztee_server::exec::Executor>,
        secrets: Option<Arc<ztee_secrets::SecretBroker>>,
        observe: Option<Arc<dyn AuditSink>>,
    ) -> anyhow::Result<Self> {
        let data_dir = &globals.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let config_file = std::env::var_os("ZTEE_CONFIG")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from);
        let config = ztee_server::ServerConfig::load(config_file.as_deref())?;
        let bundle = ztee_policy::Bundle::resolve(None, data_dir)?;
        let policy = ztee_server::RegoPolicy::new(
            ztee_policy::PolicyEngine::compile(&bundle)?,
            config.dlp.inbound,
        )
        .with_tenant_tiers(config.llm.tenant_tiers());
        let dlp: Arc<dyn ztee_server::DlpEngine> = Arc::new(
            ztee_server::ZteeDlp::new(Default::default()).context("starting the DLP engine")?,
        );
        let store = Store::open(&ztee_state::state_db_path(data_dir))?;
        let trail: Arc<dyn AuditSink> = Arc::new(NodeTrail {
            store,
            data_dir: data_dir.clone(),
            observe,
        });
        let state = ztee_server::build_local(
            config,
            data_dir,
            ztee_server::LocalEngines {
                executor,
                dlp,
                policy: Arc::new(policy),
                audit: trail,
                secrets,
            },
        )?;
        Ok(Self {
            state,
            caller: Caller::local(Principal::local_operator(&operator_name())),
        })
    }

    /// The stages every action passes, for the commands that drive them one by one.
    pub fn pipeline(&self) -> &Pipeline {
        &self.state.pipeline
    }

    /// Inbound DLP and the policy decision for `ctx`'s action over `work`; a denial, or a
    /// decision that needs an approver nobody here can be, is recorded and refused.
    pub async fn admit(
        &self,
        ctx: &mut ActionContext<'_>,
        work: Work,
    ) -> Result<Admitted, Refusal> {
        Ok(self.pipeline().admit(ctx, work).await?)
    }

    /// The policy decision for the egress `allowlist` the operator asked for (action `egress`,
    /// recorded as an `egress` event); nothing when it is empty.
    pub async fn authorize_egress(
        &self,
        ctx: &ActionContext<'_>,
        allowlist: &ztee_egress::Allowlist,
    ) -> Result<(), Refusal> {
        if allowlist.is_empty() {
            return Ok(());
        }
        match ztee_server::authorize_egress(self.pipeline(), ctx, allowlist, false).await? {
            ztee_server::EgressGate::Allowed => Ok(()),
            // A pipeline that refuses holds never returns one.
            ztee_server::EgressGate::Held(decision) => {
                Err(ztee_server::pipeline::approval_unavailable(&decision).into())
            }
        }
    }

    /// Appends `event` to the node's trail.
    pub async fn record(&self, event: AuditEvent) -> anyhow::Result<()> {
        self.pipeline()
            .record(event)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// The record of an admitted action that ran: success or failure, the decision that let it
    /// through, and the digest of what was sent in.
    pub fn ran(&self, ctx: &ActionContext<'_>, admitted: &Admitted, succeeded: bool) -> AuditEvent {
        let outcome = if succeeded {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.event(ctx, outcome)
            .with_decision(ztee_server::audit::decision_record(&admitted.decision))
            .with_code(&admitted.input_digest)
    }

    /// The audit event of `ctx` with `outcome`.
    pub fn event(&self, ctx: &ActionContext<'_>, outcome: Outcome) -> AuditEvent {
        self.pipeline().event(ctx, outcome)
    }

    /// The action context for `action`, recorded as `event_type` on `resource`.
    pub fn context(
        &self,
        action: &'static str,
        event_type: EventType,
        resource: String,
    ) -> ActionContext<'_> {
        ActionContext {
            caller: &self.caller,
            event_type,
            resource: Some(resource),
            policy: ztee_server::policy_input(&self.caller, action),
            approval: None,
        }
    }
}

/// The executor of a door whose VM is held elsewhere: `ztee sandbox` commands reach their VM
/// through the sandbox's supervisor process, so the pipeline's own executor is never asked to
/// boot anything there, and refuses if it is.
pub struct HeldBySupervisor;

#[async_trait]
impl ztee_server::exec::Executor for HeldBySupervisor {
    async fn admit(
        &self,
        image: &str,
    ) -> Result<ztee_server::exec::AdmittedImage, ztee_server::exec::ExecError> {
        Err(ztee_server::exec::ExecError::Engine(format!(
            "image {image}: a sandbox's image is admitted by its supervisor"
        )))
    }

    async fn create(
        &self,
        _: ztee_server::exec::CreateSpec,
    ) -> Result<Box<dyn ztee_server::exec::SandboxHandle>, ztee_server::exec::ExecError> {
        Err(ztee_server::exec::ExecError::Engine(
            "a sandbox is booted by its supervisor (ztee sandbox create)".into(),
        ))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "supervisor"})
    }
}

/// The node's audit trail as a command-line process reaches it: queued in the state database,
/// moved into the log at once unless a gateway holds it.
struct NodeTrail {
    store: Store,
    data_dir: std::path::PathBuf,
    observe: Option<Arc<dyn AuditSink>>,
}

#[async_trait]
impl AuditSink for NodeTrail {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        let store = self.store.clone();
        let data_dir = self.data_dir.clone();
        let observed = self.observe.as_ref().map(|_| event.clone());
        tokio::task::spawn_blocking(move || {
            ztee_server::record_from_cli(&store, &data_dir, &event)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if let (Some(observe), Some(event)) = (&self.observe, observed) {
            observe.append(event).await?;
        }
        Ok(())
    }
}

/// The operator's account name, from the process's real uid (not from `$USER`, which anyone
/// can set); the uid itself when the account has no name.
pub fn operator_name() -> String {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 4096];
    // SAFETY: a zeroed `passwd` is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `result` are locals, `buf` is
    // writable for its full length; the strings it fills point into `buf`, read below while
    // `buf` lives.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        if let Ok(name) = name.to_str() {
            if !name.is_empty() {
                return name.to_owned();
            }
        }
    }
    format!("uid{uid}")
}
