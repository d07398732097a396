//! Cosign-compatible image signatures. A signature is a "simple signing" JSON payload naming the
//! manifest digest, signed with ECDSA P-256/SHA-256 (ASN.1 DER, base64), stored as a layer of an
//! OCI manifest tagged `sha256-<hex>.sig` in the image's repository — byte-for-byte the layout
//! `cosign sign --key` produces, so `cosign verify --key` and `skopeo`'s `sigstoreSigned` policy
//! read it, and ztee reads theirs. No transparency log is contacted.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::keys;
use crate::oci::{self, Descriptor, ImageManifest};
use crate::reference::Reference;
use crate::store::Store;

pub const MEDIA_TYPE_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimpleSigning {
    pub critical: Critical,
    #[serde(default)]
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: ImageClaim,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageClaim {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// One signature that verified.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VerifiedSignature {
    pub key_id: String,
    pub docker_reference: String,
    pub manifest_digest: Digest,
}

/// Adds a layer to the cosign attachment manifest (`.sig` or `.att`) of `digest` under `name`,
/// creating the manifest if there is none. `replace` decides which existing layers the new one
/// supersedes.
pub(crate) fn add_attachment_layer(
    store: &Store,
    name: &str,
    digest: &Digest,
    suffix: &str,
    layer: Descriptor,
    layer_bytes: &[u8],
    replace: impl Fn(&Descriptor) -> bool,
) -> Result<Descriptor> {
    let tag = format!("{name}:{}", digest.cosign_tag(suffix));
    let mut layers: Vec<Descriptor> = match store.lookup_tag(&tag)? {
        Some(existing) => store.manifest(&existing.digest)?.0.layers,
        None => Vec::new(),
    };
    layers.retain(|l| !replace(l));
    store.put_blob(layer_bytes)?;
    layers.push(layer);
    // cosign's attachment config: an empty image whose rootfs lists the layer digests.
    let config = serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
    });
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| Error::malformed("attachment config", e))?;
    store.put_blob(&config_bytes)?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: Descriptor::new(oci::MEDIA_TYPE_OCI_CONFIG, &config_bytes),
        layers,
        annotations: BTreeMap::new(),
    };
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::malformed("attachment manifest", e))?;
    let descriptor = store.put_manifest(oci::MEDIA_TYPE_OCI_MANIFEST, &bytes)?;
    store.tag(&tag, descriptor.clone())?;
    Ok(descriptor)
}

/// Signs the image `reference` resolves to. `identity` is the `docker-reference` claimed in the
/// payload (default: the reference's repository name, e.g. `registry.example/vm/python`).
pub fn sign(
    store: &Store,
    reference: &Reference,
    key: &SigningKey,
    identity: Option<&str>,
    annotations: BTreeMap<String, serde_json::Value>,
) -> Result<Digest> {
    let descriptor = store.resolve(reference)?;
    store.manifest(&descriptor.digest)?;
    let payload = SimpleSigning {
        critical: Critical {
            identity: Identity {
                docker_reference: identity.map_or_else(|| reference.name(), str::to_string),
            },
            image: ImageClaim {
                docker_manifest_digest: descriptor.digest.to_string(),
            },
            kind: SIGNATURE_TYPE.to_string(),
        },
        optional: if annotations.is_empty() {
            None
        } else {
            Some(annotations)
        },
    };
    let payload_bytes =
        serde_json::to_vec(&payload).map_err(|e| Error::malformed("signature payload", e))?;
    let signature: Signature = key.sign(&payload_bytes);
    let mut layer = Descriptor::new(MEDIA_TYPE_SIMPLE_SIGNING, &payload_bytes);
    layer.annotations.insert(
        ANNOTATION_SIGNATURE.to_string(),
        B64.encode(signature.to_der().as_bytes()),
    );
    let signer = keys::key_id(key.verifying_key());
    // Re-signing with the same key replaces that key's old signature; other keys' stay.
    add_attachment_layer(
        store,
        &reference.name(),
        &descriptor.digest,
        "sig",
        layer,
        &payload_bytes,
        |existing| {
            signature_key(store, existing, key.verifying_key()).is_some_and(|id| id == signer)
        },
    )?;
    tracing::info!(%reference, digest = %descriptor.digest, key = %signer, "signed");
    Ok(descriptor.digest)
}

