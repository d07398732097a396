#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The built-in store on a real file system: encryption at rest, wrong keys, rotation, names,
//! file modes.

use std::os::unix::fs::PermissionsExt;

use ztee_secrets::{LocalStore, MasterKey, SecretError, SecretName, SecretValue};

fn name(n: &str) -> SecretName {
    SecretName::parse(n).unwrap()
}

fn value(v: &str) -> SecretValue {
    SecretValue::new(v.as_bytes().to_vec()).unwrap()
}

fn same_key(key: &MasterKey) -> MasterKey {
    MasterKey::parse(&key.to_text()).unwrap()
}

#[test]
fn values_are_encrypted_at_rest_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/secrets.json");
    let key = MasterKey::generate();
    let store = LocalStore::open(&path, same_key(&key)).unwrap();
    store
        .put(&name("DB_PASSWORD"), &value("hunter2-very-secret"))
        .unwrap();
    store.put(&name("API_TOKEN"), &value("tok_abc123")).unwrap();

    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(!on_disk.contains("hunter2"), "plaintext on disk: {on_disk}");
    assert!(on_disk.contains("DB_PASSWORD"), "names are listed in clear");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let reopened = LocalStore::open(&path, same_key(&key)).unwrap();
    assert_eq!(
        reopened.get(&name("DB_PASSWORD")).unwrap().expose(),
        b"hunter2-very-secret"
    );
    let names: Vec<String> = reopened
        .list()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["API_TOKEN", "DB_PASSWORD"]);
    reopened.remove(&name("API_TOKEN")).unwrap();
    assert!(matches!(
        reopened.get(&name("API_TOKEN")),
        Err(SecretError::NotFound(_))
    ));
    assert!(matches!(
        reopened.remove(&name("API_TOKEN")),
        Err(SecretError::NotFound(_))
    ));
}

#[test]
fn a_wrong_master_key_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    let store = LocalStore::open(&path, MasterKey::generate()).unwrap();
    store.put(&name("K"), &value("v1-secret")).unwrap();
    let err = LocalStore::open(&path, MasterKey::generate()).unwrap_err();
    assert!(matches!(err, SecretError::WrongMasterKey { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("does not match"), "{text}");
    assert!(!text.contains("v1-secret"));
}

#[test]
fn a_ciphertext_moved_to_another_name_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    let key = MasterKey::generate();
    let store = LocalStore::open(&path, same_key(&key)).unwrap();
    store.put(&name("A"), &value("alpha-secret")).unwrap();
    store.put(&name("B"), &value("bravo-secret")).unwrap();
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file["secrets"]["B"] = file["secrets"]["A"].clone();
    std::fs::write(&path, file.to_string()).unwrap();
    let store = LocalStore::open(&path, key).unwrap();
    assert_eq!(store.get(&name("A")).unwrap().expose(), b"alpha-secret");
    let err = store.get(&name("B")).unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");
}

#[test]
fn rotation_re_encrypts_everything_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    let old = MasterKey::generate();
    let store = LocalStore::open(&path, same_key(&old)).unwrap();
    for i in 0..5 {
        store
            .put(&name(&format!("S{i}")), &value(&format!("value-{i}")))
            .unwrap();
    }
    let before = std::fs::read_to_string(&path).unwrap();
    let new = MasterKey::generate();
    let (rotated, count) = store.rotate_key(same_key(&new)).unwrap();
    assert_eq!(count, 5);
    assert_eq!(rotated.get(&name("S3")).unwrap().expose(), b"value-3");
    let after = std::fs::read_to_string(&path).unwrap();
    assert_ne!(before, after);
    assert!(matches!(
        LocalStore::open(&path, old),
        Err(SecretError::WrongMasterKey { .. })
    ));
    let reopened = LocalStore::open(&path, new).unwrap();
    assert_eq!(reopened.get(&name("S0")).unwrap().expose(), b"value-0");
}

#[test]
fn rotation_changes_nothing_when_a_value_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    let old = MasterKey::generate();
    let store = LocalStore::open(&path, same_key(&old)).unwrap();
    store.put(&name("GOOD"), &value("good-value")).unwrap();
    store.put(&name("BAD"), &value("bad-value")).unwrap();
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file["secrets"]["BAD"]["ciphertext"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    std::fs::write(&path, file.to_string()).unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    let store = LocalStore::open(&path, same_key(&old)).unwrap();
    let err = store.rotate_key(MasterKey::generate()).unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn master_key_files_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let key = MasterKey::generate();
    std::fs::write(&path, key.to_text().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let source = ztee_secrets::MasterKeySource::File(path.clone());
    let err = MasterKey::load(&source).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(MasterKey::load(&source).unwrap().key_id(), key.key_id());
}

#[test]
fn empty_and_oversized_values_are_refused() {
    assert!(matches!(
        SecretValue::new(Vec::new()),
        Err(SecretError::EmptyValue)
    ));
    assert!(matches!(
        SecretValue::new(vec![b'x'; 64 * 1024 + 1]),
        Err(SecretError::ValueTooLarge { .. })
    ));
    let v = value("do-not-print");
    assert!(!format!("{v:?}").contains("do-not-print"));
}
