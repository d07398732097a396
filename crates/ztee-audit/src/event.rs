//! The typed audit event. Every field PCI DSS 10.2.2 asks for is a required, typed value, so an
//! event without a principal, an event type or an outcome cannot be built; content (code, command
//! output, prompts) is only ever recorded as a SHA-256 digest, never as text that could carry card
//! data.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::AuditError;

/// What happened. Serialized as a dotted name (`sandbox.exec`), which is what `ztee audit search`
/// and the JSON output show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A caller authenticated (OIDC token or API key accepted).
    #[serde(rename = "auth.login")]
    AuthLogin,
    /// Authentication was attempted and failed (bad, expired or unknown credential).
    #[serde(rename = "auth.failure")]
    AuthFailure,
    /// A caller was authenticated but lacked the role for the action.
    #[serde(rename = "authz.denied")]
    AuthzDenied,
    #[serde(rename = "sandbox.create")]
    SandboxCreate,
    #[serde(rename = "sandbox.exec")]
    SandboxExec,
    #[serde(rename = "sandbox.close")]
    SandboxClose,
    /// Input written to a running process's stdin.
    #[serde(rename = "sandbox.input")]
    SandboxInput,
    /// A signal sent to a running process.
    #[serde(rename = "sandbox.signal")]
    SandboxSignal,
    /// A sandbox's remaining life was changed.
    #[serde(rename = "sandbox.timeout")]
    SandboxTimeout,
    /// A one-shot `run` (create, execute, destroy).
    #[serde(rename = "run")]
    Run,
    #[serde(rename = "file.read")]
    FileRead,
    #[serde(rename = "file.write")]
    FileWrite,
    /// A policy decision on its own (the decision is also attached to the event it governs).
    #[serde(rename = "policy.decision")]
    PolicyDecision,
    /// The policy bundle was loaded or replaced.
    #[serde(rename = "policy.change")]
    PolicyChange,
    #[serde(rename = "approval.request")]
    ApprovalRequest,
    #[serde(rename = "approval.grant")]
    ApprovalGrant,
    #[serde(rename = "approval.reject")]
    ApprovalReject,
    #[serde(rename = "llm.chat")]
    LlmChat,
    #[serde(rename = "tool.call")]
    ToolCall,
    /// A tool server's list of tools was examined: poisoned definitions withheld, a new or
    /// changed set held for approval.
    #[serde(rename = "tool.list")]
    ToolList,
    /// A tool server's tool definitions were pinned (approved, or trusted on first use).
    #[serde(rename = "tool.pin")]
    ToolPin,
    #[serde(rename = "image.admit")]
    ImageAdmit,
    #[serde(rename = "egress")]
    Egress,
    #[serde(rename = "secret.use")]
    SecretUse,
    /// A secret was stored, replaced or removed in the built-in store.
    #[serde(rename = "secret.change")]
    SecretChange,
    #[serde(rename = "apikey.create")]
    ApiKeyCreate,
    #[serde(rename = "apikey.revoke")]
    ApiKeyRevoke,
    /// Someone read, searched, exported or verified the audit trail (PCI DSS 10.2.1.3).
    #[serde(rename = "audit.access")]
    AuditAccess,
    #[serde(rename = "service.start")]
    ServiceStart,
    #[serde(rename = "service.stop")]
    ServiceStop,
}

impl EventType {
    pub const ALL: [EventType; 30] = [
        EventType::AuthLogin,
        EventType::AuthFailure,
        EventType::AuthzDenied,
        EventType::SandboxCreate,
        EventType::SandboxExec,
        EventType::SandboxClose,
        EventType::SandboxInput,
        EventType::SandboxSignal,
        EventType::SandboxTimeout,
        EventType::Run,
        EventType::FileRead,
        EventType::FileWrite,
        EventType::PolicyDecision,
        EventType::PolicyChange,
        EventType::ApprovalRequest,
        EventType::ApprovalGrant,
        EventType::ApprovalReject,
        EventType::LlmChat,
        EventType::ToolCall,
        EventType::ToolList,
        EventType::ToolPin,
        EventType::ImageAdmit,
        EventType::Egress,
        EventType::SecretUse,
        EventType::SecretChange,
        EventType::ApiKeyCreate,
        EventType::ApiKeyRevoke,
        EventType::AuditAccess,
        EventType::ServiceStart,
        EventType::ServiceStop,
    ];