/// The id of `key` if `layer` is a signature that `key` made.
fn signature_key(store: &Store, layer: &Descriptor, key: &VerifyingKey) -> Option<String> {
    let sig = layer.annotations.get(ANNOTATION_SIGNATURE)?;
    let payload = store.read_blob(&layer.digest).ok()?;
    verify_raw(key, &payload, sig).ok()?;
    Some(keys::key_id(key))
}

fn verify_raw(key: &VerifyingKey, payload: &[u8], signature_b64: &str) -> Result<()> {
    let der = B64
        .decode(signature_b64.trim())
        .map_err(|_| Error::Verification("signature annotation is not base64".into()))?;
    let signature = Signature::from_der(&der)
        .or_else(|_| Signature::from_slice(&der))
        .map_err(|_| Error::Verification("signature is not an ECDSA P-256 signature".into()))?;
    key.verify(payload, &signature).map_err(|_| {
        Error::Verification("signature does not match the payload for this key".into())
    })
}

/// Verifies that the image `digest` (stored under repository `name`) carries at least one valid
/// cosign signature by one of `keys`. Every rejected signature contributes its reason to the error.
pub fn verify(
    store: &Store,
    name: &str,
    digest: &Digest,
    keys: &[VerifyingKey],
) -> Result<Vec<VerifiedSignature>> {
    let tag = format!("{name}:{}", digest.cosign_tag("sig"));
    let descriptor = store
        .lookup_tag(&tag)?
        .ok_or_else(|| Error::Verification(format!("no signature: {tag} is not in the store")))?;
    let (manifest, _) = store.manifest(&descriptor.digest)?;
    let mut verified = Vec::new();
    let mut reasons = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == MEDIA_TYPE_SIMPLE_SIGNING)
    {
        let Some(sig) = layer.annotations.get(ANNOTATION_SIGNATURE) else {
            reasons.push(format!(
                "layer {} has no {ANNOTATION_SIGNATURE} annotation",
                layer.digest
            ));
            continue;
        };
        let payload = match store.read_blob(&layer.digest) {
            Ok(p) => p,
            Err(e) => {
                reasons.push(e.to_string());
                continue;
            }
        };
        let Some(key) = keys.iter().find(|k| verify_raw(k, &payload, sig).is_ok()) else {
            reasons.push("signature does not verify with any trusted key (another signer, or the payload was changed)".to_string());
            continue;
        };
        let claims: SimpleSigning = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(e) => {
                reasons.push(format!("signed payload is not simple-signing JSON: {e}"));
                continue;
            }
        };
        if claims.critical.kind != SIGNATURE_TYPE {
            reasons.push(format!(
                "signed payload has type {:?}",
                claims.critical.kind
            ));
            continue;
        }
        if claims.critical.image.docker_manifest_digest != digest.to_string() {
            reasons.push(format!(
                "signature is for {}, not for {digest} (copied from another image?)",
                claims.critical.image.docker_manifest_digest
            ));
            continue;
        }
        verified.push(VerifiedSignature {
            key_id: keys::key_id(key),
            docker_reference: claims.critical.identity.docker_reference,
            manifest_digest: digest.clone(),
        });
    }
    if verified.is_empty() {
        if reasons.is_empty() {
            reasons.push("the signature manifest holds no signatures".into());
        }
        return Err(Error::Verification(format!(
            "no valid signature for {digest}: {}",
            reasons.join("; ")
        )));
    }
    Ok(verified)
}
