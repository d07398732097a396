//! DSSE envelopes carrying in-toto statements: cosign's attestation format. Attestations are
//! stored as layers (`application/vnd.dsse.envelope.v1+json`, annotated with their
//! `predicateType`) of the manifest tagged `sha256-<hex>.att`, as `cosign attest` stores them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::keys;
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::sign::add_attachment_layer;
use crate::store::Store;

pub const PAYLOAD_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
pub const MEDIA_TYPE_DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const ANNOTATION_PREDICATE_TYPE: &str = "predicateType";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";

pub const PREDICATE_CYCLONEDX: &str = "https://cyclonedx.org/bom";
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";
pub const PREDICATE_VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub kind: String,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub subject: Vec<Subject>,
    pub predicate: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: std::collections::BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

pub fn seal(statement: &Statement, key: &SigningKey) -> Result<Envelope> {
    let payload =
        serde_json::to_vec(statement).map_err(|e| Error::malformed("in-toto statement", e))?;
    let signature: Signature = key.sign(&pae(PAYLOAD_TYPE_IN_TOTO, &payload));
    Ok(Envelope {
        payload_type: PAYLOAD_TYPE_IN_TOTO.to_string(),
        payload: B64.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: B64.encode(signature.to_der().as_bytes()),
        }],
    })
}

/// Checks an envelope's signature by one of `keys` and returns its statement and the key id.
pub fn open(envelope: &Envelope, keys: &[VerifyingKey]) -> Result<(Statement, String)> {
    if envelope.payload_type != PAYLOAD_TYPE_IN_TOTO {
        return Err(Error::Verification(format!(
            "attestation payload type is {:?}",
            envelope.payload_type
        )));
    }
    let payload = B64
        .decode(&envelope.payload)
        .map_err(|_| Error::Verification("attestation payload is not base64".into()))?;
    let message = pae(&envelope.payload_type, &payload);
    for sig in &envelope.signatures {
        let Ok(der) = B64.decode(&sig.sig) else {
            continue;
        };
        let Ok(signature) = Signature::from_der(&der).or_else(|_| Signature::from_slice(&der))
        else {
            continue;
        };
        if let Some(key) = keys.iter().find(|k| k.verify(&message, &signature).is_ok()) {
            let statement: Statement = serde_json::from_slice(&payload).map_err(|e| {
                Error::Verification(format!("attestation is not an in-toto statement: {e}"))
            })?;
            return Ok((statement, keys::key_id(key)));
        }
    }
    Err(Error::Verification(
        "attestation not signed by a trusted key".into(),
    ))
}

/// Attests `predicate` of `predicate_type` about the image `reference` resolves to. An earlier
/// attestation of the same type by the same key is replaced.
pub fn attest(
    store: &Store,
    reference: &Reference,
    key: &SigningKey,
    predicate_type: &str,
    predicate: serde_json::Value,
) -> Result<Digest> {
    let descriptor = store.resolve(reference)?;
    let statement = Statement {
        kind: STATEMENT_TYPE.to_string(),
        predicate_type: predicate_type.to_string(),
        subject: vec![Subject {
            name: reference.name(),
            digest: [("sha256".to_string(), descriptor.digest.hex().to_string())].into(),
        }],
        predicate,
    };
    let envelope = seal(&statement, key)?;
    let bytes = serde_json::to_vec(&envelope).map_err(|e| Error::malformed("DSSE envelope", e))?;
    let mut layer = Descriptor::new(MEDIA_TYPE_DSSE, &bytes);
    layer.annotations.insert(
        ANNOTATION_PREDICATE_TYPE.to_string(),
        predicate_type.to_string(),
    );
    let verifying = *key.verifying_key();
    add_attachment_layer(
        store,
        &reference.name(),
        &descriptor.digest,
        "att",
        layer,
        &bytes,
        |existing| {
            existing
                .annotations
                .get(ANNOTATION_PREDICATE_TYPE)
                .map(String::as_str)
                == Some(predicate_type)
                && store
                    .read_blob(&existing.digest)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Envelope>(&b).ok())
                    .is_some_and(|env| open(&env, &[verifying]).is_ok())
        },
    )?;
    Ok(descriptor.digest)
}

/// A verified attestation about an image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifiedAttestation {
    pub predicate_type: String,
    pub key_id: String,
    pub predicate: serde_json::Value,
}

/// Every attestation of `digest` (under repository `name`) that a trusted key signed and whose
/// subject is exactly this digest. Attestations that fail are skipped with a logged reason.
pub fn verified_attestations(
    store: &Store,
    name: &str,
    digest: &Digest,
    keys: &[VerifyingKey],
) -> Result<Vec<VerifiedAttestation>> {
    let tag = format!("{name}:{}", digest.cosign_tag("att"));
    let Some(descriptor) = store.lookup_tag(&tag)? else {
        return Ok(Vec::new());
    };
    let (manifest, _) = store.manifest(&descriptor.digest)?;
    let mut out = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == MEDIA_TYPE_DSSE)
    {
        let result = store.read_blob(&layer.digest).and_then(|bytes| {
            let envelope: Envelope = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Verification(format!("not a DSSE envelope: {e}")))?;
            open(&envelope, keys)
        });
        match result {
            Ok((statement, key_id)) => {
                let about_this = statement
                    .subject
                    .iter()
                    .any(|s| s.digest.get("sha256").map(String::as_str) == Some(digest.hex()));
                if !about_this {
                    tracing::warn!(layer = %layer.digest, "attestation subject is another image; ignored");
                    continue;
                }
                out.push(VerifiedAttestation {
                    predicate_type: statement.predicate_type,
                    key_id,
                    predicate: statement.predicate,
                });
            }
            Err(e) => {
                tracing::debug!(layer = %layer.digest, error = %e, "attestation not verified with the trusted keys")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol description: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn seals_and_opens_and_rejects_other_keys() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let other = SigningKey::random(&mut rand_core::OsRng);
        let statement = Statement {
            kind: STATEMENT_TYPE.into(),
            predicate_type: PREDICATE_VULN.into(),
            subject: vec![],
            predicate: serde_json::json!({"a": 1}),
        };
        let env = seal(&statement, &key).unwrap();
        assert!(open(&env, &[*key.verifying_key()]).is_ok());
        assert!(open(&env, &[*other.verifying_key()]).is_err());
        let mut tampered = env.clone();
        tampered.payload =
            B64.encode(br#"{"_type":"x","predicateType":"y","subject":[],"predicate":{}}"#);
        assert!(open(&tampered, &[*key.verifying_key()]).is_err());
    }
}
