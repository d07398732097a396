//! The verdict per PCI DSS v4.0.1 requirement, from the evidence. Each control says what was
//! found, what the operator must still do (ztee cannot do it for them), and the command that
//! shows the evidence again. docs/pci-dss.md explains each one at length.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::Evidence;

/// How a requirement stands on this installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The evidence shows ztee's part of the requirement in place.
    Met,
    /// In place, but something needs a person's look (old keys, young trail, no policy file).
    Attention,
    /// The evidence contradicts the requirement (tampered trail, a VM with a NIC, ...).
    NotMet,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Attention => "attention",
            Status::NotMet => "not met",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// Requirement numbers, e.g. `10.3.2, 10.3.4`.
    pub requirement: &'static str,
    pub title: &'static str,
    pub status: Status,
    /// What the evidence shows, one fact per line.
    pub findings: Vec<String>,
    /// What remains the operator's to do.
    pub operator: &'static str,
    /// The command that shows this evidence.
    pub command: &'static str,
}

/// PCI DSS 10.5.1: twelve months of history, the last three immediately available.
pub const RETENTION_DAYS: u64 = 365;
/// PCI DSS 6.3.3: critical patches within one month of release.
pub const PATCH_AGE_DAYS: u64 = 30;
/// Entities that are sensitive authentication data (PCI DSS 3.3.1).
const SAD_ENTITIES: [&str; 3] = [
    "CARD_TRACK_DATA",
    "CARD_VERIFICATION_CODE",
    "CARD_PIN_BLOCK",
];

