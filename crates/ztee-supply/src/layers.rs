//! Image layers: packing a directory into a reproducible layer, assembling an image from layers,
//! reading selected files through the layer stack, and unpacking a root filesystem — all with
//! OCI whiteout semantics (`.wh.NAME` deletes NAME, `.wh..wh..opq` empties a directory).

mod tree;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, ImageConfig, ImageManifest};
use crate::store::Store;
use tree::Tree;

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

/// A layer given as an open file (as the unpack helper receives them): checked against `digest`
/// first, then read as a tar stream, gunzipped if it starts with the gzip magic.
fn file_layer_reader(digest: &Digest, mut file: std::fs::File) -> Result<Box<dyn Read>> {
    use std::io::{Seek, SeekFrom};
    let what = || PathBuf::from(format!("(layer {digest})"));
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("rewinding", what(), e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io("reading", what(), e))?;
    let actual = Digest::from_sha256(hasher.finalize().into());
    if actual != *digest {
        return Err(Error::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("rewinding", what(), e))?;
    let mut magic = [0u8; 2];
    let gzip = match file.read_exact(&mut magic) {
        Ok(()) => magic == [0x1f, 0x8b],
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(Error::io("reading", what(), e)),
    };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("rewinding", what(), e))?;
    Ok(if gzip {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
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

/// Unpacking caps: the total bytes of file content the image may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Unpacking caps: the total number of tar entries over all of an image's layers.
pub const MAX_UNPACKED_ENTRIES: u64 = 1_000_000;
/// Tar metadata (headers, GNU long names, PAX records) the tar reader may read for one entry,
/// so a huge long-name record cannot exhaust memory.
const MAX_ENTRY_METADATA_BYTES: u64 = 1 << 20;
/// Entry names in errors are cut after this many characters.
const MAX_NAME_CHARS: usize = 256;

/// Caps on what unpacking one image may produce, so a tar bomb is refused before it fills the
/// disk: a declared size over what is left is refused before anything of the entry is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of entry content over all layers.
    pub max_bytes: u64,
    /// Total entries over all layers, whiteouts and directories included.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: MAX_UNPACKED_BYTES,
            max_entries: MAX_UNPACKED_ENTRIES,
        }
    }
}

/// Unpacks the image's layers into `dest` (which must be empty), applying whiteouts, within the
/// default [`UnpackLimits`]. See [`unpack_with_limits`].
pub fn unpack(store: &Store, manifest: &ImageManifest, dest: &Path) -> Result<()> {
    unpack_with_limits(store, manifest, dest, UnpackLimits::default())
}

/// Unpacks the image's layers into `dest` (which must be empty), applying whiteouts.
///
/// Every entry is resolved beneath `dest` without following any symbolic link (`openat2(2)`
/// with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, see `layers/tree.rs`), so no entry, whiteout or
/// hard link can reach outside the tree: one whose path goes through a symbolic link, or has a
/// `..` component, is refused ([`Error::UnsafeLayerEntry`]); an absolute name is read relative
/// to `dest`. A later layer's entry replaces what an earlier one left at its path (a directory
/// replaces a link, and so on); removal never follows links. Device nodes and FIFOs are refused:
/// a microVM's root filesystem needs none from an image. Past `limits` the unpack stops with
/// [`Error::LayerLimit`]. Modes (set-id bits included), owners and file times are kept; setting
/// owners other than the caller's needs root.
pub fn unpack_with_limits(
    store: &Store,
    manifest: &ImageManifest,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<()> {
    let tree = open_tree(dest)?;
    let mut totals = Totals::default();
    for layer in &manifest.layers {
        let reader = layer_reader(store, layer)?;
        unpack_layer(&layer.digest, reader, &tree, limits, &mut totals)?;
    }
    Ok(())
}

/// [`unpack_with_limits`] for layers given as open files in stack order (lowest first), each
/// checked against its digest before any of it is unpacked. This is what the unpack helper
/// runs: it cannot open the store's blobs by path, only the descriptors it was handed.
pub fn unpack_files(
    layers: Vec<(Digest, std::fs::File)>,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<()> {
    let tree = open_tree(dest)?;
    let mut totals = Totals::default();
    for (digest, file) in layers {
        let reader = file_layer_reader(&digest, file)?;
        unpack_layer(&digest, reader, &tree, limits, &mut totals)?;
    }
    Ok(())
}

fn open_tree(dest: &Path) -> Result<Tree> {
    Tree::open(dest).map_err(|e| {
        let context = if e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error()) {
            "opening the unpack root: unpacking safely needs openat2(2), Linux 5.6 or later"
        } else {
            "opening the unpack root"
        };
        Error::io(context, dest, e)
    })
}

#[derive(Default)]
struct Totals {
    bytes: u64,
    entries: u64,
}

/// How many more bytes the tar reader may pull from a layer before the unpacker looks again;
/// a read past that fails and sets `exceeded`.
#[derive(Default)]
struct Meter {
    allowance: Cell<u64>,
    exceeded: Cell<bool>,
}

struct MeteredReader {
    inner: Box<dyn Read>,
    meter: Rc<Meter>,
}

impl Read for MeteredReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let allowance = self.meter.allowance.get();
        if allowance == 0 && !buf.is_empty() {
            self.meter.exceeded.set(true);
            return Err(std::io::Error::other("layer data over the unpack limit"));
        }
        let max = buf
            .len()
            .min(usize::try_from(allowance).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.meter.allowance.set(allowance.saturating_sub(n as u64));
        Ok(n)
    }
}

