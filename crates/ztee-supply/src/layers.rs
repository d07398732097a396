//! Image layers: packing a directory into a reproducible layer, assembling an image from layers,
//! reading selected files through the layer stack, and unpacking a root filesystem — all with
//! OCI whiteout semantics (`.wh.NAME` deletes NAME, `.wh..wh..opq` empties a directory).

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, ImageConfig, ImageManifest};
use crate::store::Store;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// A layer written into the store.
#[derive(Clone, Debug)]
pub struct PackedLayer {
    pub descriptor: Descriptor,
    /// Digest of the uncompressed tar: the image config's `rootfs.diff_ids` entry.
    pub diff_id: Digest,
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn walk_sorted(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        if entry.file_type()?.is_dir() {
            walk_sorted(root, &path, out)?;
        }
    }
    Ok(())
}

/// Packs `root` into a gzip layer in the store. The tar is reproducible: entries sorted by path,
/// modification times clamped to `epoch`, no user/group names, fixed gzip header; ownership
/// and modes are kept because they matter inside the guest.
pub fn pack_directory(store: &Store, root: &Path, epoch: u64) -> Result<PackedLayer> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    walk_sorted(root, root, &mut paths).map_err(|e| Error::io("walking", root, e))?;
    let dir = store.root().join("blobs/sha256");
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| Error::io("creating layer in", &dir, e))?;
    let gz = flate2::GzBuilder::new().mtime(0).write(
        tmp.reopen()
            .map_err(|e| Error::io("opening layer", tmp.path(), e))?,
        flate2::Compression::new(6),
    );
    let mut builder = tar::Builder::new(HashingWriter {
        inner: gz,
        hasher: Sha256::new(),
    });
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    for rel in &paths {
        let full = root.join(rel);
        let meta = std::fs::symlink_metadata(&full)
            .map_err(|e| Error::io("reading metadata of", &full, e))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_mtime(meta.mtime().clamp(0, epoch as i64) as u64);
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        // Names are empty so the numeric ids are authoritative and host users don't leak in.
        let _ = header.set_username("");
        let _ = header.set_groupname("");
        let ft = meta.file_type();
        let add = if ft.is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(|e| Error::io("reading link", &full, e))?;
            header.set_size(0);
            builder.append_link(&mut header, rel, &target)
        } else if ft.is_file() {
            let file = std::fs::File::open(&full).map_err(|e| Error::io("opening", &full, e))?;
            builder.append_data(&mut header, rel, file)
        } else {
            header.set_size(0);
            builder.append_data(&mut header, rel, std::io::empty())
        };
        add.map_err(|e| Error::io("adding to layer", &full, e))?;
    }
    let hashing = builder
        .into_inner()
        .map_err(|e| Error::io("finishing layer tar", root, e))?;
    let diff_id = Digest::from_sha256(hashing.hasher.finalize().into());
    hashing
        .inner
        .finish()
        .map_err(|e| Error::io("finishing layer gzip", root, e))?;
    let file =
        std::fs::File::open(tmp.path()).map_err(|e| Error::io("reading layer", tmp.path(), e))?;
    let (digest, size) = store.put_blob_reader(BufReader::new(file), None)?;
    Ok(PackedLayer {
        descriptor: Descriptor {
            media_type: oci::MEDIA_TYPE_OCI_LAYER_GZIP.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        },
        diff_id,
    })
}

/// Writes the config and manifest for `layers` and tags the image as `name`.
pub fn commit_image(
    store: &Store,
    name: &str,
    layers: &[PackedLayer],
    mut config: ImageConfig,
    annotations: BTreeMap<String, String>,
) -> Result<Descriptor> {
    config.rootfs = oci::RootFs {
        kind: "layers".into(),
        diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
    };
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| Error::malformed("image config", e))?;
    store.put_blob(&config_bytes)?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: Descriptor::new(oci::MEDIA_TYPE_OCI_CONFIG, &config_bytes),
        layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        annotations,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::malformed("image manifest", e))?;
    let descriptor = store.put_manifest(oci::MEDIA_TYPE_OCI_MANIFEST, &bytes)?;
    store.tag(name, descriptor.clone())?;
    Ok(descriptor)
}