pub fn evaluate(e: &Evidence) -> Vec<Control> {
    vec![
        segmentation(e),
        minimal_images(e),
        sad(e),
        masking(e),
        pan_unreadable(e),
        transport(e),
        inventory(e),
        patching(e),
        least_privilege(e),
        authentication(e),
        audit_content(e),
        log_protection(e),
        review(e),
        retention(e),
        change_detection(e),
    ]
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// `name count, name count, ...` of the `most` largest counts (all with `usize::MAX`), or
/// `none`.
fn listing(map: &BTreeMap<String, u64>, most: usize) -> String {
    let mut entries: Vec<(&String, &u64)> = map.iter().collect();
    // Stable: equal counts keep their (alphabetical) order.
    entries.sort_by(|a, b| b.1.cmp(a.1));
    let text = entries
        .iter()
        .take(most)
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if text.is_empty() {
        "none".to_string()
    } else {
        text
    }
}

fn segmentation(e: &Evidence) -> Control {
    let vmms = &e.isolation.running_vmms;
    let with_nic: Vec<_> = vmms.iter().filter(|v| !v.guest_has_no_network()).collect();
    let mut findings = vec![format!(
        "ztee VMs running now: {}; with a network device: {}",
        vmms.len(),
        with_nic.len()
    )];
    for v in &with_nic {
        findings.push(format!(
            "pid {} ({}) has {}",
            v.pid,
            v.name.as_deref().unwrap_or("?"),
            v.network_devices.join(", ")
        ));
    }
    let jailed = vmms.iter().filter(|v| v.own_network_namespace).count();
    if !vmms.is_empty() {
        findings.push(format!(
            "{jailed} of {} VMMs run in their own network namespace",
            vmms.len()
        ));
    }
    findings.push(format!(
        "egress in the period: {} requests granted by policy, {} refused; {} connections relayed, {} refused by the proxy",
        e.activity.egress_grants,
        e.activity.egress_grants_refused,
        e.activity.egress_allowed,
        e.activity.egress_denied
    ));
    Control {
        requirement: "1.3.1, 1.3.2, 1.4.1",
        title: "Sandboxes have no network; egress only through the allowlist proxy",
        status: if with_nic.is_empty() {
            Status::Met
        } else {
            Status::NotMet
        },
        findings,
        operator: "Firewall the host itself; keep the gateway off untrusted networks; review egress allowlists.",
        command: "ztee compliance report; ztee sandbox inspect ID",
    }
}

fn minimal_images(e: &Evidence) -> Control {
    let images = &e.images;
    let refused = images
        .images
        .iter()
        .filter(|i| i.admission == "refused")
        .count();
    let mut findings = vec![format!(
        "{} images in the store; admission policy: {}",
        images.images.len(),
        images.admission_policy.as_deref().unwrap_or("none")
    )];
    if refused > 0 {
        findings.push(format!("{refused} stored images would be refused at boot"));
    }
    let status = if images.admission_policy.is_none() {
        findings.push(
            "without an admission policy only the operator-built default guest image boots"
                .to_string(),
        );
        Status::Attention
    } else {
        Status::Met
    };
    Control {
        requirement: "2.2.1, 2.2.4, 2.2.6",
        title: "Only minimal, admitted images boot; no services, no NIC, read-only root",
        status,
        findings,
        operator: "Keep image recipes minimal (only packages the workload needs); keep the admission policy in <data-dir>/admission.yaml.",
        command: "ztee image ls; ztee image verify REF",
    }
}

fn sad(e: &Evidence) -> Control {
    let sad_found: u64 = SAD_ENTITIES
        .iter()
        .map(|k| count(&e.activity.redactions, k))
        .sum();
    let inbound = &e.configuration.dlp_inbound;
    let findings = vec![
        format!("inbound DLP action on card data and secrets: {inbound}"),
        format!("sensitive authentication data masked in the period: {sad_found}"),
        "the audit trail stores content only as digests; sandboxes are destroyed after use"
            .to_string(),
    ];
    Control {
        requirement: "3.3.1, 3.3.1.1, 3.3.1.2, 3.3.1.3",
        title: "Sensitive authentication data is detected and never retained",
        status: if inbound == "block" || inbound == "redact" {
            Status::Met
        } else {
            Status::Attention
        },
        findings,
        operator: "Make sure agents do not persist SAD outside ztee (their own stores, LLM providers' logs).",
        command: "ztee dlp scan FILE; ztee audit search --type run",
    }
}

fn masking(e: &Evidence) -> Control {
    let mut findings = vec![format!(
        "PANs masked in the period: {}",
        count(&e.activity.redactions, "CREDIT_CARD")
    )];
    let total: u64 = e.activity.redactions.values().sum();
    findings.push(format!(
        "all values masked in the period: {total} (by entity: {})",
        listing(&e.activity.redactions, usize::MAX)
    ));
    Control {
        requirement: "3.4.1",
        title: "PAN is masked in every output (stdout, stderr, files, LLM traffic)",
        status: Status::Met,
        findings,
        operator: "Grant token restoration roles only to the few principals with a business need to see full PAN.",
        command: "ztee dlp redact FILE; GET /metrics (ztee_dlp_redactions)",
    }
}

fn pan_unreadable(_e: &Evidence) -> Control {
    Control {
        requirement: "3.5.1, 3.5.1.1",
        title: "PAN rendered unreadable: keyed hashes, tokens, AES-GCM",
        status: Status::Met,
        findings: vec![
            "DLP offers keyed HMAC-SHA-256, AES-256-GCM and reversible tokens (`ztee dlp redact --operator hash|encrypt|tokenize`)".to_string(),
            "the audit trail holds no content; its code and output digests are keyed (HMAC-SHA-256 under a key derived from the node key)".to_string(),
        ],
        operator: "Keep DLP hash and encryption keys outside the data directory, readable only by ztee; rotate them with the node key (docs/operations.md).",
        command: "ztee dlp redact --operator hash --hash-key-file KEY FILE",
    }
}

fn transport(e: &Evidence) -> Control {
    let c = &e.configuration;
    let (status, finding) = if c.tls {
        (Status::Met, format!("TLS on {}", c.listen))
    } else if c.loopback_only {
        (
            Status::Met,
            format!("plain HTTP on loopback {} only (no network path)", c.listen),
        )
    } else {
        (
            Status::NotMet,
            format!("plain HTTP on a non-loopback address {}", c.listen),
        )
    };
    let mut findings = vec![
        finding,
        "host <-> guest traffic is HMAC-authenticated per frame and never leaves the host"
            .to_string(),
    ];
    let mut status = status;
    for p in &c.llm_providers {
        let place = if p.external { "external" } else { "internal" };
        let link = if p.tls { "https" } else { "plain http" };
        findings.push(format!("LLM provider {} ({place}) over {link}", p.name));
        if p.external && !p.tls {
            status = Status::NotMet;
        }
    }
    Control {
        requirement: "4.2.1",
        title: "Strong cryptography for card data in transit",
        status,
        findings,
        operator:
            "Use certificates from a trusted CA; keep TLS keys readable only by the ztee user.",
        command: "ztee compliance report; curl -v https://GATEWAY/healthz",
    }
}

fn inventory(e: &Evidence) -> Control {
    let images = &e.images.images;
    let attested = images.iter().filter(|i| i.sbom).count();
    let status = if images.is_empty() || attested < images.len() {
        Status::Attention
    } else {
        Status::Met
    };
    Control {
        requirement: "6.3.2",
        title: "Inventory of software in images (SBOMs)",
        status,
        findings: vec![format!(
            "{attested} of {} stored images carry an SBOM attestation (CycloneDX or SPDX)",
            images.len()
        )],
        operator: "Attest an SBOM for every image (`ztee image attest REF`); inventory ztee itself from its Cargo.lock.",
        command: "ztee image ls; ztee image sbom REF",
    }
}

fn patching(e: &Evidence) -> Control {
    let images = &e.images.images;
    let old: Vec<String> = images
        .iter()
        .filter(|i| i.age_days.is_some_and(|d| d > PATCH_AGE_DAYS))
        .map(|i| format!("{} ({} days)", i.reference, i.age_days.unwrap_or(0)))
        .collect();
    let refused: Vec<String> = images
        .iter()
        .filter(|i| i.admission == "refused")
        .map(|i| {
            format!(
                "{} refused by {}: {}",
                i.reference,
                i.rules.join(","),
                i.reason.as_deref().unwrap_or("")
            )
        })
        .collect();
    let mut findings = vec![format!(
        "{} images older than {PATCH_AGE_DAYS} days",
        old.len()
    )];
    findings.extend(old.iter().cloned());
    findings.extend(refused);
    Control {
        requirement: "6.3.3",
        title: "Images are patched: vulnerability gate at admission, image age",
        status: if old.is_empty() && e.images.admission_policy.is_some() {
            Status::Met
        } else {
            Status::Attention
        },
        findings,
        operator: "Rebuild images at least monthly (`ztee image build`), update the vulnerability database daily (`ztee vulndb update`).",
        command: "ztee image scan REF; ztee vulndb status",
    }
}

fn least_privilege(e: &Evidence) -> Control {
    let roles = listing(&e.configuration.api_keys.by_role, usize::MAX);
    Control {
        requirement: "7.2.1, 7.2.2, 7.2.5",
        title: "Least privilege: roles per action, tenant scoping, service accounts",
        status: Status::Met,
        findings: vec![
            format!("active API keys by role: {roles}"),
            format!(
                "authorization refusals in the period: {}; policy denials: {}",
                e.activity.authorization_denials, e.activity.policy_denials
            ),
            "every object is scoped to its tenant; another tenant's object answers 404".to_string(),
        ],
        operator: "Review role assignments at the IdP and `ztee apikey ls` at least every six months (7.2.4).",
        command: "ztee apikey ls",
    }
}

fn authentication(e: &Evidence) -> Control {
    let c = &e.configuration;
    let mut findings = Vec::new();
    let mut status = Status::Met;
    match &c.oidc {
        Some(o) => {
            findings.push(format!(
                "OIDC: issuer {}, audience {}, algorithms {}",
                o.issuer,
                o.audience,
                o.algorithms.join(" ")
            ));
            if o.required_amr.is_empty() {
                findings.push(
                    "tokens are not required to show MFA (`oidc.required_amr` is empty)"
                        .to_string(),
                );
                status = Status::Attention;
            } else {
                findings.push(format!(
                    "every token must show one of amr = {}",
                    o.required_amr.join(", ")
                ));
            }
        }
        None => {
            findings.push("OIDC not configured: people authenticate with API keys".to_string());
            status = Status::Attention;
        }
    }
    findings.push(format!(
        "failed logins in the period: {} ({} logins)",
        e.activity.failed_logins, e.activity.logins
    ));
    if !c.api_keys.older_than_90_days.is_empty() {
        status = Status::Attention;
        findings.push(format!(
            "API keys older than 90 days: {}",
            c.api_keys.older_than_90_days.join(", ")
        ));
    }
    Control {
        requirement: "8.2.1, 8.2.2, 8.3.1, 8.4.2, 8.6.3",
        title: "Unique identities; MFA at the identity provider; service-account keys",
        status,
        findings,
        operator: "Enforce MFA at the IdP and set `oidc.required_amr` so ztee checks it (8.4.2); no shared accounts; rotate API keys.",
        command: "ztee audit search --type auth.failure --since 7d; ztee apikey ls",
    }
}

fn audit_content(e: &Evidence) -> Control {
    let types = listing(&e.activity.by_type, usize::MAX);
    Control {
        requirement: "10.2.1, 10.2.1.1-10.2.1.7, 10.2.2",
        title: "Audit events for every action, with who, what, when, where, outcome",
        status: if e.audit.present {
            Status::Met
        } else {
            Status::Attention
        },
        findings: vec![
            match &e.activity.incomplete {
                None => format!("events in the period: {}", e.activity.events),
                Some(why) => format!(
                    "events in the period: {} (counted up to an unreadable record: {why})",
                    e.activity.events
                ),
            },
            format!(
                "by type: {}",
                if types.is_empty() {
                    "none".to_string()
                } else {
                    types
                }
            ),
            format!(
                "reads of the trail itself (10.2.1.3): {}",
                e.activity.audit_accesses
            ),
        ],
        operator: "Forward the trail to the SIEM; synchronize the host clock (10.6).",
        command: "ztee audit tail; ztee audit search --since 24h",
    }
}

fn log_protection(e: &Evidence) -> Control {
    let a = &e.audit;
    let mut findings = Vec::new();
    let status = if !a.present {
        findings.push("no audit trail in this data directory".to_string());
        Status::Attention
    } else if a.verified {
        findings.push(format!(
            "hash chain verified: {} events, {} signed checkpoints, {} segments, key {}",
            a.events,
            a.checkpoints,
            a.segments,
            a.trusted_key.as_deref().unwrap_or("?")
        ));
        if a.unsigned_tail > 0 {
            findings.push(format!(
                "{} newest events not yet under a signed checkpoint",
                a.unsigned_tail
            ));
        }
        if a.writable_by_others.is_empty() {
            Status::Met
        } else {
            findings.push(format!(
                "segments writable by group or others: {}",
                a.writable_by_others.join(", ")
            ));
            Status::NotMet
        }
    } else {
        findings.push(format!(
            "TAMPERED OR UNREADABLE: {}",
            a.failure.as_deref().unwrap_or("unknown failure")
        ));
        Status::NotMet
    };
    Control {
        requirement: "10.3.1, 10.3.2, 10.3.3, 10.3.4",
        title: "Audit logs protected from change; changes detected",
        status,
        findings,
        operator: "Copy segments and head.json to write-once storage (10.3.3); keep the node key's public half with the auditor.",
        command: "ztee audit verify",
    }
}

fn review(e: &Evidence) -> Control {
    let a = &e.activity;
    Control {
        requirement: "10.4.1, 10.4.1.1, 10.4.2",
        title: "Automated review of audit events",
        status: Status::Met,
        findings: vec![
            format!(
                "failed logins {} (top origins: {})",
                a.failed_logins,
                listing(&a.failed_logins_by_origin, 5)
            ),
            format!(
                "policy denials {}, refusals by rule: {}",
                a.policy_denials,
                listing(&a.decisions_by_rule, 5)
            ),
            format!(
                "approvals: {} requested, {} granted, {} rejected, {} expired, {} still open",
                a.approvals.requested,
                a.approvals.granted,
                a.approvals.rejected,
                a.approvals.expired,
                a.approvals.undecided
            ),
        ],
        operator: "Run this report daily (systemd timer in docs/operations.md) and act on exceptions; alert on ztee_auth_failures_total.",
        command: "ztee compliance report --since 24h",
    }
}

fn retention(e: &Evidence) -> Control {
    let a = &e.audit;
    let span = a.span_days.unwrap_or(0);
    let findings = vec![
        format!(
            "trail spans {span} days (first event {}, last {})",
            a.first_event.as_deref().unwrap_or("-"),
            a.last_event.as_deref().unwrap_or("-")
        ),
        format!(
            "{} segments, {} bytes; ztee never deletes segments",
            a.segments, a.bytes
        ),
    ];
    Control {
        requirement: "10.5.1",
        title: "Audit history kept for 12 months, 3 months immediately available",
        status: if a.present && span >= RETENTION_DAYS {
            Status::Met
        } else {
            Status::Attention
        },
        findings,
        operator: "Keep at least 12 months (archive older segments to write-once storage together with head.json); a trail younger than 12 months is expected on a new installation.",
        command: "ztee audit verify",
    }
}

fn change_detection(e: &Evidence) -> Control {
    let p = &e.configuration.policy;
    let status = if p.tests_failed > 0 {
        Status::NotMet
    } else {
        Status::Met
    };
    Control {
        requirement: "11.5.2",
        title: "Change detection: policy bundle, images and audit trail",
        status,
        findings: vec![
            format!(
                "policy bundle {} sha256:{} ({} files); its tests: {} passed, {} failed",
                p.source, p.sha256, p.files, p.tests_passed, p.tests_failed
            ),
            match e.activity.policy_bundles.len() {
                0 => "no policy bundle load recorded in the period".to_string(),
                1 => format!(
                    "one bundle in force through the period: {}",
                    e.activity.policy_bundles.keys().cloned().collect::<String>()
                ),
                n => format!(
                    "{n} different bundles loaded in the period (a change to review): {}",
                    e.activity
                        .policy_bundles
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            "images boot by digest only after admission; the audit chain detects edits".to_string(),
        ],
        operator: "Compare the policy digest with the approved one at each review; watch ztee's own binaries with the host's file-integrity monitor.",
        command: "ztee policy test; ztee audit verify",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_shows_the_largest_counts_first_or_none() {
        let map: BTreeMap<String, u64> = [("a".into(), 1), ("b".into(), 5), ("c".into(), 5)]
            .into_iter()
            .collect();
        assert_eq!(listing(&map, usize::MAX), "b 5, c 5, a 1");
        assert_eq!(listing(&map, 1), "b 5");
        assert_eq!(listing(&BTreeMap::new(), 5), "none");
    }
}