/// An entry name fit for an error message: lossy UTF-8, control and bidirectional-formatting
/// characters escaped, cut after [`MAX_NAME_CHARS`].
fn display_name(raw: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in String::from_utf8_lossy(raw).chars().enumerate() {
        if i == MAX_NAME_CHARS {
            out.push('…');
            break;
        }
        let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || invisible || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The layer and entry an error is about.
struct EntryContext<'a> {
    layer: &'a str,
    name: &'a str,
}

impl EntryContext<'_> {
    fn refuse(&self, reason: impl Into<String>) -> Error {
        Error::UnsafeLayerEntry {
            layer: self.layer.to_string(),
            path: self.name.to_string(),
            reason: reason.into(),
        }
    }

    fn limit(&self, reason: impl Into<String>) -> Error {
        Error::LayerLimit {
            layer: self.layer.to_string(),
            path: self.name.to_string(),
            reason: reason.into(),
        }
    }

    fn malformed(&self, reason: impl ToString) -> Error {
        Error::malformed(
            format!("layer {} entry \"{}\"", self.layer, self.name),
            reason,
        )
    }

    /// A failed filesystem call: a symbolic link or an escape on the way is a refusal, anything
    /// else a failure of `action`.
    /// [`EntryContext::io`] for a call that sets an owner: in a user namespace (the unpack
    /// helper's), an owner outside its id map is `EINVAL`, said plainly here.
    fn owner_io(&self, action: &str, uid: u32, gid: u32, e: std::io::Error) -> Error {
        if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
            return self.malformed(format!(
                "{action}: its owner {uid}:{gid} is outside the ids the unpack helper maps \
                 (0-65535 when ztee runs as root, only 0 otherwise)"
            ));
        }
        self.io(action, e)
    }

    fn io(&self, action: &str, e: std::io::Error) -> Error {
        use rustix::io::Errno;
        match e.raw_os_error() {
            Some(code) if code == Errno::LOOP.raw_os_error() => self.refuse(
                "its path goes through a symbolic link, and links are never followed when unpacking",
            ),
            Some(code) if code == Errno::XDEV.raw_os_error() => {
                self.refuse("its path leaves the unpack root")
            }
            _ => self.malformed(format!("{action}: {e}")),
        }
    }
}

fn is_missing(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error() == Some(Errno::NOENT.raw_os_error())
        || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error())
}

