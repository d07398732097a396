//! `ztee secret` and `ztee run --secret` as an operator runs them: the real binary, a real
//! store on disk, real microVMs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const VALUE: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/ztee/guest")
}

fn ztee(data_dir: &Path, key_file: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ztee"));
    command
        .args(args)
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_GUEST_DIR", guest_dir())
        .env("ZTEE_MASTER_KEY_FILE", key_file)
        .env_remove("ZTEE_LOG")
        .env_remove("ZTEE_MASTER_KEY_COMMAND")
        .env_remove("ZTEE_SECRETS_STORE")
        .stdin(Stdio::null());
    command
}

fn with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn store_list_rotate_and_refuse_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let o = ztee(
        dir.path(),
        &key,
        &["secret", "keygen", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // An existing key file is never replaced.
    let again = ztee(
        dir.path(),
        &key,
        &["secret", "keygen", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    let o = with_stdin(
        ztee(dir.path(), &key, &["secret", "put", "STRIPE_KEY"]),
        &format!("{VALUE}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = ztee(dir.path(), &key, &["--format", "json", "secret", "ls"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8(o.stdout).unwrap();
    assert!(
        listed.contains("STRIPE_KEY") && !listed.contains(VALUE),
        "{listed}"
    );
    let store = std::fs::read_to_string(dir.path().join("secrets.json")).unwrap();
    assert!(
        !store.contains(VALUE),
        "the store holds the value in the clear"
    );

    // Names are validated; values never come from argv (there is no argument for one).
    let o = with_stdin(
        ztee(dir.path(), &key, &["secret", "put", "../x"]),
        "value-123",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("invalid secret name"), "{}", text(&o));
    let o = ztee(dir.path(), &key, &["secret", "put", "A", "value-on-argv"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Rotation: the old key stops working, the new one reads everything.
    let new_key = dir.path().join("master.key.new");
    assert!(ztee(
        dir.path(),
        &key,
        &["secret", "keygen", new_key.to_str().unwrap()]
    )
    .status()
    .unwrap()
    .success());
    let o = ztee(
        dir.path(),
        &key,
        &[
            "secret",
            "rotate-key",
            "--new-master-key-file",
            new_key.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 secret(s)"), "{}", text(&o));
    let o = ztee(dir.path(), &key, &["secret", "ls"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("master key does not match the secret store"),
        "{err}"
    );
    assert!(!err.contains(VALUE));
    let o = ztee(dir.path(), &new_key, &["secret", "rm", "STRIPE_KEY"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = ztee(dir.path(), &new_key, &["secret", "rm", "STRIPE_KEY"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}

/// A data directory whose store holds `STRIPE_KEY` = [`VALUE`], and its master key file; `None`
/// (after a loud message) when QEMU cannot start here.
fn store_holding_the_secret() -> Option<(tempfile::TempDir, PathBuf)> {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("ztee-k")
        .tempdir_in("/tmp")
        .unwrap();
    let key = dir.path().join("master.key");
    assert!(ztee(
        dir.path(),
        &key,
        &["secret", "keygen", key.to_str().unwrap()]
    )
    .status()
    .unwrap()
    .success());
    let o = with_stdin(
        ztee(dir.path(), &key, &["secret", "put", "STRIPE_KEY"]),
        VALUE,
    );
    assert!(o.status.success(), "{}", text(&o));
    Some((dir, key))
}

#[test]
fn run_injects_a_secret_and_redacts_it_from_the_output() {
    let Some((dir, key)) = store_holding_the_secret() else {
        return;
    };

    let script = "echo env=$STRIPE; cat /run/secrets/STRIPE_KEY; echo; base64 /run/secrets/STRIPE_KEY >&2; \
                  od -An -tx1 /run/secrets/STRIPE_KEY | tr -d ' \\n'; echo; stat -c '%a %u' /run/secrets/STRIPE_KEY";
    let o = ztee(
        dir.path(),
        &key,
        &[
            "run",
            "--secret",
            "STRIPE_KEY=STRIPE",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .output()
    .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    use base64::Engine as _;
    for form in [
        VALUE.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(VALUE),
        hex::encode(VALUE),
    ] {
        assert!(!all.contains(&form), "{form} leaked: {all}");
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("env=**_****_"), "{all}");
    assert!(stdout.ends_with("400 1000\n"), "{all}");

    // Without --secret nothing is there.
    let o = ztee(
        dir.path(),
        &key,
        &["run", "--", "sh", "-c", "ls -A /run/secrets | wc -l"],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n", "{}", text(&o));
    // An unknown secret fails before any VM boots.
    let o = ztee(dir.path(), &key, &["run", "--secret", "NOPE", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("secret \"NOPE\" does not exist"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_sandbox_keeps_its_secret_for_every_command_and_redacts_it_everywhere() {
    let Some((dir, key)) = store_holding_the_secret() else {
        return;
    };

    let o = ztee(
        dir.path(),
        &key,
        &["sandbox", "create", "--secret", "STRIPE_KEY=STRIPE"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let exec = |script: &str| {
        ztee(
            dir.path(),
            &key,
            &["sandbox", "exec", &id, "--", "sh", "-c", script],
        )
        .output()
        .unwrap()
    };
    // Every command has the variable and the file; its own env wins over the secret's.
    let first = exec(
        "echo env=$STRIPE; cat /run/secrets/STRIPE_KEY; echo; base64 /run/secrets/STRIPE_KEY >&2",
    );
    let second = exec("od -An -tx1 /run/secrets/STRIPE_KEY | tr -d ' \\n'; echo; stat -c '%a %u' /run/secrets/STRIPE_KEY; cp /run/secrets/STRIPE_KEY /home/user/copy.txt");
    let own = ztee(
        dir.path(),
        &key,
        &[
            "sandbox",
            "exec",
            &id,
            "-e",
            "STRIPE=mine",
            "--",
            "sh",
            "-c",
            "echo $STRIPE",
        ],
    )
    .output()
    .unwrap();
    let copied = dir.path().join("copy.txt");
    let cp = ztee(
        dir.path(),
        &key,
        &[
            "sandbox",
            "cp",
            &format!("{id}:/home/user/copy.txt"),
            copied.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let inspected = ztee(
        dir.path(),
        &key,
        &["sandbox", "inspect", &id, "--format", "json"],
    )
    .output()
    .unwrap();
    let rm = ztee(dir.path(), &key, &["sandbox", "rm", &id])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm));

    use base64::Engine as _;
    let copy = std::fs::read_to_string(&copied).unwrap_or_default();
    let all = [&first, &second, &own, &cp, &inspected]
        .iter()
        .map(|o| text(o))
        .collect::<String>()
        + &copy;
    for form in [
        VALUE.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(VALUE),
        hex::encode(VALUE),
    ] {
        assert!(!all.contains(&form), "{form} leaked: {all}");
    }
    assert!(first.status.success() && second.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&first.stdout).starts_with("env=**_****_"),
        "{all}"
    );
    assert!(
        String::from_utf8_lossy(&second.stdout).ends_with("400 1000\n"),
        "{all}"
    );
    assert_eq!(String::from_utf8_lossy(&own.stdout), "mine\n", "{all}");
    assert!(cp.status.success(), "{all}");
    assert!(copy.starts_with("**_****_"), "the copy is masked: {copy:?}");
    let record: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        record["secrets"],
        serde_json::json!(["STRIPE_KEY=STRIPE"]),
        "{all}"
    );
}
