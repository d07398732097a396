//! The report over a real installation layout: an audit trail written by the real writer, a
//! state database with API keys made by the real key code, an image store with a signed and an
//! unsigned image judged by a real admission policy, and process tables with and without a VMM
//! that has a network device.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ztee_audit::{
    AuditConfig, AuditEvent, AuditLog, ConnectionPhase, DecisionKind, DecisionRecord, EventType,
    NetworkRecord, NodeKey, Outcome, Principal, PrincipalKind,
};
use ztee_compliance::{gather_with_proc, Installation, Report, Status, Window};
use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::oci::ImageConfig;
use ztee_supply::{layers, sbom, sign, Reference, Store};

const ADMISSION: &str = r#"
apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: ztee-images
spec:
  validationFailureAction: Enforce
  rules:
    - name: signed-and-inventoried
      verifyImages:
        - imageReferences: ["app:*"]
          attestors:
            - entries:
                - keys:
                    publicKeys: keys/signing.pub
          attestations:
            - type: https://cyclonedx.org/bom
"#;

fn user(subject: &str) -> Principal {
    Principal::new(PrincipalKind::User, subject, "acme").unwrap()
}

fn decision(kind: DecisionKind, rule: &str) -> DecisionRecord {
    DecisionRecord {
        decision: kind,
        risk: "HIGH".into(),
        rule_ids: vec![rule.into()],
        reasons: vec!["test".into()],
    }
}

/// The events a small day of use leaves behind.
async fn write_trail(data_dir: &Path) {
    let log = AuditLog::open(
        AuditConfig::new(data_dir),
        NodeKey::load_or_generate(data_dir).unwrap(),
    )
    .unwrap();
    let attacker: IpAddr = "203.0.113.9".parse().unwrap();
    for _ in 0..3 {
        let e = AuditEvent::new(
            EventType::AuthFailure,
            Outcome::Denied,
            Principal::new(PrincipalKind::Anonymous, "unknown", "unknown").unwrap(),
        )
        .with_origin_ip(attacker);
        log.append(e).await.unwrap();
    }
    log.append(AuditEvent::new(
        EventType::AuthLogin,
        Outcome::Success,
        user("alice"),
    ))
    .await
    .unwrap();
    let masked: BTreeMap<String, u64> = [
        ("CREDIT_CARD".into(), 2),
        ("CARD_VERIFICATION_CODE".into(), 1),
    ]
    .into_iter()
    .collect();
    let run = AuditEvent::new(EventType::Run, Outcome::Success, user("alice"))
        .with_decision(decision(DecisionKind::Allow, "risk.low"))
        .with_code(b"print(1)")
        .with_redactions(&masked);
    log.append(run).await.unwrap();
    let denied = AuditEvent::new(EventType::Run, Outcome::Denied, user("alice"))
        .with_decision(decision(DecisionKind::Deny, "pci.raw_pan_in_code"));
    log.append(denied).await.unwrap();
    // An approval asked for and granted; one left waiting; one that expired.
    for (id, decided) in [
        ("approval/ap_1", true),
        ("approval/ap_2", false),
        ("approval/ap_3", false),
    ] {
        let ask = AuditEvent::new(
            EventType::ApprovalRequest,
            Outcome::PendingApproval,
            user("alice"),
        )
        .with_resource(id)
        .unwrap();
        log.append(ask).await.unwrap();
        if decided {
            let grant = AuditEvent::new(EventType::ApprovalGrant, Outcome::Success, user("bob"))
                .with_resource(id)
                .unwrap();
            log.append(grant).await.unwrap();
        }
    }
    let expired = AuditEvent::new(
        EventType::ApprovalReject,
        Outcome::Failure,
        Principal::system(),
    )
    .with_resource("approval/ap_3")
    .unwrap();
    log.append(expired).await.unwrap();
    let egress = AuditEvent::new(EventType::Egress, Outcome::Denied, user("alice"))
        .with_resource("run/run_1")
        .unwrap()
        .with_network(NetworkRecord {
            method: Some("GET".into()),
            host: "169.254.169.254".into(),
            port: 80,
            address: Some("169.254.169.254".parse().unwrap()),
            bytes_up: 0,
            bytes_down: 0,
            phase: ConnectionPhase::Closed,
        })
        .unwrap();
    log.append(egress).await.unwrap();
    // An allowed connection is written twice, when it opens and when it closes: counted once.
    for phase in [ConnectionPhase::Opened, ConnectionPhase::Closed] {
        let connection = AuditEvent::new(EventType::Egress, Outcome::Success, user("alice"))
            .with_network(NetworkRecord {
                method: Some("CONNECT".into()),
                host: "pypi.org".into(),
                port: 443,
                address: Some("151.101.0.223".parse().unwrap()),
                bytes_up: 0,
                bytes_down: 0,
                phase,
            })
            .unwrap();
        log.append(connection).await.unwrap();
    }
    let granted = AuditEvent::new(EventType::Egress, Outcome::Success, user("alice"));
    log.append(granted).await.unwrap();
    drop(log); // writes the final signed checkpoint
}

