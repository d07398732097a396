//! `ztee image build`: a root filesystem recipe (Debian suite, packages, files, users) built with
//! debootstrap and packed as a reproducible OCI layer in the local store.
//!
//! Reproducible where the tools allow: every timestamp is pinned to the newest apt `Release`
//! date (`SOURCE_DATE_EPOCH`), the tar is sorted with numeric owners and a fixed gzip header,
//! and caches, logs, the resolver and machine id are removed. Not pinned: package versions
//! (whatever the mirror serves at build time) and files maintainer scripts generate with
//! random content (e.g. debconf caches); see docs/supply-chain.md.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::layers;
use crate::oci::{Descriptor, ImageConfig, ANNOTATION_CREATED};
use crate::store::Store;

pub const ANNOTATION_RECIPE: &str = "dev.ztee.recipe.sha256";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Image name in the local store, e.g. `python`.
    pub name: String,
    #[serde(default = "default_tag")]
    pub tag: String,
    pub base: Base,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub config: RuntimeConfig,
}

fn default_tag() -> String {
    "latest".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Also enable `<suite>-updates` and `<suite>-security` and upgrade.
    #[serde(default = "default_true")]
    pub security_updates: bool,
    #[serde(default = "default_security_mirror")]
    pub security_mirror: String,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_security_mirror() -> String {
    "http://deb.debian.org/debian-security".into()
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub content: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

fn default_mode() -> String {
    "0644".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: Option<u32>,
    pub home: Option<String>,
    #[serde(default = "default_shell")]
    pub shell: String,
}

fn default_shell() -> String {
    "/bin/sh".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

/// A recipe with the hash that keys its cache entry.
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub sha256: String,
}

fn valid_package(p: &str) -> bool {
    p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.as_bytes()[0].is_ascii_lowercase()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn load_recipe(path: &Path) -> Result<LoadedRecipe> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading recipe", path, e))?;
    let bad = |reason: String| Error::Build(format!("{}: {reason}", path.display()));
    let recipe: Recipe = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    format!("{}:{}", recipe.name, recipe.tag)
        .parse::<crate::Reference>()
        .map_err(|e| bad(e.to_string()))?;
    if !recipe
        .base
        .suite
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'-')
        || recipe.base.suite.is_empty()
    {
        return Err(bad(format!(
            "base.suite {:?} is not a Debian suite name",
            recipe.base.suite
        )));
    }
    for p in &recipe.base.packages {
        if !valid_package(p) {
            return Err(bad(format!(
                "base.packages: {p:?} is not a Debian package name"
            )));
        }
    }
    for f in &recipe.files {
        if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(bad(format!(
                "files: path {:?} must be absolute and must not contain ..",
                f.path
            )));
        }
        u32::from_str_radix(&f.mode, 8).map_err(|_| {
            bad(format!(
                "files: mode {:?} of {} is not octal",
                f.mode, f.path
            ))
        })?;
    }
    for u in &recipe.users {
        if !valid_name(&u.name) || u.uid == 0 {
            return Err(bad(format!(
                "users: {:?} needs a lowercase name and a non-zero uid",
                u.name
            )));
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(b"ztee-recipe-v1\n");
    hasher.update(text.as_bytes());
    Ok(LoadedRecipe {
        recipe,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Progress reports: one short line per stage, and debootstrap's own lines.
pub trait Progress {
    fn stage(&mut self, message: &str);
}

impl<F: FnMut(&str)> Progress for F {
    fn stage(&mut self, message: &str) {
        self(message)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildResult {
    pub reference: String,
    pub descriptor: Descriptor,
    pub cached: bool,
    pub source_date_epoch: u64,
}

fn run(cmd: &mut Command, what: &str, progress: &mut dyn Progress) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Build(format!("{what}: cannot start: {e}")))?;
    let stderr = child.stderr.take();
    let tail = std::thread::spawn(move || {
        let mut last = Vec::new();
        if let Some(err) = stderr {
            for line in BufReader::new(err)
                .lines()
                .map_while(std::result::Result::ok)
            {
                last.push(line);
                if last.len() > 20 {
                    last.remove(0);
                }
            }
        }
        last
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if line.starts_with("I: ") {
                progress.stage(line.trim_start_matches("I: "));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::Build(format!("{what}: {e}")))?;
    let last = tail.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Build(format!(
            "{what} failed ({status}): {}",
            last.join(" | ")
        )));
    }
    Ok(())
}

fn chroot(
    root: &Path,
    args: &[&str],
    epoch: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut cmd = Command::new("chroot");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .arg(root)
        .args(args);
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    run(&mut cmd, &format!("chroot {}", args.join(" ")), progress)
}

/// Unmounts `/proc` in the build root however the build ends.
struct ProcMount(PathBuf);

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The newest `Date:` of the apt Release files: the archive state the build saw.
fn archive_epoch(root: &Path) -> Option<u64> {
    let lists = root.join("var/lib/apt/lists");
    let mut newest = None;
    for entry in std::fs::read_dir(lists).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().ends_with("Release") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let date = text.lines().find_map(|l| l.strip_prefix("Date: "))?;
        let parsed = time::OffsetDateTime::parse(
            date.trim(),
            &time::format_description::well_known::Rfc2822,
        )
        .ok()?;
        let t = parsed.unix_timestamp().max(0) as u64;
        newest = Some(newest.map_or(t, |n: u64| n.max(t)));
    }
    newest
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Builds the recipe into the store (or returns the cached image built from the same recipe).
pub fn build(
    store: &Store,
    loaded: &LoadedRecipe,
    work_parent: &Path,
    progress: &mut dyn Progress,
) -> Result<BuildResult> {
    let recipe = &loaded.recipe;
    let name = format!("{}:{}", recipe.name, recipe.tag);
    if let Some(existing) = store.lookup_tag(&name)? {
        let (manifest, _) = store.manifest(&existing.digest)?;
        if manifest.annotations.get(ANNOTATION_RECIPE) == Some(&loaded.sha256) {
            progress.stage(&format!("cached: {name} is already built from this recipe"));
            let epoch = manifest
                .annotations
                .get("dev.ztee.source-date-epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            return Ok(BuildResult {
                reference: name,
                descriptor: existing,
                cached: true,
                source_date_epoch: epoch,
            });
        }
    }
    for tool in ["debootstrap", "chroot", "mount"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(Error::Build(format!(
                "{tool} is missing; run scripts/install-deps.sh"
            )));
        }
    }
    std::fs::create_dir_all(work_parent).map_err(|e| Error::io("creating", work_parent, e))?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(work_parent)
        .map_err(|e| Error::io("creating build dir in", work_parent, e))?;
    let root = work.path().join("root");
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(work.path()).map(|m| m.uid()).unwrap_or(1);
        if uid != 0 {
            return Err(Error::Build(
                "image builds must run as root (debootstrap creates device nodes and sets owners)"
                    .into(),
            ));
        }
    }

    let base = &recipe.base;
    progress.stage(&format!(
        "debootstrap {} (minbase) from {}",
        base.suite, base.mirror
    ));
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase").arg("--components=main");
    if !base.packages.is_empty() {
        cmd.arg(format!("--include={}", base.packages.join(",")));
    }
    cmd.arg(&base.suite).arg(&root).arg(&base.mirror);
    run(&mut cmd, "debootstrap", progress)?;

    let mut sources = format!("deb {} {} main\n", base.mirror, base.suite);
    if base.security_updates {
        sources.push_str(&format!(
            "deb {} {}-updates main\n",
            base.mirror, base.suite
        ));
        sources.push_str(&format!(
            "deb {} {}-security main\n",
            base.security_mirror, base.suite
        ));
    }
    std::fs::write(root.join("etc/apt/sources.list"), sources)
        .map_err(|e| Error::io("writing", root.join("etc/apt/sources.list"), e))?;
    let policy_rc = root.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy_rc, "#!/bin/sh\nexit 101\n")
        .map_err(|e| Error::io("writing", &policy_rc, e))?;
    set_mode(&policy_rc, 0o755)?;
    let proc_dir = root.join("proc");
    let mounted = Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let guard = mounted.then(|| ProcMount(proc_dir.clone()));
    progress.stage("apt-get update");
    chroot(&root, &["apt-get", "update"], None, progress)?;
    if base.security_updates {
        progress.stage("applying security updates");
        chroot(
            &root,
            &[
                "apt-get",
                "-y",
                "-o",
                "Dpkg::Options::=--force-confold",
                "dist-upgrade",
            ],
            None,
            progress,
        )?;
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|e| e.parse().ok())
        .or_else(|| archive_epoch(&root))
        .unwrap_or(0);

    for user in &recipe.users {
        progress.stage(&format!("adding user {}", user.name));
        let gid = user.gid.unwrap_or(user.uid).to_string();
        let uid = user.uid.to_string();
        let home = user
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", user.name));
        chroot(
            &root,
            &["groupadd", "--gid", &gid, &user.name],
            Some(epoch),
            progress,
        )?;
        chroot(
            &root,
            &[
                "useradd",
                "--uid",
                &uid,
                "--gid",
                &gid,
                "--home-dir",
                &home,
                "--shell",
                &user.shell,
                "--no-create-home",
                &user.name,
            ],
            Some(epoch),
            progress,
        )?;
        chroot(
            &root,
            &[
                "chage",
                "--lastday",
                &(epoch / 86400).to_string(),
                &user.name,
            ],
            Some(epoch),
            progress,
        )?;
        let home_path = root.join(home.trim_start_matches('/'));
        std::fs::create_dir_all(&home_path).map_err(|e| Error::io("creating", &home_path, e))?;
        chown(&home_path, user.uid, user.gid.unwrap_or(user.uid))?;
        set_mode(&home_path, 0o750)?;
    }
    for file in &recipe.files {
        let path = root.join(file.path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        std::fs::write(&path, &file.content).map_err(|e| Error::io("writing", &path, e))?;
        set_mode(&path, u32::from_str_radix(&file.mode, 8).unwrap_or(0o644))?;
        chown(&path, file.uid, file.gid)?;
    }

    progress.stage("removing caches, logs and host files");
    drop(guard);
    chroot(&root, &["apt-get", "clean"], None, progress)?;
    let _ = std::fs::remove_file(&policy_rc);
    for rel in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/log",
        "tmp",
        "run",
        "dev",
        "proc",
        "sys",
        "mnt",
    ] {
        clear_dir(&root.join(rel));
    }
    for rel in [
        "etc/resolv.conf",
        "etc/hostname",
        "var/cache/ldconfig/aux-cache",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "var/lib/apt/extended_states",
        "root/.bash_history",
    ] {
        let _ = std::fs::remove_file(root.join(rel));
    }
    if let Ok(entries) = std::fs::read_dir(root.join("var/lib/dpkg")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with("-old") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::write(root.join("etc/machine-id"), b"");
    set_mode(&root.join("tmp"), 0o1777)?;

    progress.stage("packing the layer");
    let layer = layers::pack_directory(store, &root, epoch)?;
    let created = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    let mut runtime = serde_json::Map::new();
    if !recipe.config.env.is_empty() {
        runtime.insert("Env".into(), serde_json::json!(recipe.config.env));
    }
    if !recipe.config.cmd.is_empty() {
        runtime.insert("Cmd".into(), serde_json::json!(recipe.config.cmd));
    }
    if let Some(u) = &recipe.config.user {
        runtime.insert("User".into(), serde_json::json!(u));
    }
    if let Some(w) = &recipe.config.workdir {
        runtime.insert("WorkingDir".into(), serde_json::json!(w));
    }
    let config = ImageConfig {
        created: created.clone(),
        architecture: "amd64".into(),
        os: "linux".into(),
        config: serde_json::Value::Object(runtime),
        ..Default::default()
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_RECIPE.to_string(), loaded.sha256.clone());
    annotations.insert("dev.ztee.source-date-epoch".to_string(), epoch.to_string());
    if let Some(c) = created {
        annotations.insert(ANNOTATION_CREATED.to_string(), c);
    }
    let descriptor = layers::commit_image(store, &name, &[layer], config, annotations)?;
    progress.stage(&format!("built {name} {}", descriptor.digest));
    Ok(BuildResult {
        reference: name,
        descriptor,
        cached: false,
        source_date_epoch: epoch,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting mode of", path, e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io("setting owner of", path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let p = dir.path().join("r.toml");
            std::fs::write(&p, text).unwrap();
            load_recipe(&p).map(|r| r.sha256).map_err(|e| e.to_string())
        };
        let good = "name = \"python\"\ntag = \"1\"\n[base]\nsuite = \"bookworm\"\npackages = [\"python3\"]\n";
        let a = write(good).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(
            write(&good.replace("python3", "python3-venv")).unwrap(),
            a,
            "the hash follows the recipe"
        );
        assert!(write(&good.replace("python3\"", "rm -rf\""))
            .unwrap_err()
            .contains("not a Debian package name"));
        assert!(write(&format!(
            "{good}[[files]]\npath = \"../etc/x\"\ncontent = \"\"\n"
        ))
        .unwrap_err()
        .contains("absolute"));
        assert!(
            write(&format!("{good}[[users]]\nname = \"root2\"\nuid = 0\n"))
                .unwrap_err()
                .contains("non-zero uid")
        );
        assert!(write(&good.replace("suite", "suit")).is_err());
    }
}