    /// The dotted name used on disk and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthLogin => "auth.login",
            EventType::AuthFailure => "auth.failure",
            EventType::AuthzDenied => "authz.denied",
            EventType::SandboxCreate => "sandbox.create",
            EventType::SandboxExec => "sandbox.exec",
            EventType::SandboxClose => "sandbox.close",
            EventType::SandboxInput => "sandbox.input",
            EventType::SandboxSignal => "sandbox.signal",
            EventType::SandboxTimeout => "sandbox.timeout",
            EventType::Run => "run",
            EventType::FileRead => "file.read",
            EventType::FileWrite => "file.write",
            EventType::PolicyDecision => "policy.decision",
            EventType::PolicyChange => "policy.change",
            EventType::ApprovalRequest => "approval.request",
            EventType::ApprovalGrant => "approval.grant",
            EventType::ApprovalReject => "approval.reject",
            EventType::LlmChat => "llm.chat",
            EventType::ToolCall => "tool.call",
            EventType::ToolList => "tool.list",
            EventType::ToolPin => "tool.pin",
            EventType::ImageAdmit => "image.admit",
            EventType::Egress => "egress",
            EventType::SecretUse => "secret.use",
            EventType::SecretChange => "secret.change",
            EventType::ApiKeyCreate => "apikey.create",
            EventType::ApiKeyRevoke => "apikey.revoke",
            EventType::AuditAccess => "audit.access",
            EventType::ServiceStart => "service.start",
            EventType::ServiceStop => "service.stop",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| AuditError::InvalidValue {
                field: "event type",
                value: s.to_string(),
                expected:
                    "one of auth.login, sandbox.exec, run, audit.access, ... (see docs/audit.md)",
            })
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// The action was attempted and failed (error, timeout, crash).
    Failure,
    /// Authentication, authorization or policy refused the action.
    Denied,
    /// Policy routed the action to a human approver; it has not run.
    PendingApproval,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
            Outcome::PendingApproval => "pending_approval",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of identity acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person or agent authenticated with an OIDC token.
    User,
    /// A service account authenticated with an API key.
    ServiceAccount,
    /// ztee itself (start-up, shutdown, checkpoints, background work).
    System,
    /// Authentication failed, so nobody is known; `subject` holds what was claimed, if anything.
    Anonymous,
}

/// Who acted, and on behalf of which tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The stable identifier: the token's `sub` claim or the API key's id (never the key itself).
    pub subject: String,
    pub tenant: String,
}

impl Principal {
    /// A principal; `subject` and `tenant` must be non-empty and free of control characters, so
    /// a log line cannot be forged with an embedded newline or an empty identity.
    pub fn new(
        kind: PrincipalKind,
        subject: impl Into<String>,
        tenant: impl Into<String>,
    ) -> Result<Self, AuditError> {
        let subject = checked_text("principal subject", subject.into())?;
        let tenant = checked_text("principal tenant", tenant.into())?;
        Ok(Principal {
            kind,
            subject,
            tenant,
        })
    }

    /// ztee itself, for events no caller caused.
    pub fn system() -> Self {
        Principal {
            kind: PrincipalKind::System,
            subject: "ztee".to_string(),
            tenant: "system".to_string(),
        }
    }
}

/// A SHA-256 digest of content that must not be stored (code, command output, prompts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(content: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(content).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let hex_part = text
            .strip_prefix("sha256:")
            .ok_or_else(|| serde::de::Error::custom("digest must start with `sha256:`"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|e| serde::de::Error::custom(format!("digest is not 64 hex digits: {e}")))?;
        Ok(Sha256Digest(bytes))
    }
}

/// The policy decision that governed the action, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    RequireApproval,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub decision: DecisionKind,
    /// Risk level the policy assigned (`LOW`, `MEDIUM`, `HIGH`).
    pub risk: String,
    /// Rule ids that contributed, e.g. `pci.raw_pan_in_code`.
    pub rule_ids: Vec<String>,
    /// Human-readable reasons; policies must not interpolate request content into them.
    pub reasons: Vec<String>,
}

