//! The jailed unpack helper as the caller sees it: a helper past its time limit is killed, one
//! that dies without a report fails with its last words, and the helper's errors keep their
//! kind (a changed layer blob is a digest mismatch, an owner the jail cannot map is named).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ztee_supply::layers;
use ztee_supply::oci::ImageConfig;
use ztee_supply::rootfs::RootfsBuilder;
use ztee_supply::{Digest, Error, Store};

/// Where `common::rootfs_builder` starts this binary as the jailed unpack helper.
#[test]
fn rootfs_helper_entry() {
    common::rootfs_helper_entry();
}

/// A data directory with a one-layer image whose source tree `fill` makes. Its entries are
/// owned by root (as in images from registries, and the only owner a helper started without
/// root can set), unless `keep_owners`.
fn image_with(
    keep_owners: bool,
    fill: impl FnOnce(&std::path::Path),
) -> (tempfile::TempDir, Store, Digest) {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("etc")).unwrap();
    std::fs::write(src.path().join("etc/hostname"), b"sandbox\n").unwrap();
    fill(src.path());
    let layer = if keep_owners {
        layers::pack_directory(&store, src.path(), 1_700_000_000).unwrap()
    } else {
        let out = std::process::Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "-cf",
                "-",
                "-C",
            ])
            .arg(src.path())
            .arg("etc")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar failed");
        let digest = store.put_blob(&out.stdout).unwrap();
        layers::PackedLayer {
            descriptor: ztee_supply::oci::Descriptor {
                media_type: ztee_supply::oci::MEDIA_TYPE_OCI_LAYER_TAR.to_string(),
                digest: digest.clone(),
                size: out.stdout.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            diff_id: digest,
        }
    };
    let descriptor = layers::commit_image(
        &store,
        "t:1",
        &[layer],
        ImageConfig::default(),
        BTreeMap::new(),
    )
    .unwrap();
    (data, store, descriptor.digest)
}

fn image(fill: impl FnOnce(&std::path::Path)) -> (tempfile::TempDir, Store, Digest) {
    image_with(false, fill)
}

fn no_work_dirs_left(data: &std::path::Path) {
    let left: Vec<String> = std::fs::read_dir(data.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("unpack-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_helper_past_its_time_limit_is_killed() {
    let (data, store, digest) = image(|_| {});
    // A "helper" that never reports: a shell sleeping in the jail.
    let builder = RootfsBuilder::new("/bin/sh")
        .arg("-c")
        .arg("sleep 30")
        .timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = builder.build(&store, data.path(), &digest).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not killed in time"
    );
    assert!(
        err.to_string()
            .contains("ran past its limit of 1s and was killed"),
        "{err}"
    );
    no_work_dirs_left(data.path());
}

#[test]
fn a_helper_dying_without_a_report_fails_with_its_last_words() {
    let (data, store, digest) = image(|_| {});
    let builder = RootfsBuilder::new("/bin/sh")
        .arg("-c")
        .arg("echo 'first words' >&2; echo 'the layer reader crashed' >&2; exit 3");
    let err = builder.build(&store, data.path(), &digest).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("without a report"), "{text}");
    assert!(text.contains("the layer reader crashed"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
}

#[test]
fn the_helpers_errors_keep_their_kind() {
    let (data, store, digest) = image(|_| {});
    let (manifest, _) = store.manifest(&digest).unwrap();
    let blob = store.blob_path(&manifest.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = common::rootfs_builder()
        .build(&store, data.path(), &digest)
        .unwrap_err();
    match &err {
        Error::DigestMismatch { expected, .. } => {
            assert_eq!(expected, &manifest.layers[0].digest.to_string())
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    no_work_dirs_left(data.path());
}

#[test]
fn an_owner_the_jail_cannot_map_is_named() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: only root can make a file owned by uid 70000 to pack");
        return;
    }
    let (data, store, digest) = image_with(true, |src| {
        std::fs::write(src.join("etc/far"), b"x").unwrap();
        std::os::unix::fs::chown(src.join("etc/far"), Some(70_000), Some(70_000)).unwrap();
    });
    let err = common::rootfs_builder()
        .build(&store, data.path(), &digest)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("entry \"etc/far\""), "{text}");
    assert!(
        text.contains("its owner 70000:70000 is outside the ids the unpack helper maps"),
        "{text}"
    );
}

#[test]
fn the_helper_builds_the_image_and_the_cache_is_reused() {
    let (data, store, digest) = image(|_| {});
    let builder = common::rootfs_builder();
    let (image, sum) = builder.build(&store, data.path(), &digest).unwrap();
    assert!(std::fs::metadata(&image).unwrap().len() > 0);
    // Cached: a builder that would fail is not started again for the same digest.
    let failing = RootfsBuilder::new("/bin/false");
    assert_eq!(
        failing.build(&store, data.path(), &digest).unwrap(),
        (image, sum)
    );
    no_work_dirs_left(data.path());
}

#[test]
fn a_process_the_helper_leaves_behind_does_not_hold_the_caller() {
    let (data, store, digest) = image(|_| {});
    // One leftover stays in the helper's process group, one leaves it; both keep the helper's
    // standard error open.
    let builder = RootfsBuilder::new("/bin/sh")
        .arg("-c")
        .arg("sleep 30 & setsid sleep 30 & echo 'gave up' >&2; exit 3");
    let started = Instant::now();
    let err = builder.build(&store, data.path(), &digest).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the caller waited {:?} for the helper's leftovers",
        started.elapsed()
    );
    assert!(err.to_string().contains("gave up"), "{err}");
}
