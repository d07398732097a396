//! An admitted image's root filesystem is built by a separate, jailed helper (`ztee
//! __build-rootfs`), never in the process that admits it: the helper runs in its own user and
//! mount namespaces as an unprivileged host uid, yet the image's owners survive into the erofs,
//! and a hostile layer is refused with the precise reason while nothing outside the build
//! changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ztee_supply::keys::{self, Passphrase};
use ztee_supply::layers::{self, PackedLayer};
use ztee_supply::oci::{self, Descriptor, ImageConfig};
use ztee_supply::{sign, Digest, Reference, Store};

const POLICY: &str = r#"
apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: ztee-images
spec:
  validationFailureAction: Enforce
  rules:
    - name: signed
      verifyImages:
        - imageReferences: ["owners:*", "hostile:*"]
          attestors:
            - entries:
                - keys:
                    publicKeys: signing.pub
"#;

fn ztee(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztee"))
        .args(args)
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_LOG", "ztee_supply=debug")
        .env_remove("ZTEE_UNPACK_UIDS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// A data directory with a signing key and a policy admitting any image signed by it.
struct Node {
    dir: tempfile::TempDir,
    store: Store,
    key: keys::SigningKey,
    policy: std::path::PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("ztee-u")
            .tempdir_in("/tmp")
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir_all(&keys_dir).unwrap();
        let pass = Passphrase::new("a test passphrase".into());
        let generated = keys::generate_with_cost(&keys_dir.join("signing"), &pass, 10).unwrap();
        let key = keys::load_signing_key(&generated.private_key, &pass).unwrap();
        let policy = keys_dir.join("admission.yaml");
        std::fs::write(&policy, POLICY).unwrap();
        Node {
            dir,
            store,
            key,
            policy,
        }
    }

    fn commit_and_sign(&self, name: &str, layers: &[PackedLayer]) -> Digest {
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        layers::commit_image(&self.store, name, layers, config, BTreeMap::new()).unwrap();
        let reference: Reference = name.parse().unwrap();
        sign::sign(&self.store, &reference, &self.key, None, BTreeMap::new()).unwrap();
        self.store.resolve(&reference).unwrap().digest
    }

    fn verify_rootfs(&self, name: &str) -> Output {
        ztee(
            self.dir.path(),
            &[
                "image",
                "verify",
                name,
                "--policy",
                self.policy.to_str().unwrap(),
                "--rootfs",
            ],
        )
    }
}

/// A layer made by GNU tar from exactly the named members of `src` (no parent directory
/// entries are added, and links are stored as links).
fn tar_layer(store: &Store, src: &Path, members: &[&str]) -> PackedLayer {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("tar")
        .args([
            "--no-recursion",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
        ])
        .arg("-cf")
        .arg(out.path())
        .arg("-C")
        .arg(src)
        .args(members)
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    let bytes = std::fs::read(out.path()).unwrap();
    let digest = store.put_blob(&bytes).unwrap();
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
}

/// `text` without terminal colour sequences (ESC [ ... m), which log lines may carry.
fn without_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key="..."` or `key=...` in a tracing line.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(&format!("{key}="))? + key.len() + 1;
    let rest = &text[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next()
    } else {
        rest.split_whitespace().next()
    }
}

/// `Uid: N   Gid: M` of `path` inside the erofs `image`, as dump.erofs reads them.
fn owner_in_image(image: &Path, path: &str) -> (u32, u32) {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dump.erofs {path}: {text}");
    let number = |key: &str| -> u32 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            + key.len();
        text[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (number("Uid:"), number("Gid:"))
}

fn tools_present() -> bool {
    ["mkfs.erofs", "dump.erofs", "tar"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn the_helper_builds_in_its_own_namespaces_and_keeps_the_images_owners() {
    assert!(
        tools_present(),
        "erofs-utils (mkfs.erofs, dump.erofs) and GNU tar are needed"
    );
    let node = Node::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("etc")).unwrap();
    std::fs::create_dir_all(src.path().join("home/user")).unwrap();
    std::fs::write(src.path().join("etc/owned-by-root"), b"root's").unwrap();
    std::fs::write(src.path().join("home/user/owned-by-1000"), b"user's").unwrap();
    let root_mode = euid() == 0;
    if root_mode {
        use std::os::unix::fs::chown;
        chown(src.path().join("etc/owned-by-root"), Some(0), Some(0)).unwrap();
        chown(src.path().join("home/user"), Some(1000), Some(1001)).unwrap();
        chown(
            src.path().join("home/user/owned-by-1000"),
            Some(1000),
            Some(1001),
        )
        .unwrap();
    }
    let layer = layers::pack_directory(&node.store, src.path(), 1_700_000_000).unwrap();
    let digest = node.commit_and_sign("owners:1", &[layer]);

    let out = node.verify_rootfs("owners:1");
    let stderr = without_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");

    // The helper's jail, as the kernel reported it to the helper: its uids map to the unpack
    // range (so on the host it is not the caller's uid), and it had a mount namespace of its
    // own.
    let line = stderr
        .lines()
        .find(|l| l.contains("root filesystem built by the jailed helper"))
        .unwrap_or_else(|| panic!("no helper line in {stderr}"));
    eprintln!("{line}");
    let uid_map = field(line, "helper_uid_map").unwrap();
    let map: Vec<u64> = uid_map
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map.len(), 3, "{line}");
    assert_eq!(map[0], 0, "{line}");
    if root_mode {
        assert_eq!(map[1], 1_000_000_000, "{line}");
        assert_eq!(map[2], 65536, "{line}");
    } else {
        assert_eq!(map[1], u64::from(euid()), "{line}");
        assert_eq!(map[2], 1, "{line}");
    }
    assert_ne!(map[1], u64::from(euid()) * u64::from(root_mode), "{line}");
    let helper_mnt = field(line, "helper_mnt_ns").unwrap();
    let helper_user = field(line, "helper_user_ns").unwrap();
    let ours = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    assert!(helper_mnt.starts_with("mnt:["), "{line}");
    assert_ne!(helper_mnt, ours("mnt"), "{line}");
    assert_ne!(helper_user, ours("user"), "{line}");
    assert_ne!(field(line, "caller_mnt_ns").unwrap(), helper_mnt, "{line}");
    // Outside its work directory the helper's tree is read-only, even where every host uid
    // may write.
    assert!(
        field(line, "helper_tmp_write")
            .unwrap()
            .contains("Read-only file system"),
        "{line}"
    );

    // The image holds the layer's owners, read back from the erofs itself.
    let image = node
        .dir
        .path()
        .join(format!("rootfs/{}.erofs", digest.hex()));
    if root_mode {
        assert_eq!(owner_in_image(&image, "/etc/owned-by-root"), (0, 0));
        assert_eq!(owner_in_image(&image, "/home/user"), (1000, 1001));
        assert_eq!(
            owner_in_image(&image, "/home/user/owned-by-1000"),
            (1000, 1001)
        );
    }
    // The image the node boots is its own copy, not a file the helper could still change, and
    // the helper's work directory is gone.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.uid(), euid());
    // Readable by the jailed VMM's uid, which attaches it (read-only).
    assert_eq!(meta.mode() & 0o777, 0o644, "{:o}", meta.mode());
    let left: Vec<String> = std::fs::read_dir(node.dir.path().join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".erofs") && !n.ends_with(".erofs.sha256"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_hostile_layer_is_refused_by_the_helper_with_the_precise_reason() {
    assert!(
        tools_present(),
        "erofs-utils (mkfs.erofs, dump.erofs) and GNU tar are needed"
    );
    let node = Node::new();
    // A victim outside the build, and a layer pair that tries to delete from it and plant a
    // file in it through a symbolic link.
    let victim = node.dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"host data").unwrap();
    let src = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&victim, src.path().join("escape")).unwrap();
    let first = tar_layer(&node.store, src.path(), &["escape"]);
    let upper = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(upper.path().join("escape")).unwrap();
    std::fs::write(upper.path().join("escape/.wh.keep"), b"").unwrap();
    std::fs::write(upper.path().join("escape/planted"), b"planted").unwrap();
    let second = tar_layer(
        &node.store,
        upper.path(),
        &["escape/.wh.keep", "escape/planted"],
    );
    let digest = node.commit_and_sign("hostile:1", &[first, second.clone()]);

    let out = node.verify_rootfs("hostile:1");
    let stderr = without_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stderr}");
    // The refusal came from the helper, not from an unpack in the admitting process.
    assert!(
        stderr.contains("jailed unpack helper started")
            && stderr.contains("the jailed unpack helper refused the image"),
        "{stderr}"
    );
    let expected = format!(
        "layer {}: refused entry \"escape/.wh.keep\": its path goes through a symbolic link",
        second.descriptor.digest
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("helper failed"), "{stderr}");
    assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"host data");
    assert!(!victim.join("planted").exists());
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    // Nothing was admitted, and no work directory is left behind.
    let rootfs = node.dir.path().join("rootfs");
    assert!(!rootfs.join(format!("{}.erofs", digest.hex())).exists());
    assert_eq!(std::fs::read_dir(&rootfs).unwrap().count(), 0);
}
