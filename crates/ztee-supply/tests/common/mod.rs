//! Helpers shared by the integration tests: a real CNCF distribution registry on loopback, and a
//! small image with package metadata of every kind the SBOM catalogers read.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ztee_supply::layers;
use ztee_supply::oci::{Descriptor, ImageConfig};
use ztee_supply::Store;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prints the loud skip line the test policy asks for and says whether `tool` is missing.
pub fn missing_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (run scripts/install-deps.sh)");
    }
    !found
}

/// A `docker-registry` (CNCF distribution) process on a random loopback port, killed on drop.
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_with(
            htpasswd.map(|(u, p)| {
                let hash = bcrypt::hash_with_result(p, 5)
                    .unwrap()
                    .format_for_version(bcrypt::Version::TwoA);
                format!("{u}:{hash}\n")
            }),
            None,
        )
    }

    /// `token` is `(realm URL, issuer, service, root certificate bundle path)` for bearer auth.
    pub fn start_with(
        htpasswd_file: Option<String>,
        token: Option<(String, String, String, PathBuf)>,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth = String::new();
        if let Some(content) = htpasswd_file {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, content).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: ztee-test\n    path: {}\n",
                path.display()
            );
        }
        if let Some((realm, issuer, service, bundle)) = token {
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {host}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            host,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

pub const DPKG_STATUS: &str = "\
Package: libssl3
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 6000
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u1
Description: Secure Sockets Layer toolkit - shared libraries

Package: python3-urllib3
Status: install ok installed
Architecture: all
Source: python-urllib3
Version: 1.26.12-1
Description: HTTP library with thread-safe connection pooling for Python3

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib (1:1.2.13.dfsg-1)
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Description: only config files left
";

/// A two-layer image named `name` with dpkg, Python (dpkg-owned and pip-installed), npm and
/// Cargo metadata; the second layer whites out a file of the first.
pub fn sample_image(store: &Store, name: &str) -> Descriptor {
    let base = tempfile::tempdir().unwrap();
    let r = base.path();
    write(r, "etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n");
    write(r, "var/lib/dpkg/status", DPKG_STATUS);
    write(r, "var/lib/dpkg/info/python3-urllib3.list", "/usr/lib/python3/dist-packages/urllib3-1.26.12.dist-info\n/usr/lib/python3/dist-packages/urllib3-1.26.12.dist-info/METADATA\n");
    write(
        r,
        "usr/lib/python3/dist-packages/urllib3-1.26.12.dist-info/METADATA",
        "Metadata-Version: 2.1\nName: urllib3\nVersion: 1.26.12\nLicense: MIT\n",
    );
    write(
        r,
        "usr/local/lib/python3.11/dist-packages/requests-2.19.0.dist-info/METADATA",
        "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.0\nLicense: Apache 2.0\n",
    );
    write(
        r,
        "opt/app/node_modules/lodash/package.json",
        r#"{"name":"lodash","version":"4.17.15","license":"MIT"}"#,
    );
    write(
        r,
        "opt/app/node_modules/@scope/pkg/package.json",
        r#"{"name":"@scope/pkg","version":"1.0.0"}"#,
    );
    write(r, "tmp/gone", "deleted by the upper layer");
    let upper = tempfile::tempdir().unwrap();
    write(upper.path(), "tmp/.wh.gone", "");
    write(upper.path(), "etc/motd", "hello\n");
    let l1 = layers::pack_directory(store, r, 1_700_000_000).unwrap();
    let l2 = layers::pack_directory(store, upper.path(), 1_700_000_000).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        created: Some("2023-11-14T22:13:20Z".into()),
        ..Default::default()
    };
    layers::commit_image(store, name, &[l1, l2], config, BTreeMap::new()).unwrap()
}

/// The rootfs unpack helper for these tests: this test binary, started again with only the
/// `rootfs_helper_entry` test selected, which hands the helper's arguments to
/// `rootfs::helper_main` (every test file that admits images defines that test, calling
/// [`rootfs_helper_entry`]).
pub fn rootfs_builder() -> ztee_supply::rootfs::RootfsBuilder {
    ztee_supply::rootfs::RootfsBuilder::new(std::env::current_exe().unwrap())
        .arg("rootfs_helper_entry")
        .arg("--exact")
        .arg("--nocapture")
        .arg("--test-threads=1")
}

/// Acts as the unpack helper when this process was started as one (see [`rootfs_builder`]);
/// in a normal test run it does nothing.
pub fn rootfs_helper_entry() {
    use ztee_supply::rootfs;
    if std::env::args_os().any(|a| a == rootfs::HELPER_ARG) {
        std::process::exit(rootfs::helper_main(std::env::args_os()));
    }
}
