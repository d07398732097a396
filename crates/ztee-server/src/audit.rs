//! The audit stage: every decision the gateway makes becomes an event in the hash-chained log.
//!
//! The gateway fails closed: when an event cannot be made durable, the request fails (503) rather
//! than run unrecorded. Content (code, commands, output) enters events only as SHA-256 digests.
//!
//! Text a caller controls (URL and guest file paths in resources, request ids, host names, policy
//! reasons quoting input) enters an event only through [`caller_text`]: the gateway's audit sink
//! ([`MaskingSink`]) passes every event through [`mask_event`] before it is written, so a card
//! number in such a string is PCI-masked whichever handler built the event.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ztee_audit::{
    AuditEvent, DecisionRecord, EventType, Outcome, Principal as AuditPrincipal, PrincipalKind,
};

use crate::dlp::DlpEngine;
use crate::policy::Decision;
use crate::principal::{AuthMethod, Principal};

#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Returns once the event is durable.
    async fn append(&self, event: AuditEvent) -> Result<(), String>;
}

#[async_trait]
impl AuditSink for ztee_audit::AuditLog {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        ztee_audit::AuditLog::append(self, event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Entities DLP finds that are not withheld from the audit trail: network addresses are what it
/// records anyway (`origin_ip`, egress destinations, listeners), and are not cardholder data.
const KEPT_ENTITIES: &[&str] = &["IP_ADDRESS"];

/// True when DLP finds something in `text` that must not be recorded as it is.
pub fn has_sensitive_data(dlp: &dyn DlpEngine, text: &str) -> bool {
    dlp.scan(text)
        .iter()
        .any(|entity| !KEPT_ENTITIES.contains(&entity.as_str()))
}

/// The one gate for caller-controlled text on its way into an audit event (or the state
/// database): when DLP finds card data, a secret or personal data in it, the text is masked by
/// the DLP engine (card numbers keep at most their first six and last four digits); text with
/// nothing but network addresses in it is kept as it is.
pub fn caller_text(dlp: &dyn DlpEngine, text: &str) -> String {
    if has_sensitive_data(dlp, text) {
        dlp.redact(text).text
    } else {
        text.to_owned()
    }
}

/// Shortest run of digits treated as a possible card number even when it fails the Luhn check.
const PAN_LIKE_DIGITS: usize = 13;

/// True when `text` holds a run of 13 or more consecutive digits: the length of a card number,
/// whether or not its checksum is valid.
pub fn has_pan_like_digits(text: &str) -> bool {
    let mut run = 0;
    for b in text.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= PAN_LIKE_DIGITS {
            return true;
        }
    }
    false
}

/// A request id as it may be recorded: unchanged when DLP finds nothing in it and it holds no
/// card-number-length run of digits, otherwise a fixed marker. The request-id layer already
/// replaces such ids at the edge; this is the same rule for events built elsewhere.
pub fn request_id_text(dlp: &dyn DlpEngine, id: &str) -> String {
    if has_pan_like_digits(id) || has_sensitive_data(dlp, id) {
        "withheld-request-id".to_owned()
    } else {
        id.to_owned()
    }
}

/// Applies [`caller_text`] to every caller-controlled string of `event`: the resource, the
/// request id, the network host and the decision's reasons. Principals are authenticated
/// identities and stay as they are.
pub fn mask_event(dlp: &dyn DlpEngine, mut event: AuditEvent) -> AuditEvent {
    if let Some(resource) = event.resource.take() {
        event.resource = Some(caller_text(dlp, &resource));
    }
    if let Some(id) = event.request_id.take() {
        event.request_id = Some(request_id_text(dlp, &id));
    }
    if let Some(network) = event.network.as_mut() {
        network.host = caller_text(dlp, &network.host);
        if let Some(method) = network.method.as_mut() {
            *method = caller_text(dlp, method);
        }
    }
    if let Some(decision) = event.decision.as_mut() {
        for reason in &mut decision.reasons {
            *reason = caller_text(dlp, reason);
        }
    }
    event
}

/// The gateway's audit sink: masks every event with [`mask_event`], then hands it to the log.
pub struct MaskingSink {
    inner: Arc<dyn AuditSink>,
    dlp: Arc<dyn DlpEngine>,
}

impl MaskingSink {
    pub fn new(inner: Arc<dyn AuditSink>, dlp: Arc<dyn DlpEngine>) -> Self {
        Self { inner, dlp }
    }
}

#[async_trait]
impl AuditSink for MaskingSink {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        self.inner
            .append(mask_event(self.dlp.as_ref(), event))
            .await
    }
}