fn unpack_layer(
    layer: &Digest,
    reader: Box<dyn Read>,
    tree: &Tree,
    limits: UnpackLimits,
    totals: &mut Totals,
) -> Result<()> {
    let digest = layer.to_string();
    let meter = Rc::new(Meter::default());
    let mut archive = tar::Archive::new(MeteredReader {
        inner: reader,
        meter: Rc::clone(&meter),
    });
    let mut entries = archive
        .entries()
        .map_err(|e| Error::malformed(format!("layer {digest}"), e))?;
    // Data of the previous entry that was not read and that the tar reader skips next.
    let mut skip = 0u64;
    let mut previous = String::from("(start of layer)");
    loop {
        meter
            .allowance
            .set(skip.saturating_add(MAX_ENTRY_METADATA_BYTES));
        let mut entry = match entries.next() {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(_)) if meter.exceeded.get() => {
                return Err(Error::LayerLimit {
                    layer: digest,
                    path: format!("(the entry after) {previous}"),
                    reason: format!(
                        "its tar metadata (headers, long names, PAX records) exceeds the limit of \
                         {MAX_ENTRY_METADATA_BYTES} bytes"
                    ),
                });
            }
            Some(Err(e)) => return Err(Error::malformed(format!("layer {digest}"), e)),
        };
        let raw = entry.path_bytes().into_owned();
        let name = display_name(&raw);
        let cx = EntryContext {
            layer: &digest,
            name: &name,
        };
        let size = entry.size();
        skip = size.saturating_add(511) & !511;
        totals.entries += 1;
        if totals.entries > limits.max_entries {
            return Err(cx.limit(format!(
                "the image has more than the limit of {} entries",
                limits.max_entries
            )));
        }
        let budget = limits.max_bytes.saturating_sub(totals.bytes);
        if size > budget {
            return Err(cx.limit(format!(
                "its declared size of {size} bytes takes the image past the unpack limit of {} \
                 bytes",
                limits.max_bytes
            )));
        }
        let written = unpack_entry(tree, &mut entry, &raw, &cx, budget, &meter)?;
        if written.is_some() {
            skip = 0;
        }
        totals.bytes += written.unwrap_or(0).max(size);
        previous = name;
    }
    Ok(())
}

/// Owner, group and permission bits (set-id and sticky included) of an entry.
fn owner_and_mode(header: &tar::Header, cx: &EntryContext) -> Result<(u32, u32, u32)> {
    let id = |value: std::io::Result<u64>, what: &str| -> Result<u32> {
        let value = value.map_err(|e| cx.malformed(e))?;
        match u32::try_from(value) {
            Ok(id) if id != u32::MAX => Ok(id),
            _ => Err(cx.malformed(format!("{what} {value} is out of range"))),
        }
    };
    let uid = id(header.uid(), "uid")?;
    let gid = id(header.gid(), "gid")?;
    let mode = header.mode().map_err(|e| cx.malformed(e))? & 0o7777;
    Ok((uid, gid, mode))
}

/// Modification time of an entry; 0 becomes 1, as the tar crate's unpacking did.
fn mtime(header: &tar::Header) -> i64 {
    let mtime = header.mtime().unwrap_or(1).max(1);
    i64::try_from(mtime).unwrap_or(i64::MAX)
}

