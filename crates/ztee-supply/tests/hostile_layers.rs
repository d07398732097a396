//! Unpacking hostile layers: every entry is resolved beneath the unpack root without following
//! links, so a layer cannot delete, create or overwrite anything outside the tree it builds, and
//! tar bombs are refused before they fill the disk. Each case keeps a victim directory outside
//! the root and checks that it is untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ztee_supply::layers::{self, PackedLayer, UnpackLimits};
use ztee_supply::oci::{self, Descriptor, ImageConfig, ImageManifest};
use ztee_supply::{Error, Store};

/// One tar entry. Names and link targets are written into the header as raw bytes, so hostile
/// values (`..`, absolute paths, control characters) reach the unpacker unchanged.
enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    Hardlink(&'a str),
    Char,
    Block,
    Fifo,
    /// A regular file whose header declares this size, with no data behind it.
    Declared(u64),
    /// A GNU long-name record of this many bytes, naming the next entry.
    LongName(usize),
}

/// A scratch area: the store, the unpack root and, beside the root, a victim directory holding
/// `keep` and `sub/inner` that no layer may touch.
struct Scratch {
    _dir: tempfile::TempDir,
    base: PathBuf,
    store: Store,
    dest: PathBuf,
    victim: PathBuf,
    uid: u64,
    gid: u64,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let store = Store::open(&base.join("data")).unwrap();
        let dest = base.join("dest");
        let victim = base.join("victim");
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("keep"), b"host data").unwrap();
        std::fs::write(victim.join("sub/inner"), b"more host data").unwrap();
        let meta = std::fs::metadata(&dest).unwrap();
        Scratch {
            _dir: dir,
            base,
            store,
            dest,
            victim,
            uid: meta.uid().into(),
            gid: meta.gid().into(),
        }
    }

    /// The victim directory as an absolute symlink target.
    fn victim_abs(&self) -> String {
        self.victim.display().to_string()
    }

    fn tar(&self, entries: &[(&str, Kind)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind) in entries {
            let mut header = tar::Header::new_gnu();
            let gnu = header.as_gnu_mut().unwrap();
            assert!(name.len() <= gnu.name.len(), "test name too long");
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            let link = match kind {
                Kind::Symlink(t) | Kind::Hardlink(t) => Some(*t),
                _ => None,
            };
            if let Some(link) = link {
                assert!(link.len() <= gnu.linkname.len(), "test link too long");
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_uid(self.uid);
            header.set_gid(self.gid);
            header.set_mtime(1_700_000_000);
            let (entry_type, mode, data): (tar::EntryType, u32, Vec<u8>) = match kind {
                Kind::Dir => (tar::EntryType::Directory, 0o755, Vec::new()),
                Kind::File(bytes) => (tar::EntryType::Regular, 0o644, bytes.to_vec()),
                Kind::Symlink(_) => (tar::EntryType::Symlink, 0o777, Vec::new()),
                Kind::Hardlink(_) => (tar::EntryType::Link, 0o644, Vec::new()),
                Kind::Char => (tar::EntryType::Char, 0o666, Vec::new()),
                Kind::Block => (tar::EntryType::Block, 0o660, Vec::new()),
                Kind::Fifo => (tar::EntryType::Fifo, 0o644, Vec::new()),
                Kind::Declared(_) => (tar::EntryType::Regular, 0o644, Vec::new()),
                Kind::LongName(n) => (tar::EntryType::GNULongName, 0o644, vec![b'a'; *n]),
            };
            header.set_entry_type(entry_type);
            header.set_mode(mode);
            header.set_size(match kind {
                Kind::Declared(size) => *size,
                _ => data.len() as u64,
            });
            header.set_cksum();
            builder.append(&header, data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Stores each tar as a layer and returns the image's manifest.
    fn image(&self, layer_tars: &[Vec<u8>]) -> ImageManifest {
        let packed: Vec<PackedLayer> = layer_tars
            .iter()
            .map(|bytes| {
                let digest = self.store.put_blob(bytes).unwrap();
                PackedLayer {
                    descriptor: Descriptor {
                        media_type: oci::MEDIA_TYPE_OCI_LAYER_TAR.to_string(),
                        digest: digest.clone(),
                        size: bytes.len() as u64,
                        annotations: BTreeMap::new(),
                        platform: None,
                    },
                    diff_id: digest,
                }
            })
            .collect();
        let desc = layers::commit_image(
            &self.store,
            "hostile:1",
            &packed,
            ImageConfig::default(),
            BTreeMap::new(),
        )
        .unwrap();
        self.store.manifest(&desc.digest).unwrap().0
    }

    fn unpack(&self, layer_tars: &[Vec<u8>]) -> Result<(), ztee_supply::Error> {
        let manifest = self.image(layer_tars);
        layers::unpack(&self.store, &manifest, &self.dest)
    }

    /// Unpacking `layer_tars` is refused, saying `needle` (see [`assert_refused`]), and the
    /// victim directory is left exactly as created.
    fn assert_refused_unharmed(&self, layer_tars: &[Vec<u8>], needle: &str) {
        let result = self.unpack(layer_tars);
        self.assert_victim_untouched();
        assert_refused(result, needle);
    }

    /// The victim directory and everything in it are exactly as created.
    fn assert_victim_untouched(&self) {
        assert_eq!(
            std::fs::read(self.victim.join("keep")).unwrap(),
            b"host data"
        );
        assert_eq!(
            std::fs::read(self.victim.join("sub/inner")).unwrap(),
            b"more host data"
        );
        let mut names: Vec<_> = std::fs::read_dir(&self.victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keep", "sub"], "nothing may appear in the victim");
        assert_eq!(
            std::fs::metadata(self.victim.join("keep")).unwrap().nlink(),
            1,
            "no hard link to a host file"
        );
        let mut beside: Vec<_> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(
            beside,
            ["data", "dest", "victim"],
            "nothing beside the root"
        );
    }
}

/// The unpack failed with a refusal that names the layer and says why (`needle`), and the
/// message carries no control characters.
fn assert_refused(result: Result<(), ztee_supply::Error>, needle: &str) {
    let err = result.expect_err("the hostile layer must be refused");
    let msg = err.to_string();
    assert!(msg.contains("refused entry"), "unexpected error: {msg}");
    assert!(msg.contains("sha256:"), "error names no layer: {msg}");
    assert!(
        msg.contains(needle),
        "error {msg:?} does not say {needle:?}"
    );
    assert!(
        !msg.chars().any(char::is_control),
        "control characters in {msg:?}"
    );
}

fn lexists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[test]
fn whiteout_through_an_absolute_symlink_is_refused() {
    let s = Scratch::new();
    let victim = s.victim_abs();
    let layer = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("a/.wh.keep", Kind::File(b"")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");
}

#[test]
fn whiteout_through_a_relative_symlink_is_refused() {
    let s = Scratch::new();
    // `../../../..` climbs to `/` from anywhere; the rest names the victim from there.
    let target = format!(
        "{}{}",
        "../".repeat(10),
        s.victim_abs().trim_start_matches('/')
    );
    let layer = s.tar(&[
        ("a", Kind::Symlink(&target)),
        ("a/.wh.keep", Kind::File(b"")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");

    // The same link in one layer, the whiteout of a directory through it in the next.
    let s = Scratch::new();
    let lower = s.tar(&[("a", Kind::Symlink("../victim"))]);
    let upper = s.tar(&[("a/.wh.sub", Kind::File(b""))]);
    s.assert_refused_unharmed(&[lower, upper], "symbolic link");
}

#[test]
fn opaque_whiteout_through_a_symlink_is_refused() {
    let s = Scratch::new();
    let victim = s.victim_abs();
    let layer = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("a/.wh..wh..opq", Kind::File(b"")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");

    // A symlinked directory further up the path.
    let s = Scratch::new();
    let layer = s.tar(&[
        ("a", Kind::Symlink("../victim")),
        ("a/sub/.wh..wh..opq", Kind::File(b"")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");
}

#[test]
fn whiteout_naming_the_parent_directory_is_refused() {
    // `.wh...` hides `..`: whiting it out must not remove the root's parent.
    let s = Scratch::new();
    let layer = s.tar(&[(".wh...", Kind::File(b""))]);
    s.assert_refused_unharmed(&[layer], "whiteout");

    let s = Scratch::new();
    let layer = s.tar(&[("d", Kind::Dir), ("d/.wh..", Kind::File(b""))]);
    s.assert_refused_unharmed(&[layer], "whiteout");
}

#[test]
fn file_through_a_symlinked_parent_is_refused() {
    let s = Scratch::new();
    let victim = s.victim_abs();
    let layer = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("a/planted", Kind::File(b"evil")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");

    // Missing directories below the link must not be created outside either.
    let s = Scratch::new();
    let layer = s.tar(&[
        ("a", Kind::Symlink("../victim")),
        ("a/newdir/planted", Kind::File(b"evil")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");

    // Link and write in different layers; the overwrite of an existing host file.
    let s = Scratch::new();
    let lower = s.tar(&[("a", Kind::Symlink("../victim"))]);
    let upper = s.tar(&[("a/keep", Kind::File(b"overwritten"))]);
    s.assert_refused_unharmed(&[lower, upper], "symbolic link");

    // A directory entry and a symlink entry through the link.
    for entry in [("a/newdir", Kind::Dir), ("a/ln", Kind::Symlink("/etc"))] {
        let s = Scratch::new();
        let layer = s.tar(&[("a", Kind::Symlink("../victim")), entry]);
        s.assert_refused_unharmed(&[layer], "symbolic link");
    }
}

#[test]
fn parent_components_in_entry_names_are_refused() {
    for name in [
        "../planted",
        "x/../../planted",
        "../victim/.wh.keep",
        "./../dest2",
    ] {
        let s = Scratch::new();
        let layer = s.tar(&[("x", Kind::Dir), (name, Kind::File(b"evil"))]);
        s.assert_refused_unharmed(&[layer], "..");
    }
}

#[test]
fn absolute_entry_names_stay_beneath_the_root() {
    // An absolute name is read relative to the root, as OCI runtimes do: it lands inside.
    let s = Scratch::new();
    let planted = format!("{}/planted", s.victim_abs());
    let whiteout = format!("{}/.wh.keep", s.victim_abs());
    let layer = s.tar(&[
        (&planted, Kind::File(b"inside")),
        (&whiteout, Kind::File(b"")),
    ]);
    s.unpack(&[layer]).unwrap();
    s.assert_victim_untouched();
    let inside = s.dest.join(planted.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"inside");
}

#[test]
fn hard_links_to_outside_the_root_are_refused() {
    // An absolute target is read beneath the root, where no such file exists.
    let s = Scratch::new();
    let target = format!("{}/keep", s.victim_abs());
    let layer = s.tar(&[("leak", Kind::Hardlink(&target))]);
    assert!(s.unpack(&[layer]).is_err());
    s.assert_victim_untouched();
    assert!(!lexists(&s.dest.join("leak")));

    // A target with `..` components.
    let s = Scratch::new();
    let layer = s.tar(&[("leak", Kind::Hardlink("../victim/keep"))]);
    s.assert_refused_unharmed(&[layer], "..");
    assert!(!lexists(&s.dest.join("leak")));

    // A target reached through a symlink.
    let s = Scratch::new();
    let victim = s.victim_abs();
    let layer = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("leak", Kind::Hardlink("a/keep")),
    ]);
    s.assert_refused_unharmed(&[layer], "symbolic link");
    assert!(!lexists(&s.dest.join("leak")));
}

#[test]
fn hard_links_inside_the_root_still_work() {
    let s = Scratch::new();
    let layer = s.tar(&[
        ("etc", Kind::Dir),
        ("etc/a", Kind::File(b"shared")),
        ("etc/b", Kind::Hardlink("etc/a")),
        ("etc/l", Kind::Symlink("a")),
        ("etc/m", Kind::Hardlink("/etc/l")),
    ]);
    s.unpack(&[layer]).unwrap();
    let a = std::fs::metadata(s.dest.join("etc/a")).unwrap();
    let b = std::fs::metadata(s.dest.join("etc/b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // A hard link to a symlink links the symlink itself.
    assert_eq!(
        std::fs::read_link(s.dest.join("etc/m")).unwrap(),
        Path::new("a")
    );
}

#[test]
fn a_directory_in_a_later_layer_replaces_a_symlink() {
    let s = Scratch::new();
    let victim = s.victim_abs();
    let lower = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("b", Kind::Symlink("../victim")),
        ("c", Kind::Symlink("../victim")),
    ]);
    let upper = s.tar(&[
        ("a", Kind::Dir),
        ("a/new", Kind::File(b"inside")),
        ("b", Kind::File(b"a file now")),
        (".wh.c", Kind::File(b"")),
    ]);
    s.unpack(&[lower, upper]).unwrap();
    s.assert_victim_untouched();
    let a = std::fs::symlink_metadata(s.dest.join("a")).unwrap();
    assert!(a.is_dir(), "the directory replaces the link");
    assert_eq!(std::fs::read(s.dest.join("a/new")).unwrap(), b"inside");
    let b = std::fs::symlink_metadata(s.dest.join("b")).unwrap();
    assert!(b.is_file(), "the file replaces the link");
    assert_eq!(std::fs::read(s.dest.join("b")).unwrap(), b"a file now");
    assert!(!lexists(&s.dest.join("c")), "the whiteout removes the link");
}

#[test]
fn replacing_a_directory_does_not_follow_links_inside_it() {
    // Removing a directory (replaced by a file, or whited out) removes the links in it, never
    // what they point at.
    let s = Scratch::new();
    let victim = s.victim_abs();
    let lower = s.tar(&[
        ("d", Kind::Dir),
        ("d/abs", Kind::Symlink(&victim)),
        ("d/rel", Kind::Symlink("../../victim")),
        ("e", Kind::Dir),
        ("e/abs", Kind::Symlink(&victim)),
        ("f", Kind::Dir),
        ("f/abs", Kind::Symlink(&victim)),
        ("f/x", Kind::File(b"x")),
    ]);
    let upper = s.tar(&[
        ("d", Kind::File(b"file now")),
        (".wh.e", Kind::File(b"")),
        ("f/.wh..wh..opq", Kind::File(b"")),
    ]);
    s.unpack(&[lower, upper]).unwrap();
    s.assert_victim_untouched();
    assert_eq!(std::fs::read(s.dest.join("d")).unwrap(), b"file now");
    assert!(!lexists(&s.dest.join("e")));
    assert_eq!(std::fs::read_dir(s.dest.join("f")).unwrap().count(), 0);
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    for (name, kind, needle) in [
        ("dev/null", Kind::Char, "device"),
        ("dev/sda", Kind::Block, "device"),
        ("run/pipe", Kind::Fifo, "FIFO"),
    ] {
        let s = Scratch::new();
        let layer = s.tar(&[(name, kind)]);
        assert_refused(s.unpack(&[layer]), needle);
        assert!(!lexists(&s.dest.join(name)));
    }
}

#[test]
fn entry_names_are_sanitized_in_errors() {
    let s = Scratch::new();
    let layer = s.tar(&[("dev/\x1b[31mred\x07\n", Kind::Char)]);
    assert_refused(s.unpack(&[layer]), "device");
}

#[test]
fn an_absurd_declared_size_is_refused_before_writing() {
    let s = Scratch::new();
    let layer = s.tar(&[("big", Kind::Declared(1 << 40))]);
    assert_refused(s.unpack(&[layer]), "limit");
    assert!(!lexists(&s.dest.join("big")), "nothing written");
}

#[test]
fn an_oversized_long_name_record_is_refused() {
    let s = Scratch::new();
    let layer = s.tar(&[
        ("././@LongLink", Kind::LongName(4 << 20)),
        ("x", Kind::File(b"x")),
    ]);
    let err = s.unpack(&[layer]).expect_err("must be refused");
    let msg = err.to_string();
    assert!(msg.contains("limit"), "unexpected error: {msg}");
    assert!(msg.contains("sha256:"), "error names no layer: {msg}");
}

#[test]
fn a_benign_layer_unpacks_with_modes_and_links() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let layer = s.tar(&[
        ("./", Kind::Dir),
        ("./usr", Kind::Dir),
        ("./usr/bin", Kind::Dir),
        ("./usr/bin/tool", Kind::File(b"#!/bin/sh\n")),
        ("./bin", Kind::Symlink("usr/bin")),
        ("./etc/motd", Kind::File(b"hi\n")),
    ]);
    s.unpack(&[layer]).unwrap();
    let tool = std::fs::metadata(s.dest.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o644);
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read_link(s.dest.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(std::fs::read(s.dest.join("etc/motd")).unwrap(), b"hi\n");
    let usr = std::fs::metadata(s.dest.join("usr")).unwrap();
    assert_eq!(usr.permissions().mode() & 0o7777, 0o755);
}

#[test]
fn total_unpacked_bytes_over_the_limit_are_refused() {
    let s = Scratch::new();
    let lower = s.tar(&[("a", Kind::File(&[7u8; 600]))]);
    let upper = s.tar(&[("b", Kind::File(&[7u8; 600]))]);
    let manifest = s.image(&[lower, upper]);
    let limits = UnpackLimits {
        max_bytes: 1000,
        max_entries: 100,
    };
    let err = layers::unpack_with_limits(&s.store, &manifest, &s.dest, limits).unwrap_err();
    match &err {
        Error::LayerLimit { layer, path, .. } => {
            assert_eq!(layer, &manifest.layers[1].digest.to_string());
            assert_eq!(path, "b");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("limit of 1000 bytes"), "{err}");
    assert_eq!(std::fs::read(s.dest.join("a")).unwrap().len(), 600);
    assert!(
        !lexists(&s.dest.join("b")),
        "nothing of the refused entry written"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let s = Scratch::new();
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, Kind)> = names
        .iter()
        .map(|n| (n.as_str(), Kind::File(b"")))
        .collect();
    let manifest = s.image(&[s.tar(&entries)]);
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };
    let err = layers::unpack_with_limits(&s.store, &manifest, &s.dest, limits).unwrap_err();
    match &err {
        Error::LayerLimit { path, reason, .. } => {
            assert_eq!(path, "f10");
            assert!(reason.contains("10 entries"), "{reason}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(!lexists(&s.dest.join("f10")));
}

#[test]
fn refusals_name_the_layer_and_entry() {
    let s = Scratch::new();
    let victim = s.victim_abs();
    let layer = s.tar(&[
        ("a", Kind::Symlink(&victim)),
        ("a/.wh.keep", Kind::File(b"")),
    ]);
    let manifest = s.image(&[layer]);
    let err = layers::unpack(&s.store, &manifest, &s.dest).unwrap_err();
    match err {
        Error::UnsafeLayerEntry {
            layer,
            path,
            reason,
        } => {
            assert_eq!(layer, manifest.layers[0].digest.to_string());
            assert_eq!(path, "a/.wh.keep");
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("unexpected error: {other}"),
    }
    s.assert_victim_untouched();
}
