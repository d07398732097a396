//! Every image in the local store, judged exactly as a boot would judge it: the admission policy
//! is evaluated for each (signatures, attestations such as SBOM and vulnerability scan, their
//! conditions), without building a root filesystem. Also the image's age, for patch currency.

use std::time::SystemTime;

use serde::Serialize;
use ztee_supply::admission::{self, AdmissionError, LoadedPolicy};
use ztee_supply::dsse;
use ztee_supply::{Reference, Store};

use crate::{ComplianceError, Installation};

#[derive(Debug, Clone, Serialize)]
pub struct ImagesEvidence {
    /// The admission policy images were checked against, if the installation has one.
    pub admission_policy: Option<String>,
    pub images: Vec<ImageEvidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageEvidence {
    pub reference: String,
    pub digest: String,
    /// A cosign-style signature is stored next to the image.
    pub signed: bool,
    /// In-toto attestations (SBOM, vulnerability scan) are stored next to the image.
    pub attested: bool,
    /// Their predicate types, as stored (admission verifies them; this only lists them).
    pub attestations: Vec<String>,
    /// An SBOM (CycloneDX or SPDX) is among them.
    pub sbom: bool,
    /// A vulnerability-scan result is among them.
    pub vulnerability_scan: bool,
    /// Gateway sandboxes running this image now (by the state database).
    pub in_use: u64,
    /// `admitted`, `refused` or `unchecked` (no admission policy).
    pub admission: String,
    /// The rule that refused it, or the rules that admitted it.
    pub rules: Vec<String>,
    pub reason: Option<String>,
    /// Attestation predicate types admission verified.
    pub verified_attestations: Vec<String>,
    /// When the image was built (its config's `created`), and how many days ago.
    pub created: Option<String>,
    pub age_days: Option<u64>,
}

pub fn gather(installation: &Installation) -> Result<ImagesEvidence, ComplianceError> {
    let policy_path = installation.admission_policy();
    let policy = if policy_path.is_file() {
        Some(LoadedPolicy::load(&policy_path)?)
    } else {
        None
    };
    let mut evidence = ImagesEvidence {
        admission_policy: policy.as_ref().map(|_| policy_path.display().to_string()),
        images: Vec::new(),
    };
    let oci_dir = installation.data_dir.join("oci");
    if !oci_dir.is_dir() {
        return Ok(evidence);
    }
    let store = Store::open(&installation.data_dir)?;
    let in_use = images_in_use(installation)?;
    let all = store.list()?;
    let names: std::collections::BTreeSet<&str> = all.iter().map(|i| i.name.as_str()).collect();
    for image in &all {
        if image.name.ends_with(".sig") || image.name.ends_with(".att") {
            continue;
        }
        let digest = &image.descriptor.digest;
        let repository = image
            .name
            .rsplit_once(':')
            .map_or(image.name.as_str(), |(r, _)| r);
        let has = |suffix: &str| {
            names.contains(format!("{repository}:{}", digest.cosign_tag(suffix)).as_str())
        };
        let attestations = attestation_types(&store, repository, digest);
        let mut item = ImageEvidence {
            reference: image.name.clone(),
            digest: digest.to_string(),
            signed: has("sig"),
            attested: has("att"),
            sbom: attestations
                .iter()
                .any(|t| t == dsse::PREDICATE_CYCLONEDX || t == dsse::PREDICATE_SPDX),
            vulnerability_scan: attestations.iter().any(|t| t == dsse::PREDICATE_VULN),
            attestations,
            in_use: in_use
                .iter()
                .filter(|i| **i == image.name || **i == digest.to_string())
                .count() as u64,
            admission: "unchecked".to_string(),
            rules: Vec::new(),
            reason: None,
            verified_attestations: Vec::new(),
            created: None,
            age_days: None,
        };
        if let Some(created) = created(&store, digest) {
            item.age_days = SystemTime::now()
                .duration_since(created)
                .ok()
                .map(|d| d.as_secs() / 86_400);
            item.created = Some(humantime::format_rfc3339_seconds(created).to_string());
        }
        if let Some(policy) = &policy {
            judge(&store, policy, &mut item)?;
        }
        evidence.images.push(item);
    }
    Ok(evidence)
}

fn judge(
    store: &Store,
    policy: &LoadedPolicy,
    item: &mut ImageEvidence,
) -> Result<(), ComplianceError> {
    let reference: Reference = match item.reference.parse() {
        Ok(r) => r,
        Err(e) => {
            item.admission = "refused".to_string();
            item.reason = Some(format!("the stored name is not a valid reference: {e}"));
            return Ok(());
        }
    };
    match admission::verify(store, &reference, policy, ztee_supply::now()) {
        Ok(record) => {
            item.admission = "admitted".to_string();
            item.rules = record.rules.iter().map(|r| r.rule.clone()).collect();
            item.verified_attestations = record
                .rules
                .iter()
                .flat_map(|r| r.attestations.iter().map(|a| a.predicate_type.clone()))
                .collect();
        }
        Err(AdmissionError::Denied(denial)) => {
            item.admission = "refused".to_string();
            item.rules = vec![denial.rule];
            item.reason = Some(denial.reason);
        }
        Err(AdmissionError::Failed(e)) => return Err(e.into()),
    }
    Ok(())
}

/// Predicate types of the attestations stored for `digest`, from their layer annotations.
fn attestation_types(store: &Store, repository: &str, digest: &ztee_supply::Digest) -> Vec<String> {
    let tag = format!("{repository}:{}", digest.cosign_tag("att"));
    let Ok(Some(descriptor)) = store.lookup_tag(&tag) else {
        return Vec::new();
    };
    let Ok((manifest, _)) = store.manifest(&descriptor.digest) else {
        return Vec::new();
    };
    let mut types: Vec<String> = manifest
        .layers
        .iter()
        .filter_map(|l| l.annotations.get(dsse::ANNOTATION_PREDICATE_TYPE).cloned())
        .collect();
    types.sort();
    types.dedup();
    types
}

/// The image of every sandbox the gateway's state database says is running.
fn images_in_use(installation: &Installation) -> Result<Vec<String>, ComplianceError> {
    let path = ztee_state::state_db_path(&installation.data_dir);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let store =
        ztee_state::Store::open(&path).map_err(|e| ComplianceError::State(e.to_string()))?;
    let sandboxes = store
        .sandboxes(None)
        .map_err(|e| ComplianceError::State(e.to_string()))?;
    Ok(sandboxes.into_iter().map(|s| s.image).collect())
}

/// The image config's `created` time; images without one (or with a bad one) have no age.
fn created(store: &Store, digest: &ztee_supply::Digest) -> Option<SystemTime> {
    let (manifest, _) = store.manifest(digest).ok()?;
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&manifest.config.digest).ok()?).ok()?;
    humantime::parse_rfc3339_weak(config.get("created")?.as_str()?).ok()
}