/// Applies one entry beneath the root. Returns the bytes written for a regular file (whose
/// data it read), `None` for anything else.
fn unpack_entry(
    tree: &Tree,
    entry: &mut tar::Entry<'_, MeteredReader>,
    raw: &[u8],
    cx: &EntryContext,
    budget: u64,
    meter: &Meter,
) -> Result<Option<u64>> {
    use std::os::fd::AsFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    use tar::EntryType;

    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
    {
        // Records about other entries, not files.
        return Ok(None);
    }
    let Some(rel) = clean_path(Path::new(std::ffi::OsStr::from_bytes(raw))) else {
        return Err(cx.refuse("its path has a `..` component"));
    };
    let (Some(file_name), Some(parent)) = (rel.file_name(), rel.parent()) else {
        // The root itself (`./`): it stays as the caller made it.
        return Ok(None);
    };
    let name_bytes = file_name.as_bytes();

    if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
        let dir = match tree.open_dir(parent) {
            Ok(dir) => dir,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(cx.io("opening the directory of the opaque whiteout", e)),
        };
        tree::empty_dir(dir.as_fd()).map_err(|e| cx.io("applying the opaque whiteout", e))?;
        return Ok(None);
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(cx.refuse("the whiteout names no file"));
        }
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // aufs metadata (`.wh..wh.plnk` and the like), not a whiteout of a file.
            return Ok(None);
        }
        let dir = match tree.lookup_dir(parent) {
            Ok(dir) => dir,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(cx.io("opening the directory of the whiteout", e)),
        };
        tree::remove_at(dir.as_fd(), std::ffi::OsStr::from_bytes(hidden))
            .map_err(|e| cx.io("applying the whiteout", e))?;
        return Ok(None);
    }

    let header = entry.header().clone();
    let parent_dir = || {
        tree.create_dirs(parent)
            .map_err(|e| cx.io("creating the parent directories", e))
    };
    match kind {
        EntryType::Directory => {}
        // Old tar writers mark a directory by a trailing slash on a regular entry.
        EntryType::Regular if header.as_ustar().is_none() && raw.ends_with(b"/") => {}
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let (uid, gid, mode) = owner_and_mode(&header, cx)?;
            let dir = parent_dir()?;
            let mut file = tree::create_file_at(dir.as_fd(), file_name)
                .map_err(|e| cx.io("creating the file", e))?;
            meter.allowance.set(entry.size());
            let mut data = Read::take(&mut *entry, budget.saturating_add(1));
            let written =
                std::io::copy(&mut data, &mut file).map_err(|e| cx.io("writing the file", e))?;
            if written > budget {
                return Err(cx.limit(format!(
                    "its content takes the image past the unpack limit ({budget} bytes were left)"
                )));
            }
            if written < entry.size() {
                return Err(cx.malformed("the layer ends inside the entry's data"));
            }
            tree::set_mtime(&file, mtime(&header))
                .and_then(|()| tree::set_owner_and_mode(&file, uid, gid, mode))
                .map_err(|e| cx.owner_io("setting the file's owner, mode and time", uid, gid, e))?;
            return Ok(Some(written));
        }
        EntryType::Symlink => {
            let target = link_target(entry, cx)?;
            let (uid, gid, _) = owner_and_mode(&header, cx)?;
            let dir = parent_dir()?;
            tree::symlink_at(dir.as_fd(), file_name, std::ffi::OsStr::from_bytes(&target))
                .and_then(|()| tree::chown_at(dir.as_fd(), file_name, uid, gid))
                .and_then(|()| tree::set_mtime_at(dir.as_fd(), file_name, mtime(&header)))
                .map_err(|e| cx.owner_io("creating the symbolic link", uid, gid, e))?;
            return Ok(None);
        }
        EntryType::Link => {
            let target = link_target(entry, cx)?;
            let Some(source) = clean_path(Path::new(std::ffi::OsStr::from_bytes(&target))) else {
                return Err(cx.refuse("its hard link target has a `..` component"));
            };
            let (Some(source_name), Some(source_parent)) = (source.file_name(), source.parent())
            else {
                return Err(cx.refuse("its hard link target is the root directory"));
            };
            if source == rel {
                return Err(cx.refuse("it is a hard link to itself"));
            }
            let source_dir = match tree.lookup_dir(source_parent) {
                Ok(dir) => dir,
                Err(e) if is_missing(&e) => {
                    return Err(cx.malformed("its hard link target does not exist"))
                }
                Err(e) => return Err(cx.io("resolving the hard link target", e)),
            };
            match tree::kind_at(source_dir.as_fd(), source_name)
                .map_err(|e| cx.io("resolving the hard link target", e))?
            {
                None => return Err(cx.malformed("its hard link target does not exist")),
                Some(rustix::fs::FileType::Directory) => {
                    return Err(cx.refuse("it is a hard link to a directory"))
                }
                Some(_) => {}
            }
            let dir = parent_dir()?;
            tree::hard_link_at(source_dir.as_fd(), source_name, dir.as_fd(), file_name)
                .map_err(|e| cx.io("creating the hard link", e))?;
            return Ok(None);
        }
        EntryType::Char | EntryType::Block => {
            return Err(cx.refuse("device nodes are not allowed in an image's root filesystem"))
        }
        EntryType::Fifo => {
            return Err(cx.refuse("FIFOs are not allowed in an image's root filesystem"))
        }
        other => {
            return Err(cx.refuse(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            )))
        }
    }
    // A directory.
    let (uid, gid, mode) = owner_and_mode(&header, cx)?;
    let dir = parent_dir()?;
    let made = tree::make_dir_at(dir.as_fd(), file_name)
        .map_err(|e| cx.io("creating the directory", e))?;
    tree::set_owner_and_mode(&made, uid, gid, mode)
        .map_err(|e| cx.owner_io("setting the directory's owner and mode", uid, gid, e))?;
    Ok(None)
}

/// The link name of a symbolic or hard link entry.
fn link_target(entry: &tar::Entry<'_, MeteredReader>, cx: &EntryContext) -> Result<Vec<u8>> {
    match entry.link_name_bytes() {
        Some(target) if !target.is_empty() => Ok(target.into_owned()),
        _ => Err(cx.malformed("the link has no target")),
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

    #[test]
    fn entry_names_in_errors_are_escaped_and_cut() {
        assert_eq!(display_name(b"etc/passwd"), "etc/passwd");
        assert_eq!(display_name(b"a\x1b[2J\n\"b\\"), "a\\u{1b}[2J\\n\\\"b\\\\");
        assert_eq!(display_name("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        assert_eq!(display_name(b"\xff"), "\u{fffd}");
        let long = display_name(&[b'a'; 1000]);
        assert_eq!(long.chars().count(), MAX_NAME_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