/// One audit event. Build it with [`AuditEvent::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When the event happened (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub outcome: Outcome,
    pub principal: Principal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ip: Option<IpAddr>,
    /// The affected resource, e.g. `sandbox/sbx_01H...` or `image/sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Ties gateway, policy and VM events of one request together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_sha256: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<Sha256Digest>,
    /// How many values DLP masked in this action, by entity type (`CREDIT_CARD`, `SECRET`, ...):
    /// counts only, never the values. Evidence for PCI DSS 3.3.1 and 3.4.1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redactions: BTreeMap<String, u64>,
    /// For `egress` events: the destination and what crossed the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRecord>,
    /// For an action that ran because people approved it: the approval and who approved, so
    /// the record of what ran names the people who let it run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalGrant>,
}

/// The approval an action ran under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalGrant {
    /// The approval's id (`apr_...`); its own records hold the request and each decision.
    pub id: String,
    /// The subjects that approved, in the order they decided.
    pub approved_by: Vec<String>,
}

/// One network connection through the egress proxy. Destinations and sizes only, never payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    /// `CONNECT` for a tunnel, else the HTTP method of a plain request; absent when the request
    /// could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Host name (or IP literal) the sandbox asked for.
    pub host: String,
    pub port: u16,
    /// Address the proxy connected to or refused; absent when it never resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    /// Whether this is the record written before the first byte left (`opened`) or the one
    /// with the totals when the connection ended (`closed`, the default and the only phase a
    /// refused connection has).
    #[serde(default, skip_serializing_if = "ConnectionPhase::is_closed")]
    pub phase: ConnectionPhase,
}

/// Where in its life a connection was when its [`NetworkRecord`] was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPhase {
    /// Admitted and connected, nothing relayed yet; written before any byte leaves, so a
    /// connection the audit trail cannot record never carries data.
    Opened,
    /// Ended (or refused), with the byte counts.
    #[default]
    Closed,
}

impl ConnectionPhase {
    pub fn is_closed(&self) -> bool {
        *self == ConnectionPhase::Closed
    }
}

impl AuditEvent {
    /// An event stamped with the current time.
    pub fn new(event_type: EventType, outcome: Outcome, principal: Principal) -> Self {
        AuditEvent {
            time: SystemTime::now(),
            event_type,
            outcome,
            principal,
            origin_ip: None,
            resource: None,
            request_id: None,
            decision: None,
            code_sha256: None,
            output_sha256: None,
            redactions: BTreeMap::new(),
            network: None,
            approval: None,
        }
    }

    /// Names the approval an action ran under; ids and subjects are checked like other text.
    pub fn with_approval(mut self, grant: ApprovalGrant) -> Result<Self, AuditError> {
        let id = checked_text("approval id", grant.id)?;
        let approved_by = grant
            .approved_by
            .into_iter()
            .map(|subject| checked_text("approver", subject))
            .collect::<Result<_, _>>()?;
        self.approval = Some(ApprovalGrant { id, approved_by });
        Ok(self)
    }

    /// Attaches the connection an `egress` event is about. The host is checked like other text.
    pub fn with_network(mut self, network: NetworkRecord) -> Result<Self, AuditError> {
        let host = checked_text("network host", network.host)?;
        let method = network
            .method
            .map(|m| checked_text("network method", m))
            .transpose()?;
        self.network = Some(NetworkRecord {
            host,
            method,
            ..network
        });
        Ok(self)
    }

    pub fn with_origin_ip(mut self, ip: IpAddr) -> Self {
        self.origin_ip = Some(ip);
        self
    }

    /// The affected resource; rejected if empty or containing control characters.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Result<Self, AuditError> {
        self.resource = Some(checked_text("resource", resource.into())?);
        Ok(self)
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Result<Self, AuditError> {
        self.request_id = Some(checked_text("request id", request_id.into())?);
        Ok(self)
    }

    pub fn with_decision(mut self, decision: DecisionRecord) -> Self {
        self.decision = Some(decision);
        self
    }