/// The audit trail's principal for an authenticated caller.
pub fn audit_principal(principal: &Principal) -> AuditPrincipal {
    let kind = match principal.method {
        AuthMethod::Oidc | AuthMethod::Local => PrincipalKind::User,
        AuthMethod::ApiKey => PrincipalKind::ServiceAccount,
    };
    AuditPrincipal::new(kind, principal.subject.clone(), principal.tenant.clone())
        .unwrap_or_else(|_| AuditPrincipal::system())
}

/// For failed authentication: nobody is known.
pub fn anonymous() -> AuditPrincipal {
    AuditPrincipal::new(PrincipalKind::Anonymous, "anonymous", "unknown")
        .unwrap_or_else(|_| AuditPrincipal::system())
}

pub fn decision_record(decision: &Decision) -> DecisionRecord {
    DecisionRecord {
        decision: decision.kind.into(),
        risk: decision.risk.to_owned(),
        rule_ids: decision.reasons.clone(),
        reasons: decision.messages.clone(),
    }
}

/// Builds an event with the fields every gateway event has.
pub fn event(
    event_type: EventType,
    outcome: Outcome,
    principal: AuditPrincipal,
    request_id: &str,
    origin_ip: Option<IpAddr>,
    resource: Option<&str>,
) -> AuditEvent {
    let mut event = AuditEvent::new(event_type, outcome, principal);
    if let Some(ip) = origin_ip {
        event = event.with_origin_ip(ip);
    }
    // Request ids and resource names are validated at the edge (and masked by the sink); a value
    // the log refuses would be a bug, and the event is still worth keeping without it.
    if let Ok(e) = event.clone().with_request_id(request_id) {
        event = e;
    }
    if let Some(resource) = resource {
        if let Ok(e) = event.clone().with_resource(resource) {
            event = e;
        }
    }
    event
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAN: &str = "4111111111111111";

    fn dlp() -> crate::dlp_engine::ZteeDlp {
        crate::dlp_engine::ZteeDlp::new(Default::default()).unwrap()
    }

    #[test]
    fn card_number_length_digit_runs_are_recognized() {
        assert!(has_pan_like_digits(PAN));
        assert!(has_pan_like_digits("ref:1234567890123"));
        assert!(!has_pan_like_digits("123456789012"));
        assert!(!has_pan_like_digits("550e8400-e29b-41d4-a716-446655440000"));
    }

    #[test]
    fn every_caller_controlled_field_of_an_event_is_masked() {
        let dlp = dlp();
        let mut event = event(
            EventType::FileWrite,
            Outcome::Denied,
            anonymous(),
            PAN,
            None,
            Some(&format!("sandbox/sbx_1/tmp/{PAN}.txt")),
        )
        .with_decision(DecisionRecord {
            decision: ztee_audit::DecisionKind::Deny,
            risk: "HIGH".into(),
            rule_ids: vec!["dlp.inbound".into()],
            reasons: vec![format!("card {PAN} in path")],
        });
        event = event
            .with_network(ztee_audit::NetworkRecord {
                method: Some(PAN.to_owned()),
                host: format!("{PAN}.example.com"),
                port: 443,
                address: None,
                bytes_up: 0,
                bytes_down: 0,
                phase: Default::default(),
            })
            .unwrap();
        let masked = mask_event(&dlp, event);
        let text = serde_json::to_string(&masked).unwrap();
        assert!(!text.contains(PAN), "{text}");
        let resource = masked.resource.unwrap();
        assert!(resource.starts_with("sandbox/sbx_1/tmp/"), "{resource}");
        assert!(resource.contains("1111"), "{resource}");
        assert_eq!(masked.request_id.as_deref(), Some("withheld-request-id"));
        // Clean text is left alone.
        let clean = mask_event(
            &dlp,
            super::event(
                EventType::SandboxClose,
                Outcome::Success,
                anonymous(),
                "trace-42",
                None,
                Some("sandbox/sbx_1"),
            ),
        );
        assert_eq!(clean.resource.as_deref(), Some("sandbox/sbx_1"));
        assert_eq!(clean.request_id.as_deref(), Some("trace-42"));
    }

    #[test]
    fn identifiers_and_network_addresses_are_recorded_as_they_are() {
        let dlp = dlp();
        for text in [
            "listener/127.0.0.1:8443",
            "10.0.0.5",
            "pypi.org",
            "sandbox/sbx_12345678901234567890123456789012",
            "apikey/2f0ee389f0bc",
            "audit/tenant/acme",
        ] {
            assert_eq!(caller_text(&dlp, text), text);
        }
        assert_eq!(
            caller_text(&dlp, "sandbox/sbx_1/home/alice@example.com/x"),
            "sandbox/sbx_1/home/*****@*******.***/x"
        );
    }
}