/// Opens a layer blob as a tar stream, checking its digest first.
fn layer_reader(store: &Store, layer: &Descriptor) -> Result<Box<dyn Read>> {
    store.verify_blob(&layer.digest)?;
    let path = store.blob_path(&layer.digest);
    let file = std::fs::File::open(&path).map_err(|e| Error::io("opening layer", &path, e))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 2];
    reader
        .read_exact(&mut magic)
        .map_err(|e| Error::io("reading layer", &path, e))?;
    let file = std::fs::File::open(&path).map_err(|e| Error::io("opening layer", &path, e))?;
    Ok(if magic == [0x1f, 0x8b] {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Normalizes a tar entry path to a relative path without `.`/`..`; `None` for unsafe paths.
fn clean_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Reads the files for which `wanted(path)` is true (path relative to `/`) through the whole
/// layer stack: a later layer's file or whiteout overrides an earlier one's.
pub fn read_files(
    store: &Store,
    manifest: &ImageManifest,
    wanted: impl Fn(&Path) -> bool,
) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    for layer in &manifest.layers {
        let mut archive = tar::Archive::new(layer_reader(store, layer)?);
        let entries = archive
            .entries()
            .map_err(|e| Error::malformed(format!("layer {}", layer.digest), e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::malformed(format!("layer {}", layer.digest), e))?;
            let Some(path) = entry.path().ok().and_then(|p| clean_path(&p)) else {
                continue;
            };
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file_name == OPAQUE_WHITEOUT {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                files.retain(|p, _| !p.starts_with(&dir));
                continue;
            }
            if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
                let target = path.with_file_name(hidden);
                files.retain(|p, _| !p.starts_with(&target));
                continue;
            }
            if entry.header().entry_type().is_file() && wanted(&path) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(|e| {
                    Error::malformed(
                        format!("layer {} entry {}", layer.digest, path.display()),
                        e,
                    )
                })?;
                files.insert(path, bytes);
            }
        }
    }
    Ok(files)
}

/// Unpacks the image's layers into `dest` (which must be empty), applying whiteouts.
/// Ownership is kept when running as root.
pub fn unpack(store: &Store, manifest: &ImageManifest, dest: &Path) -> Result<()> {
    for layer in &manifest.layers {
        let mut archive = tar::Archive::new(layer_reader(store, layer)?);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        let entries = archive
            .entries()
            .map_err(|e| Error::malformed(format!("layer {}", layer.digest), e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::malformed(format!("layer {}", layer.digest), e))?;
            let Some(path) = entry.path().ok().and_then(|p| clean_path(&p)) else {
                return Err(Error::malformed(
                    format!("layer {}", layer.digest),
                    "an entry path escapes the root",
                ));
            };
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file_name == OPAQUE_WHITEOUT {
                let dir = dest.join(path.parent().unwrap_or(Path::new("")));
                if let Ok(children) = std::fs::read_dir(&dir) {
                    for child in children.flatten() {
                        remove_any(&child.path())?;
                    }
                }
                continue;
            }
            if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
                remove_any(&dest.join(path.with_file_name(hidden)))?;
                continue;
            }
            // `unpack_in` refuses paths (and link targets) that would escape `dest`.
            entry.unpack_in(dest).map_err(|e| {
                Error::malformed(
                    format!("layer {} entry {}", layer.digest, path.display()),
                    e,
                )
            })?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|e| Error::io("removing", path, e))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io("removing", path, e)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packs_reproducibly_and_applies_whiteouts() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("etc")).unwrap();
        std::fs::write(src.path().join("etc/a"), b"one").unwrap();
        std::fs::write(src.path().join("etc/b"), b"two").unwrap();
        let first = pack_directory(&store, src.path(), 1_700_000_000).unwrap();
        let again = pack_directory(&store, src.path(), 1_700_000_000).unwrap();
        assert_eq!(
            first.descriptor.digest, again.descriptor.digest,
            "same tree must give the same layer"
        );

        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/.wh.a"), b"").unwrap();
        std::fs::write(upper.path().join("etc/c"), b"three").unwrap();
        let second = pack_directory(&store, upper.path(), 1_700_000_000).unwrap();
        let desc = commit_image(
            &store,
            "t:1",
            &[first, second],
            ImageConfig::default(),
            BTreeMap::new(),
        )
        .unwrap();
        let (manifest, _) = store.manifest(&desc.digest).unwrap();
        let files = read_files(&store, &manifest, |p| p.starts_with("etc")).unwrap();
        let names: Vec<_> = files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["etc/b", "etc/c"]);

        let out = tempfile::tempdir().unwrap();
        unpack(&store, &manifest, out.path()).unwrap();
        assert!(!out.path().join("etc/a").exists());
        assert_eq!(std::fs::read(out.path().join("etc/c")).unwrap(), b"three");
    }
}