/// A one-file image named `name`, built `age_days` ago.
fn image(store: &Store, name: &str, age_days: u64) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("hello"), name).unwrap();
    let layer = layers::pack_directory(store, root.path(), 1_700_000_000).unwrap();
    let created = SystemTime::now() - Duration::from_secs(age_days * 86_400);
    let config = ImageConfig {
        created: Some(humantime::format_rfc3339_seconds(created).to_string()),
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    layers::commit_image(store, name, &[layer], config, BTreeMap::new()).unwrap();
}

fn write_images(data_dir: &Path) {
    let store = Store::open(data_dir).unwrap();
    image(&store, "app:signed", 3);
    image(&store, "app:unsigned", 45);
    let keys_dir = data_dir.join("keys");
    let pass = Passphrase::new("a test passphrase".into());
    let generated = keys::generate_with_cost(&keys_dir.join("signing"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&generated.private_key, &pass).unwrap();
    let reference: Reference = "app:signed".parse().unwrap();
    sign::sign(&store, &reference, &key, None, BTreeMap::new()).unwrap();
    let digest = store.resolve(&reference).unwrap().digest;
    let catalog = sbom::catalog_image(&store, "app", &digest).unwrap();
    dsse::attest(
        &store,
        &reference,
        &key,
        PREDICATE_CYCLONEDX,
        sbom::cyclonedx::document(&catalog),
    )
    .unwrap();
    std::fs::write(data_dir.join("admission.yaml"), ADMISSION).unwrap();
}

/// A process table holding one ztee QEMU, with or without a network device.
fn proc_table(with_nic: bool) -> tempfile::TempDir {
    let proc_root = tempfile::tempdir().unwrap();
    let pid = proc_root.path().join("4242");
    std::fs::create_dir_all(pid.join("net")).unwrap();
    let mut args = vec![
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "sbx-test",
        "-nodefaults",
        "-device",
        "virtserialport,chardev=agent,name=ztee.agent",
    ];
    if with_nic {
        args.extend([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
        ]);
    }
    std::fs::write(pid.join("cmdline"), args.join("\0") + "\0").unwrap();
    std::fs::write(
        pid.join("net/dev"),
        "Inter-|   Receive\n face |bytes\n    lo: 0 0 0 0\n",
    )
    .unwrap();
    // A process that is not ours is ignored.
    let other = proc_root.path().join("7");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("cmdline"),
        "/usr/bin/qemu-system-x86_64\0-netdev\0user\0",
    )
    .unwrap();
    proc_root
}

fn control<'a>(report: &'a Report, requirement_prefix: &str) -> &'a ztee_compliance::Control {
    report
        .controls
        .iter()
        .find(|c| c.requirement.starts_with(requirement_prefix))
        .unwrap_or_else(|| panic!("no control {requirement_prefix}"))
}

