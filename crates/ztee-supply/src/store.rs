//! The local image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/..`) that
//! `skopeo copy oci:DIR:NAME` and other OCI tools read directly. Blobs are content-addressed and
//! checked against their digest every time they are read; tags are `index.json` entries named by
//! the `org.opencontainers.image.ref.name` annotation; unreferenced blobs are garbage-collected.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{write_atomic, Error, Result};
use crate::oci::{self, Descriptor, ImageIndex, ImageManifest, ANNOTATION_REF_NAME};
use crate::reference::Reference;

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// One tagged entry of the store.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredImage {
    pub name: String,
    pub descriptor: Descriptor,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub blobs_kept: usize,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir/oci`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        Store::open_layout(&data_dir.join("oci"))
    }

    /// Opens (creating if needed) an OCI image layout at exactly `root`.
    pub fn open_layout(root: &Path) -> Result<Store> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io("creating store", &blobs, e))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes` and returns their digest. Idempotent.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Streams `reader` into the store, hashing as it goes; if `expected` is given the content
    /// must hash to it, otherwise nothing is stored. Returns the digest and size.
    pub fn put_blob_reader(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let dir = self.root.join("blobs/sha256");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("creating temp blob in", &dir, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| Error::io("reading blob for", &dir, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Error::io("writing blob in", &dir, e))?;
            size += n as u64;
        }
        let digest = Digest::from_sha256(hasher.finalize().into());
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(Error::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let path = self.blob_path(&digest);
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io("syncing blob", &path, e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming blob into place", &path, e.error))?;
        Ok((digest, size))
    }

    /// Reads a blob and checks it still hashes to its name: a blob edited on disk is refused.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::malformed(format!("blob {digest}"), "missing from the local store")
            } else {
                Error::io("reading blob", &path, e)
            }
        })?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Checks a (possibly large) blob against its digest without loading it whole.
    pub fn verify_blob(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        let mut file = File::open(&path).map_err(|e| Error::io("opening blob", &path, e))?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| Error::io("reading blob", &path, e))?;
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(size)
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading store index", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::malformed(path.display().to_string(), e))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| Error::malformed("store index", e))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// Points the tag `name` (`repository:tag`, the form skopeo's `oci:` transport uses) at `descriptor`.
    pub fn tag(&self, name: &str, mut descriptor: Descriptor) -> Result<()> {
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        descriptor
            .annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        index.manifests.push(descriptor);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
        });
        self.write_index(&index)
    }

    /// Removes a tag. Blobs stay until [`Store::gc`].
    pub fn untag(&self, name: &str) -> Result<bool> {
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        let removed = index.manifests.len() != before;
        if removed {
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    pub fn list(&self) -> Result<Vec<StoredImage>> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .filter_map(|d| {
                let name = d.annotations.get(ANNOTATION_REF_NAME)?.clone();
                Some(StoredImage {
                    name,
                    descriptor: d,
                })
            })
            .collect())
    }

    /// Looks a tag up without falling back to anything else.
    pub fn lookup_tag(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.descriptor))
    }

    /// Resolves a reference to the manifest descriptor it names in this store. A digest
    /// reference must name a manifest present here; a tag must be in `index.json`.
    pub fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        if let Some(digest) = &reference.digest {
            if let Some(found) = self
                .list()?
                .into_iter()
                .find(|i| i.descriptor.digest == *digest)
            {
                return Ok(found.descriptor);
            }
            let bytes = self
                .read_blob(digest)
                .map_err(|_| Error::NotFound(reference.to_string()))?;
            let media_type = oci::sniff_media_type(&bytes).ok_or_else(|| {
                Error::malformed(format!("manifest {digest}"), "not a JSON manifest")
            })?;
            return Ok(Descriptor::new(&media_type, &bytes));
        }
        let tag = reference.tag_or_latest().unwrap_or("latest");
        let name = format!("{}:{tag}", reference.name());
        self.lookup_tag(&name)?.ok_or(Error::NotFound(name))
    }

    /// Reads and parses an image manifest (OCI or Docker schema 2), checking its digest.
    pub fn manifest(&self, digest: &Digest) -> Result<(ImageManifest, Vec<u8>)> {
        let bytes = self.read_blob(digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(format!("manifest {digest}"), e))?;
        if manifest.schema_version != 2 {
            return Err(Error::malformed(
                format!("manifest {digest}"),
                "schemaVersion must be 2",
            ));
        }
        Ok((manifest, bytes))
    }

    /// Stores a manifest document and returns its descriptor.
    pub fn put_manifest(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        self.put_blob(bytes)?;
        Ok(Descriptor::new(media_type, bytes))
    }

    /// Removes every blob that no tag reaches (through indexes, manifests, configs and layers).
    pub fn gc(&self) -> Result<GcReport> {
        let mut live = BTreeSet::new();
        let mut pending: Vec<Digest> = self
            .read_index()?
            .manifests
            .into_iter()
            .map(|d| d.digest)
            .collect();
        while let Some(digest) = pending.pop() {
            if !live.insert(digest.clone()) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&digest) else {
                continue;
            };
            let Some(media_type) = oci::sniff_media_type(&bytes) else {
                continue;
            };
            if oci::is_index(&media_type) {
                if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
                    pending.extend(index.manifests.into_iter().map(|d| d.digest));
                }
            } else if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) {
                live.insert(manifest.config.digest);
                live.extend(manifest.layers.into_iter().map(|d| d.digest));
            }
        }
        let dir = self.root.join("blobs/sha256");
        let mut report = GcReport::default();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("listing blobs", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing blobs", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .is_ok_and(|d| live.contains(&d));
            if keep {
                report.blobs_kept += 1;
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::io("removing blob", entry.path(), e))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        tracing::info!(
            removed = report.blobs_removed,
            kept = report.blobs_kept,
            "store garbage collected"
        );
        Ok(report)
    }

    /// The digests of every manifest the tags reach, for caches keyed by manifest digest.
    pub fn tagged_digests(&self) -> Result<BTreeSet<Digest>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|i| i.descriptor.digest)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tags_resolves_detects_tampering_and_collects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = store.put_blob(b"layer").unwrap();
        let config = store.put_blob(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": oci::MEDIA_TYPE_OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": oci::MEDIA_TYPE_OCI_LAYER_TAR, "digest": layer, "size": 5}]
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let desc = store
            .put_manifest(oci::MEDIA_TYPE_OCI_MANIFEST, &bytes)
            .unwrap();
        store.tag("python:1", desc.clone()).unwrap();
        let orphan = store.put_blob(b"orphan").unwrap();

        let resolved = store.resolve(&"python:1".parse().unwrap()).unwrap();
        assert_eq!(resolved.digest, desc.digest);
        assert!(matches!(
            store.resolve(&"python:2".parse().unwrap()),
            Err(Error::NotFound(_))
        ));

        let report = store.gc().unwrap();
        assert_eq!((report.blobs_removed, report.blobs_kept), (1, 3));
        assert!(!store.has_blob(&orphan));

        std::fs::write(store.blob_path(&layer), b"tampered").unwrap();
        assert!(matches!(
            store.read_blob(&layer),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(store.verify_blob(&layer).is_err());

        assert!(store.untag("python:1").unwrap());
        assert_eq!(store.gc().unwrap().blobs_kept, 0);
    }
}
