//! Admission: the check that stands between an image reference and a booted VM.
//!
//! A policy is written in the shape of Kyverno's `verifyImages` rules (image reference
//! patterns, attestors holding public keys, required attestations with conditions). [`admit`]
//! resolves the reference to a digest once, re-checks every blob against its digest, verifies
//! signatures and attestations against the policy, builds (or re-checks) the read-only erofs
//! image of the root filesystem, and only then returns a [`VerifiedImage`] — a type nothing
//! else can construct, which is what the VM engine boots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::dsse::{self, VerifiedAttestation};
use crate::error::{Error, Result};
use crate::keys;
use crate::reference::Reference;
use crate::rootfs::RootfsBuilder;
use crate::sign::{self, VerifiedSignature};
use crate::store::Store;

// ---------------------------------------------------------------------------------------------
// Policy file

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: PolicyMetadata,
    pub spec: PolicySpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PolicyMetadata {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Only `Enforce` is meaningful to ztee: an image that fails is never booted.
    #[serde(default)]
    pub validation_failure_action: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub name: String,
    /// Kubernetes resource matching; images are matched by `imageReferences` instead.
    #[serde(default, rename = "match")]
    pub match_resources: Option<serde_json::Value>,
    pub verify_images: Vec<VerifyImages>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyImages {
    pub image_references: Vec<String>,
    #[serde(default)]
    pub attestors: Vec<AttestorSet>,
    #[serde(default)]
    pub attestations: Vec<AttestationRule>,
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub verify_digest: Option<bool>,
    #[serde(default)]
    pub mutate_digest: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorSet {
    /// How many entries must verify; all of them when absent.
    #[serde(default)]
    pub count: Option<usize>,
    pub entries: Vec<AttestorEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorEntry {
    pub keys: KeyAttestor,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAttestor {
    /// A PEM public key, or a path to one (relative to the policy file).
    pub public_keys: String,
    /// ztee never contacts a transparency log; `rekor.ignoreTlog: true` is implied.
    #[serde(default)]
    pub rekor: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationRule {
    #[serde(rename = "type", alias = "predicateType")]
    pub predicate_type: String,
    #[serde(default)]
    pub conditions: Vec<ConditionBlock>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionBlock {
    #[serde(default)]
    pub all: Vec<Condition>,
    #[serde(default)]
    pub any: Vec<Condition>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    pub operator: String,
    pub value: serde_json::Value,
    #[serde(default)]
    pub message: Option<String>,
}

/// A policy together with the keys it names, loaded and checked once.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    pub path: String,
    pub sha256: String,
    pub policy: Policy,
    keys: BTreeMap<String, VerifyingKey>,
}

const OPERATORS: &[&str] = &[
    "Equals",
    "NotEquals",
    "LessThan",
    "LessThanOrEquals",
    "GreaterThan",
    "GreaterThanOrEquals",
];

impl LoadedPolicy {
    pub fn load(path: &Path) -> Result<LoadedPolicy> {
        let origin = path.display().to_string();
        let bad = |reason: String| Error::Policy {
            path: origin.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading policy", path, e))?;
        let policy: Policy = serde_norway::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if let Some(action) = &policy.spec.validation_failure_action {
            if !action.eq_ignore_ascii_case("enforce") {
                return Err(bad(format!(
                    "validationFailureAction {action:?}: ztee only enforces (use Enforce)"
                )));
            }
        }
        if policy.spec.rules.is_empty() {
            return Err(bad(
                "spec.rules is empty: no image could ever be admitted".into()
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut keys = BTreeMap::new();
        for rule in &policy.spec.rules {
            for (i, vi) in rule.verify_images.iter().enumerate() {
                let at = format!("rule {:?} verifyImages[{i}]", rule.name);
                if vi.image_references.is_empty() {
                    return Err(bad(format!("{at}: imageReferences is empty")));
                }
                if vi.attestors.is_empty() {
                    return Err(bad(format!(
                        "{at}: no attestors: an unsigned image would pass"
                    )));
                }
                for set in &vi.attestors {
                    if set.entries.is_empty()
                        || set.count.is_some_and(|c| c == 0 || c > set.entries.len())
                    {
                        return Err(bad(format!("{at}: an attestor set needs entries and a count between 1 and their number")));
                    }
                    for entry in &set.entries {
                        let text = &entry.keys.public_keys;
                        let key = if text.contains("-----BEGIN") {
                            keys::parse_public_key(text, &format!("{origin}: {at}"))?
                        } else {
                            keys::load_verifying_key(&base.join(text.trim()))?
                        };
                        keys.insert(text.clone(), key);
                    }
                }
                for a in &vi.attestations {
                    for block in &a.conditions {
                        for c in block.all.iter().chain(&block.any) {
                            if !OPERATORS.contains(&c.operator.as_str()) {
                                return Err(bad(format!(
                                    "{at}: operator {:?} is not one of {OPERATORS:?}",
                                    c.operator
                                )));
                            }
                            Expr::parse(&c.key).map_err(|e| bad(format!("{at}: {e}")))?;
                        }
                    }
                }
            }
        }
        Ok(LoadedPolicy {
            path: origin,
            sha256: hex::encode(Sha256::digest(&bytes)),
            policy,
            keys,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions: the subset of Kyverno's JMESPath keys admission needs.

enum Expr {
    Path(Vec<String>),
    TimeSince(Vec<String>),
}

impl Expr {
    /// `{{ a.b.c }}` or `{{ time_since('', a.b, '') }}` (the inner path may itself be wrapped in
    /// quotes and braces, as Kyverno policies write it).
    fn parse(key: &str) -> std::result::Result<Expr, String> {
        let inner = key
            .trim()
            .strip_prefix("{{")
            .and_then(|k| k.strip_suffix("}}"))
            .ok_or_else(|| format!("key {key:?} must be a {{{{ ... }}}} expression"))?
            .trim();
        let path = |p: &str| -> std::result::Result<Vec<String>, String> {
            let p = p.trim().trim_matches('\'').trim();
            let p = p
                .strip_prefix("{{")
                .and_then(|x| x.strip_suffix("}}"))
                .unwrap_or(p)
                .trim();
            if p.is_empty()
                || !p.split('.').all(|s| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
            {
                return Err(format!("{p:?} is not a dotted field path"));
            }
            Ok(p.split('.').map(str::to_string).collect())
        };
        if let Some(args) = inner
            .strip_prefix("time_since(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let parts: Vec<&str> = args.split(',').collect();
            if parts.len() != 3
                || !parts[0].trim().trim_matches('\'').is_empty()
                || !parts[2].trim().trim_matches('\'').is_empty()
            {
                return Err("time_since takes ('', <timestamp field>, '') (time since that moment, until now)".into());
            }
            return Ok(Expr::TimeSince(path(parts[1])?));
        }
        Ok(Expr::Path(path(inner)?))
    }
}

#[derive(Debug)]
enum Operand {
    Number(f64),
    Seconds(f64),
    Text(String),
}

fn lookup<'a>(v: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Go-style durations as Kyverno writes them: `168h`, `30m`, `1h30m`, `45s`.
fn parse_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut number = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
        } else {
            let n: f64 = number.parse().ok()?;
            number.clear();
            total += n * match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return None,
            };
        }
    }
    number.is_empty().then_some(total)
}

fn evaluate(
    c: &Condition,
    predicate: &serde_json::Value,
    now: time::OffsetDateTime,
) -> std::result::Result<(), String> {
    let expr = Expr::parse(&c.key)?;
    let left = match &expr {
        Expr::Path(p) => match lookup(predicate, p) {
            Some(serde_json::Value::Number(n)) => Operand::Number(n.as_f64().unwrap_or(f64::NAN)),
            Some(serde_json::Value::String(s)) => Operand::Text(s.clone()),
            Some(serde_json::Value::Bool(b)) => Operand::Text(b.to_string()),
            Some(serde_json::Value::Null) | None => {
                return Err(format!("{} is not in the attestation", p.join(".")))
            }
            Some(other) => Operand::Text(other.to_string()),
        },
        Expr::TimeSince(p) => {
            let stamp = lookup(predicate, p)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{} is not in the attestation", p.join(".")))?;
            let then =
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| format!("{} = {stamp:?} is not an RFC 3339 time", p.join(".")))?;
            Operand::Seconds((now - then).as_seconds_f64())
        }
    };
    let right = match (&left, &c.value) {
        (Operand::Seconds(_), serde_json::Value::String(s)) => Operand::Seconds(
            parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 168h"))?,
        ),
        (_, serde_json::Value::Number(n)) => Operand::Number(n.as_f64().unwrap_or(f64::NAN)),
        (_, serde_json::Value::String(s)) => s
            .parse::<f64>()
            .map(Operand::Number)
            .unwrap_or_else(|_| Operand::Text(s.clone())),
        (_, serde_json::Value::Bool(b)) => Operand::Text(b.to_string()),
        (_, other) => Operand::Text(other.to_string()),
    };
    let ordering = match (&left, &right) {
        (Operand::Number(a), Operand::Number(b)) | (Operand::Seconds(a), Operand::Seconds(b)) => {
            a.partial_cmp(b)
        }
        (Operand::Text(a), Operand::Text(b)) => Some(a.cmp(b)),
        (Operand::Text(a), Operand::Number(b)) => {
            a.parse::<f64>().ok().and_then(|a| a.partial_cmp(b))
        }
        _ => None,
    }
    .ok_or_else(|| format!("cannot compare {left:?} with {right:?}"))?;
    use std::cmp::Ordering::*;
    let ok = match c.operator.as_str() {
        "Equals" => ordering == Equal,
        "NotEquals" => ordering != Equal,
        "LessThan" => ordering == Less,
        "LessThanOrEquals" => ordering != Greater,
        "GreaterThan" => ordering == Greater,
        "GreaterThanOrEquals" => ordering != Less,
        other => return Err(format!("unknown operator {other}")),
    };
    if ok {
        Ok(())
    } else {
        let shown = match left {
            Operand::Seconds(s) => format!("{:.1}h", s / 3600.0),
            Operand::Number(n) => n.to_string(),
            Operand::Text(t) => format!("{t:?}"),
        };
        Err(c.message.clone().unwrap_or_else(|| {
            format!(
                "{} {} {} is false (it is {shown})",
                c.key, c.operator, c.value
            )
        }))
    }
}

fn conditions_hold(
    blocks: &[ConditionBlock],
    predicate: &serde_json::Value,
    now: time::OffsetDateTime,
) -> std::result::Result<(), String> {
    for block in blocks {
        for c in &block.all {
            evaluate(c, predicate, now)?;
        }
        if !block.any.is_empty() {
            let errors: Vec<String> = block
                .any
                .iter()
                .filter_map(|c| evaluate(c, predicate, now).err())
                .collect();
            if errors.len() == block.any.len() {
                return Err(format!(
                    "none of the `any` conditions hold: {}",
                    errors.join("; ")
                ));
            }
        }
    }
    Ok(())
}

/// `*` matches any run of characters, as in Kyverno's image reference patterns.
/// Whether a signature's claimed `docker-reference` covers `reference`: the same repository, or
/// a name the rule's `imageReferences` pattern admits (as a signer's custom identity may be).
fn signed_for(docker_reference: &str, reference: &Reference, pattern: &str) -> bool {
    if docker_reference == reference.name() {
        return true;
    }
    match docker_reference.parse::<Reference>() {
        Ok(signed) => {
            signed.name() == reference.name()
                || wildcard_match(pattern, docker_reference)
                || wildcard_match(pattern, &signed.to_string())
        }
        Err(_) => false,
    }
}

fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == t[ti] || p[pi] == b'?') {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// Why an image was refused: the rule that failed and what failed in it.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("image {reference} refused by policy rule {rule:?}: {reason}")]
pub struct Denial {
    pub reference: String,
    pub digest: Option<Digest>,
    pub rule: String,
    pub reason: String,
}

/// What admission checked, for the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub reference: String,
    pub digest: Digest,
    pub policy: String,
    pub policy_name: String,
    pub policy_sha256: String,
    pub rules: Vec<RuleOutcome>,
    pub decided_at: String,
    pub rootfs_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleOutcome {
    pub rule: String,
    pub image_reference_pattern: String,
    pub signatures: Vec<VerifiedSignature>,
    pub attestations: Vec<AttestationOutcome>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestationOutcome {
    pub predicate_type: String,
    pub key_id: String,
}

/// An image that passed admission: its manifest digest, a read-only erofs image of its root
/// filesystem built from exactly that digest's layers, and the record of what was verified.
/// Its fields are private and it has no public constructor: only [`admit`] makes one.
#[derive(Debug)]
pub struct VerifiedImage {
    digest: Digest,
    rootfs: PathBuf,
    record: VerificationRecord,
}

impl VerifiedImage {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The erofs image of the root filesystem (read-only; attach it read-only).
    pub fn rootfs_image(&self) -> &Path {
        &self.rootfs
    }

    pub fn record(&self) -> &VerificationRecord {
        &self.record
    }
}

/// Either a denial (policy said no) or an operational error (store, disk, mkfs.erofs).
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error(transparent)]
    Failed(#[from] Error),
}

fn deny(
    reference: &Reference,
    digest: Option<&Digest>,
    rule: &str,
    reason: impl Into<String>,
) -> AdmissionError {
    AdmissionError::Denied(Denial {
        reference: reference.to_string(),
        digest: digest.cloned(),
        rule: rule.to_string(),
        reason: reason.into(),
    })
}

/// The signature and attestation checks of admission, without building the root filesystem
/// (`ztee image verify`).
pub fn verify(
    store: &Store,
    reference: &Reference,
    policy: &LoadedPolicy,
    now: time::OffsetDateTime,
) -> Result<VerificationRecord, AdmissionError> {
    // Resolve once; everything below is about this digest only.
    let descriptor = store
        .resolve(reference)
        .map_err(|e| deny(reference, None, "(resolve)", e.to_string()))?;
    let digest = descriptor.digest.clone();
    let integrity = |reason: String| deny(reference, Some(&digest), "(integrity)", reason);
    let (manifest, _) = store
        .manifest(&digest)
        .map_err(|e| integrity(e.to_string()))?;
    store
        .verify_blob(&manifest.config.digest)
        .map_err(|e| integrity(format!("config: {e}")))?;
    for layer in &manifest.layers {
        store
            .verify_blob(&layer.digest)
            .map_err(|e| integrity(format!("layer: {e}")))?;
    }

    let forms = [
        reference.to_string(),
        format!(
            "{}:{}",
            reference.name(),
            reference.tag_or_latest().unwrap_or("")
        ),
        format!("{}@{digest}", reference.name()),
    ];
    let mut outcomes = Vec::new();
    for rule in &policy.policy.spec.rules {
        for vi in &rule.verify_images {
            let Some(pattern) = vi
                .image_references
                .iter()
                .find(|p| forms.iter().any(|f| wildcard_match(p, f)))
            else {
                continue;
            };
            let mut signatures = Vec::new();
            let mut trusted = Vec::new();
            for (si, set) in vi.attestors.iter().enumerate() {
                let mut passed = 0;
                let mut reasons = Vec::new();
                for entry in &set.entries {
                    let Some(key) = policy.keys.get(&entry.keys.public_keys) else {
                        continue;
                    };
                    match sign::verify(store, &reference.name(), &digest, std::slice::from_ref(key))
                    {
                        Ok(found) => {
                            // A signature vouches for the digest under the name it claims; one
                            // made for another repository does not admit this one.
                            let (named, elsewhere): (Vec<_>, Vec<_>) =
                                found.into_iter().partition(|sig| {
                                    signed_for(&sig.docker_reference, reference, pattern)
                                });
                            if named.is_empty() {
                                reasons.extend(elsewhere.iter().map(|sig| {
                                    format!(
                                        "the signature names docker-reference {:?}, which is neither {} nor matched by imageReferences {pattern:?}",
                                        sig.docker_reference,
                                        reference.name()
                                    )
                                }));
                                continue;
                            }
                            passed += 1;
                            signatures.extend(named);
                            trusted.push(*key);
                        }
                        Err(e) => reasons.push(e.to_string()),
                    }
                }
                let needed = set.count.unwrap_or(set.entries.len());
                if passed < needed {
                    return Err(deny(
                        reference,
                        Some(&digest),
                        &rule.name,
                        format!("attestors[{si}]: {passed} of {needed} required signatures verified: {}", reasons.join("; ")),
                    ));
                }
            }
            let attestations =
                dsse::verified_attestations(store, &reference.name(), &digest, &trusted)
                    .map_err(|e| deny(reference, Some(&digest), &rule.name, e.to_string()))?;
            let mut att_outcomes = Vec::new();
            for required in &vi.attestations {
                let candidates: Vec<&VerifiedAttestation> = attestations
                    .iter()
                    .filter(|a| a.predicate_type == required.predicate_type)
                    .collect();
                if candidates.is_empty() {
                    return Err(deny(
                        reference,
                        Some(&digest),
                        &rule.name,
                        format!(
                            "required attestation {} is missing (or not signed by a trusted key)",
                            required.predicate_type
                        ),
                    ));
                }
                let mut failures = Vec::new();
                let ok = candidates.iter().find(|a| {
                    match conditions_hold(&required.conditions, &a.predicate, now) {
                        Ok(()) => true,
                        Err(e) => {
                            failures.push(e);
                            false
                        }
                    }
                });
                match ok {
                    Some(a) => att_outcomes.push(AttestationOutcome {
                        predicate_type: a.predicate_type.clone(),
                        key_id: a.key_id.clone(),
                    }),
                    None => {
                        return Err(deny(
                            reference,
                            Some(&digest),
                            &rule.name,
                            format!(
                                "attestation {}: {}",
                                required.predicate_type,
                                failures.join("; ")
                            ),
                        ))
                    }
                }
            }
            outcomes.push(RuleOutcome {
                rule: rule.name.clone(),
                image_reference_pattern: pattern.clone(),
                signatures,
                attestations: att_outcomes,
            });
        }
    }
    if outcomes.is_empty() {
        return Err(deny(
            reference,
            Some(&digest),
            "(no matching rule)",
            "no verifyImages rule covers this image; images are denied by default",
        ));
    }
    Ok(VerificationRecord {
        reference: reference.to_string(),
        digest,
        policy: policy.path.clone(),
        policy_name: policy.policy.metadata.name.clone(),
        policy_sha256: policy.sha256.clone(),
        rules: outcomes,
        decided_at: crate::sbom::cyclonedx::now_rfc3339(),
        rootfs_sha256: String::new(),
    })
}

/// Full admission: [`verify`], then the erofs root filesystem for the verified digest, built by
/// the jailed helper `builder` starts (see [`crate::rootfs`]).
pub fn admit(
    store: &Store,
    data_dir: &Path,
    reference: &Reference,
    policy: &LoadedPolicy,
    now: time::OffsetDateTime,
    builder: &RootfsBuilder,
) -> Result<VerifiedImage, AdmissionError> {
    let mut record = verify(store, reference, policy, now)?;
    let (rootfs, sha) = rootfs_image(builder, store, data_dir, &record.digest)?;
    record.rootfs_sha256 = sha;
    tracing::info!(%reference, digest = %record.digest, "image admitted");
    Ok(VerifiedImage {
        digest: record.digest.clone(),
        rootfs,
        record,
    })
}

/// The admission policy file a data directory holds when none is named.
pub const POLICY_FILE: &str = "admission.yaml";

/// Why [`admit_from_data_dir`] gave no image. Each stage has its own variant, so a caller can
/// tell a request's mistake (a bad reference, a refused image) from a node's (no policy, a
/// broken store) and answer each in its own way.
#[derive(Debug, thiserror::Error)]
pub enum DataDirAdmissionError {
    /// The text is not an image reference.
    #[error("image {reference:?}: {source}")]
    Reference {
        reference: String,
        #[source]
        source: Error,
    },
    /// There is no policy file, so nothing but the default image may boot.
    #[error("no admission policy at {}", .path.display())]
    NoPolicy { path: PathBuf },
    /// The policy file exists but cannot be loaded.
    #[error("admission policy: {0}")]
    Policy(#[source] Error),
    /// The image store cannot be opened.
    #[error("image store: {0}")]
    Store(#[source] Error),
    /// No unpack helper was given, and admission never builds a root filesystem in-process.
    #[error(
        "no rootfs unpack helper is configured, so an image's root filesystem cannot be built"
    )]
    NoBuilder,
    /// The policy refused the image.
    #[error(transparent)]
    Denied(Denial),
    /// Admission itself failed (store, disk, the unpack helper).
    #[error("admission: {0}")]
    Failed(#[source] Error),
}

impl From<AdmissionError> for DataDirAdmissionError {
    fn from(err: AdmissionError) -> Self {
        match err {
            AdmissionError::Denied(denial) => DataDirAdmissionError::Denied(denial),
            AdmissionError::Failed(err) => DataDirAdmissionError::Failed(err),
        }
    }
}

/// Admission of `reference` from the store under `data_dir`, against `policy_file` or else
/// `<data_dir>/admission.yaml`: what `ztee run --image` and the gateway both do before booting
/// an image. Without a policy file nothing is admitted. The builder is asked for only once the
/// policy and store are in place, so a node without a helper still reports a missing policy
/// as such.
pub fn admit_from_data_dir(
    data_dir: &Path,
    policy_file: Option<&Path>,
    reference: &str,
    builder: Option<&RootfsBuilder>,
    now: time::OffsetDateTime,
) -> Result<VerifiedImage, DataDirAdmissionError> {
    let parsed: Reference =
        reference
            .parse()
            .map_err(|source| DataDirAdmissionError::Reference {
                reference: reference.to_string(),
                source,
            })?;
    let policy_path = policy_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(POLICY_FILE));
    if !policy_path.is_file() {
        return Err(DataDirAdmissionError::NoPolicy { path: policy_path });
    }
    let policy = LoadedPolicy::load(&policy_path).map_err(DataDirAdmissionError::Policy)?;
    let store = Store::open(data_dir).map_err(DataDirAdmissionError::Store)?;
    let builder = builder.ok_or(DataDirAdmissionError::NoBuilder)?;
    Ok(admit(&store, data_dir, &parsed, &policy, now, builder)?)
}

/// The erofs image for `digest`, built (by the jailed helper `builder` starts, never in this
/// process) once and cached as `<data_dir>/rootfs/<hex>.erofs`; see [`RootfsBuilder::build`].
pub fn rootfs_image(
    builder: &RootfsBuilder,
    store: &Store,
    data_dir: &Path,
    digest: &Digest,
) -> Result<(PathBuf, String)> {
    builder.build(store, data_dir, digest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_without_policy_admits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // No builder either: the missing policy is what gets reported, not the helper.
        let err =
            admit_from_data_dir(dir.path(), None, "python:1", None, crate::now()).unwrap_err();
        match err {
            DataDirAdmissionError::NoPolicy { path } => {
                assert_eq!(path, dir.path().join(POLICY_FILE));
            }
            other => panic!("expected no policy, got {other:?}"),
        }

        // An explicit policy file that is not there is no policy either, even when the data
        // dir holds one.
        std::fs::write(dir.path().join(POLICY_FILE), "not a policy").unwrap();
        let missing = dir.path().join("elsewhere.yaml");
        let err = admit_from_data_dir(dir.path(), Some(&missing), "python:1", None, crate::now())
            .unwrap_err();
        assert!(
            matches!(&err, DataDirAdmissionError::NoPolicy { path } if path == &missing),
            "{err:?}"
        );
        assert!(err.to_string().contains("no admission policy at"), "{err}");

        // The data dir's own file is read when none is named, and a broken one is the node's
        // fault, not a refusal.
        let err =
            admit_from_data_dir(dir.path(), None, "python:1", None, crate::now()).unwrap_err();
        assert!(matches!(err, DataDirAdmissionError::Policy(_)), "{err:?}");
    }

    #[test]
    fn data_dir_admission_rejects_a_bad_reference_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let err = admit_from_data_dir(dir.path(), None, "Not A/Reference!", None, crate::now())
            .unwrap_err();
        match &err {
            DataDirAdmissionError::Reference { reference, .. } => {
                assert_eq!(reference, "Not A/Reference!");
            }
            other => panic!("expected a bad reference, got {other:?}"),
        }
        assert!(
            err.to_string().starts_with("image \"Not A/Reference!\": "),
            "{err}"
        );
    }

    #[test]
    fn wildcards_and_durations() {
        assert!(wildcard_match(
            "registry.example/vm/*",
            "registry.example/vm/python:1"
        ));
        assert!(wildcard_match("python:*", "python:1"));
        assert!(!wildcard_match("python:*", "evil/python:1"));
        assert_eq!(parse_duration("168h"), Some(168.0 * 3600.0));
        assert_eq!(parse_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_duration("7d"), None);
    }

    #[test]
    fn conditions_compare_numbers_and_ages() {
        let now = time::OffsetDateTime::parse(
            "2026-06-10T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let predicate = serde_json::json!({"metadata": {"scanFinishedOn": "2026-06-01T00:00:00Z"}, "scanner": {"result": {"max_cvss": 5.0}}});
        let cond = |key: &str, op: &str, value: serde_json::Value| Condition {
            key: key.into(),
            operator: op.into(),
            value,
            message: None,
        };
        assert!(evaluate(
            &cond(
                "{{ scanner.result.max_cvss }}",
                "LessThan",
                serde_json::json!(7.0)
            ),
            &predicate,
            now
        )
        .is_ok());
        assert!(evaluate(
            &cond(
                "{{ scanner.result.max_cvss }}",
                "GreaterThan",
                serde_json::json!(7.0)
            ),
            &predicate,
            now
        )
        .is_err());
        let age = "{{ time_since('', '{{ metadata.scanFinishedOn }}', '') }}";
        assert!(evaluate(
            &cond(age, "LessThanOrEquals", serde_json::json!("240h")),
            &predicate,
            now
        )
        .is_ok());
        let err = evaluate(
            &cond(age, "LessThanOrEquals", serde_json::json!("168h")),
            &predicate,
            now,
        )
        .unwrap_err();
        assert!(err.contains("216.0h"), "{err}");
        assert!(evaluate(
            &cond("{{ missing.field }}", "Equals", serde_json::json!(1)),
            &predicate,
            now
        )
        .is_err());
        assert!(Expr::parse("scanner.result").is_err());
    }
}