    /// Records the digest of the code or command that ran (the content itself is not stored).
    pub fn with_code(mut self, code: &[u8]) -> Self {
        self.code_sha256 = Some(Sha256Digest::of(code));
        self
    }

    /// Records how many values DLP masked, by entity type. Entity names are DLP's own upper-case
    /// identifiers; anything else (which would let a caller-supplied name forge log content) is
    /// counted under `OTHER`.
    pub fn with_redactions(mut self, counts: &BTreeMap<String, u64>) -> Self {
        for (entity, count) in counts.iter().filter(|(_, n)| **n > 0) {
            let well_formed = !entity.is_empty()
                && entity.len() <= 64
                && entity
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            let key = if well_formed {
                entity.as_str()
            } else {
                "OTHER"
            };
            let total = self.redactions.entry(key.to_string()).or_insert(0);
            *total = total.saturating_add(*count);
        }
        self
    }

    /// Records the digest of what the action produced (stdout, files, model output).
    pub fn with_output(mut self, output: &[u8]) -> Self {
        self.output_sha256 = Some(Sha256Digest::of(output));
        self
    }
}

const MAX_TEXT_LEN: usize = 512;

fn checked_text(field: &'static str, value: String) -> Result<String, AuditError> {
    if value.is_empty() {
        return Err(AuditError::InvalidValue {
            field,
            value,
            expected: "a non-empty string",
        });
    }
    if value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
        // Do not echo the value: it may be attacker-controlled and arbitrarily long.
        return Err(AuditError::InvalidValue {
            field,
            value: format!("<{} bytes>", value.len()),
            expected: "at most 512 bytes without control characters",
        });
    }
    Ok(value)
}

/// Timestamps as RFC 3339 UTC with microseconds, the form `--since` also accepts.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_micros(time).to_string()
    }

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad timestamp {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(t.as_str().parse::<EventType>().ok(), Some(t));
        }
        assert!("sandbox.destroy".parse::<EventType>().is_err());
    }

    #[test]
    fn principal_rejects_empty_and_control_characters() {
        assert!(Principal::new(PrincipalKind::User, "", "t").is_err());
        assert!(Principal::new(PrincipalKind::User, "a\nb", "t").is_err());
        assert!(Principal::new(PrincipalKind::User, "alice", "").is_err());
        assert!(Principal::new(PrincipalKind::User, "alice", "acme").is_ok());
    }

    #[test]
    fn redaction_counts_are_recorded_by_entity_and_cannot_forge_lines() {
        let counts: BTreeMap<String, u64> = [
            ("CREDIT_CARD".to_string(), 2),
            ("EMAIL".to_string(), 0),
            ("x\n{\"type\":\"forged\"}".to_string(), 1),
            ("lower".to_string(), 3),
        ]
        .into_iter()
        .collect();
        let event = AuditEvent::new(EventType::Run, Outcome::Success, Principal::system())
            .with_redactions(&counts);
        let json = serde_json::to_string(&event).unwrap_or_default();
        assert!(
            json.contains("\"redactions\":{\"CREDIT_CARD\":2,\"OTHER\":4}"),
            "{json}"
        );
        assert!(!json.contains("forged") && !json.contains("EMAIL"));
        let back: AuditEvent = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.redactions, event.redactions);
        // Records written before the field existed still parse.
        let plain = AuditEvent::new(EventType::Run, Outcome::Success, Principal::system());
        let json = serde_json::to_string(&plain).unwrap_or_default();
        assert!(!json.contains("redactions"));
    }

    #[test]
    fn content_is_stored_only_as_digest() {
        let principal = Principal::system();
        let event = AuditEvent::new(EventType::Run, Outcome::Success, principal)
            .with_code(b"print(4111111111111111)");
        let json = serde_json::to_string(&event).unwrap_or_default();
        assert!(!json.contains("4111111111111111"));
        assert!(json.contains("\"code_sha256\":\"sha256:"));
        let back: AuditEvent = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        // Timestamps are stored with microsecond precision.
        assert_eq!(back.code_sha256, event.code_sha256);
        assert_eq!(back.event_type, EventType::Run);
    }
}