#[tokio::test]
async fn report_reflects_the_installation_and_flags_what_is_wrong() {
    let data = tempfile::tempdir().unwrap();
    write_trail(data.path()).await;
    write_images(data.path());
    let installation = Installation::load(data.path(), None, None).unwrap();

    let clean = proc_table(false);
    let report = gather_with_proc(&installation, &Window::all(), clean.path()).unwrap();
    let a = &report.evidence.activity;
    assert_eq!(a.failed_logins, 3);
    assert_eq!(a.failed_logins_by_origin.get("203.0.113.9"), Some(&3));
    assert_eq!(a.logins, 1);
    assert_eq!(a.policy_denials, 1);
    assert_eq!(a.decisions_by_rule.get("pci.raw_pan_in_code"), Some(&1));
    assert_eq!(a.redactions.get("CREDIT_CARD"), Some(&2));
    assert_eq!(a.approvals.requested, 3);
    assert_eq!(a.approvals.granted, 1);
    assert_eq!(a.approvals.rejected, 0);
    assert_eq!(a.approvals.expired, 1);
    assert_eq!(a.approvals.undecided, 1);
    assert!(a.approvals.median_decision_s.is_some());
    assert_eq!(a.egress_denied, 1);
    assert_eq!(a.egress_allowed, 1);
    assert_eq!(a.egress_grants, 1);
    assert_eq!(a.sandboxes_started, 1);

    assert!(
        report.evidence.audit.verified,
        "{:?}",
        report.evidence.audit
    );
    assert_eq!(report.evidence.audit.events, a.events);
    assert_eq!(control(&report, "10.3").status, Status::Met);
    // A new trail is younger than twelve months.
    assert_eq!(control(&report, "10.5").status, Status::Attention);

    let images = &report.evidence.images.images;
    let signed = images.iter().find(|i| i.reference == "app:signed").unwrap();
    let unsigned = images
        .iter()
        .find(|i| i.reference == "app:unsigned")
        .unwrap();
    assert_eq!(signed.admission, "admitted", "{signed:?}");
    assert!(signed.signed && signed.attested && signed.sbom);
    assert!(!signed.vulnerability_scan);
    assert_eq!(signed.attestations, vec![PREDICATE_CYCLONEDX.to_string()]);
    assert!(!unsigned.signed && !unsigned.sbom);
    assert_eq!(
        signed.verified_attestations,
        vec![PREDICATE_CYCLONEDX.to_string()]
    );
    assert_eq!(unsigned.admission, "refused");
    assert_eq!(unsigned.rules, vec!["signed-and-inventoried".to_string()]);
    assert!(unsigned.age_days.unwrap() >= 44);
    assert_eq!(
        images.len(),
        2,
        "signature and attestation artifacts are not images"
    );
    assert_eq!(
        control(&report, "6.3.3").status,
        Status::Attention,
        "a 45-day-old image"
    );

    let vms = &report.evidence.isolation.running_vmms;
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name.as_deref(), Some("sbx-test"));
    assert!(vms[0].network_devices.is_empty());
    assert_eq!(control(&report, "1.3").status, Status::Met);
    assert_eq!(
        control(&report, "11.5").status,
        Status::Met,
        "built-in policy tests pass"
    );
    assert!(report.passes());

    // The Markdown carries the verdict table and the detail tables.
    let md = ztee_compliance::render_markdown(&report);
    assert!(md.contains("| 10.3.1, 10.3.2, 10.3.3, 10.3.4 | Audit logs protected from change; changes detected | ✅ met |"), "{md}");
    assert!(md.contains("| app:unsigned |"));
    assert!(
        md.contains("| yes | yes | no | admitted | signed-and-inventoried |"),
        "{md}"
    );
    assert!(md.contains("| CREDIT_CARD | 2 |"));
    assert!(md.contains("| 203.0.113.9 | 3 |"));

    // A VM with a NIC is a segmentation failure.
    let leaky = proc_table(true);
    let report = gather_with_proc(&installation, &Window::all(), leaky.path()).unwrap();
    assert_eq!(control(&report, "1.3").status, Status::NotMet);
    assert!(!report.passes());
}

#[tokio::test]
async fn a_window_limits_activity_and_a_tampered_trail_is_not_met() {
    let data = tempfile::tempdir().unwrap();
    write_trail(data.path()).await;
    let installation = Installation::load(data.path(), None, None).unwrap();
    let empty = tempfile::tempdir().unwrap();

    let future = Window::since(SystemTime::now() + Duration::from_secs(3600));
    let report = gather_with_proc(&installation, &future, empty.path()).unwrap();
    assert_eq!(report.evidence.activity.events, 0);
    assert!(
        report.evidence.audit.events > 0,
        "the chain is always checked whole"
    );

    // Edit one event: the chain no longer verifies and the report says so.
    let segment = std::fs::read_dir(data.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, text.replacen("203.0.113.9", "198.51.100.1", 1)).unwrap();
    let report = gather_with_proc(&installation, &Window::all(), empty.path()).unwrap();
    assert!(!report.evidence.audit.verified);
    let protection = control(&report, "10.3");
    assert_eq!(protection.status, Status::NotMet);
    assert!(
        protection.findings[0].starts_with("TAMPERED"),
        "{:?}",
        protection.findings
    );
    assert!(!report.passes());
}

#[test]
fn an_installation_that_is_not_there_is_an_error() {
    let err = Installation::load(Path::new("/nonexistent/ztee"), None, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/ztee"), "{err}");
    let data = tempfile::tempdir().unwrap();
    let bad = data.path().join("server.toml");
    std::fs::write(&bad, "listen = 42\n").unwrap();
    let err = Installation::load(data.path(), Some(&bad), None)
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("configuration:"), "{err}");
}
