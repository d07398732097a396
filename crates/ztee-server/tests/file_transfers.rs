//! Review #11: sandbox file transfers are streamed and bounded. A large download is masked as it
//! streams (a card number split between two chunks is still masked), a large binary file is
//! refused when DLP finds something in it and otherwise sent exactly as scanned, transfers over
//! the per-principal limit get 429, and an upload is never read past its limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::{client, error_body, Gateway};
use serde_json::json;
use ztee_server::exec::{
    AdmittedImage, CreateSpec, ExecError, ExecSpec, Executor, FileChunks, OutputStream,
    SandboxHandle,
};
use ztee_server::ServerConfig;

const PAN: &str = "4111111111111111";
/// Read before a download is answered (`transfer::PREFIX_BYTES`).
const PREFIX: usize = 1024 * 1024;
/// The guest double's chunk size: not a divisor of anything the gateway uses.
const CHUNK: usize = 10_000;

/// Files in memory, read back in [`CHUNK`]s. A file under `/slow/` stalls after its first
/// 1.5 MiB until the gate opens; a file under `/flip/` reads differently each time.
#[derive(Default)]
struct Guest {
    files: Mutex<HashMap<String, Bytes>>,
    reads: Mutex<HashMap<String, usize>>,
    gate: tokio::sync::Notify,
}

struct GuestExecutor(Arc<Guest>);

#[async_trait]
impl Executor for GuestExecutor {
    async fn admit(&self, image: &str) -> Result<AdmittedImage, ExecError> {
        Err(ExecError::Refused {
            image: image.to_owned(),
            rule: "no-policy".into(),
            reason: "default image only".into(),
        })
    }

    async fn create(&self, _: CreateSpec) -> Result<Box<dyn SandboxHandle>, ExecError> {
        Ok(Box::new(GuestSandbox(self.0.clone())))
    }

    fn describe(&self) -> serde_json::Value {
        json!({"backend": "guest-double"})
    }
}

struct GuestSandbox(Arc<Guest>);

struct Chunks {
    data: Bytes,
    at: usize,
    stall_at: Option<usize>,
    guest: Arc<Guest>,
}

#[async_trait]
impl FileChunks for Chunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExecError> {
        if self.stall_at.is_some_and(|s| self.at >= s) {
            self.guest.gate.notified().await;
            self.stall_at = None;
        }
        if self.at >= self.data.len() {
            return Ok(None);
        }
        let end = (self.at + CHUNK).min(self.data.len());
        let chunk = self.data.slice(self.at..end);
        self.at = end;
        Ok(Some(chunk))
    }
}

#[async_trait]
impl SandboxHandle for GuestSandbox {
    fn id(&self) -> String {
        "guest-double".into()
    }

    fn info(&self) -> serde_json::Value {
        json!({})
    }

    async fn exec(&self, _: ExecSpec) -> Result<Box<dyn OutputStream>, ExecError> {
        Err(ExecError::Engine("no commands in this double".into()))
    }

    async fn write_file(&self, path: &str, content: Bytes, _: u32) -> Result<(), ExecError> {
        self.0
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), content);
        Ok(())
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, ExecError> {
        self.0
            .files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| ExecError::NotFound(path.to_owned()))
    }

    async fn read_file_chunks(&self, path: &str) -> Result<Box<dyn FileChunks>, ExecError> {
        let mut data = self.read_file(path).await?;
        let read = {
            let mut reads = self.0.reads.lock().unwrap();
            let n = reads.entry(path.to_owned()).or_default();
            *n += 1;
            *n
        };
        if path.starts_with("/flip/") && read > 1 {
            // Another program rewrote the file near its end between two reads.
            let mut changed = data.to_vec();
            let at = changed.len() - 100;
            changed[at..at + PAN.len()].copy_from_slice(PAN.as_bytes());
            data = Bytes::from(changed);
        }
        Ok(Box::new(Chunks {
            data,
            at: 0,
            stall_at: path.starts_with("/slow/").then_some(PREFIX + PREFIX / 2),
            guest: self.0.clone(),
        }))
    }

    async fn destroy(&self) -> Result<(), ExecError> {
        Ok(())
    }
}

struct Setup {
    gw: Gateway,
    guest: Arc<Guest>,
    key: String,
    sandbox: String,
}

async fn setup(config: ServerConfig) -> Setup {
    let guest = Arc::new(Guest::default());
    let gw = Gateway::start(config, Arc::new(GuestExecutor(guest.clone()))).await;
    let key = gw.key("acme", "agent");
    let sbx: serde_json::Value = gw.post_json(&key, "/v1/sandboxes", &json!({})).await;
    let sandbox = sbx["id"].as_str().unwrap().to_owned();
    Setup {
        gw,
        guest,
        key,
        sandbox,
    }
}

impl Setup {
    fn put(&self, path: &str, content: Vec<u8>) {
        self.guest
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), Bytes::from(content));
    }

    async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        client()
            .get(format!(
                "{}/v1/sandboxes/{}/files?path={path}",
                self.gw.url, self.sandbox
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// The `file.read` audit events of `path`, once `n` of them are there.
    async fn reads(&self, path: &str, n: usize) -> Vec<serde_json::Value> {
        let auditor = self.gw.key("acme", "auditor");
        let mut found = Vec::new();
        for _ in 0..100 {
            let audit = self
                .gw
                .get_json(&auditor, "/v1/audit?type=file.read&limit=1000")
                .await;
            found = audit["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e.to_string().contains(path))
                .cloned()
                .collect();
            if found.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        found
    }
}

/// Text lines up to `len` bytes, with a card number written at each of `at`.
fn text_with_pans(len: usize, at: &[usize]) -> Vec<u8> {
    let mut text = Vec::with_capacity(len);
    let mut i = 0;
    while text.len() < len {
        text.extend_from_slice(format!("row {i} ok\n").as_bytes());
        i += 1;
    }
    text.truncate(len);
    for &a in at {
        // On a line of its own, so it reads as a card number whatever was cut around it.
        text[a - 1] = b' ';
        text[a..a + PAN.len()].copy_from_slice(PAN.as_bytes());
        text[a + PAN.len()] = b' ';
    }
    text
}

fn binary(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 7 == 0 { 0xff } else { (i % 251) as u8 })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_split_between_chunks_of_a_large_download_is_masked() {
    let t = setup(ServerConfig::default()).await;
    // One card number across the guest's chunk boundary at 1,200,000, one across the end of
    // the prefix read before the answer, one across a 64 KiB boundary.
    let at = [1_200_000 - 7, PREFIX - 5, 21 * 65_536 - 9];
    let file = text_with_pans(PREFIX * 2, &at);
    t.put("/tmp/big.csv", file.clone());
    let r = t.get(&t.key, "/tmp/big.csv").await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains(PAN), "a card number left unmasked");
    // Three masked numbers (a PCI mask keeps the last four digits).
    let original = String::from_utf8(file).unwrap();
    // Streamed, it is masked exactly as the whole file at once would be.
    let dlp = ztee_server::ZteeDlp::new(Default::default()).unwrap();
    let whole = ztee_server::DlpEngine::redact(&dlp, &original).text;
    assert!(
        text == whole,
        "the streamed masking differs from the whole file's"
    );
    assert_eq!(text.len(), original.len(), "masking keeps the length");
    for a in at {
        let masked = &text[a..a + PAN.len()];
        let digits = masked.chars().filter(char::is_ascii_digit).count();
        assert!(digits <= 12 && masked.ends_with("1111"), "{masked}");
    }
    // Everything else is as written.
    let (mut got, mut want) = (text.into_bytes(), original.into_bytes());
    for a in at {
        got[a..a + PAN.len()].fill(b'#');
        want[a..a + PAN.len()].fill(b'#');
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "differs at {i}: {:?} for {:?}",
            String::from_utf8_lossy(&got[i.saturating_sub(20)..(i + 20).min(got.len())]),
            String::from_utf8_lossy(&want[i.saturating_sub(20)..(i + 20).min(want.len())])
        );
    }
    // Counted in the audit record written when the stream ended, with the digest of what left.
    let events = t.reads("/tmp/big.csv", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0]["event"];
    assert_eq!(event["outcome"], "success", "{event}");
    assert_eq!(event["redactions"]["CREDIT_CARD"], 3, "{event}");
    assert!(event["output_sha256"].is_string(), "{event}");
    assert!(!events[0].to_string().contains(PAN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_binary_download_is_refused_with_card_data_and_sent_as_scanned_without() {
    let t = setup(ServerConfig::default()).await;
    let clean = binary(PREFIX + PREFIX / 2);
    t.put("/tmp/clean.bin", clean.clone());
    let r = t.get(&t.key, "/tmp/clean.bin").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), clean.as_slice());

    // A card number past the prefix, split between two of the guest's chunks.
    let mut dirty = clean.clone();
    let at = 130 * CHUNK - 6;
    dirty[at - 1] = b' ';
    dirty[at..at + PAN.len()].copy_from_slice(PAN.as_bytes());
    dirty[at + PAN.len()] = b' ';
    t.put("/tmp/dirty.bin", dirty);
    let r = t.get(&t.key, "/tmp/dirty.bin").await;
    let body = error_body(r, 422, "dlp_blocked").await;
    assert!(!body.to_string().contains(PAN));
    let events = t.reads("/tmp/dirty.bin", 1).await;
    assert_eq!(events[0]["event"]["outcome"], "denied", "{events:?}");

    // Changed between the scan and the send: the stream breaks before the changed block.
    t.put("/flip/data.bin", clean.clone());
    let r = t.get(&t.key, "/flip/data.bin").await;
    assert_eq!(r.status(), 200);
    let mut r = r;
    let mut got = Vec::new();
    let broken = loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(broken, "a changed file was sent to the end");
    assert!(got.len() < clean.len() - 100 && clean.starts_with(&got));
    let events = t.reads("/flip/data.bin", 1).await;
    assert_eq!(events[0]["event"]["outcome"], "failure", "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_over_the_principal_limit_get_429_and_a_download_streams_as_it_reads() {
    let mut config = ServerConfig::default();
    config.quotas.max_transfers_per_principal = 1;
    let t = setup(config).await;
    t.put("/slow/big.txt", text_with_pans(PREFIX * 2, &[]));
    t.put("/tmp/small.txt", b"small".to_vec());

    let mut slow = t.get(&t.key, "/slow/big.txt").await;
    assert_eq!(slow.status(), 200);
    // The first bytes arrive while the guest has not sent the rest of the file.
    let first = slow.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"row 0 ok\n"));

    // The principal's one place is taken: downloads and uploads are refused, not queued.
    let r = t.get(&t.key, "/tmp/small.txt").await;
    let body = error_body(r, 429, "transfer_limit").await;
    assert!(
        body.to_string().contains("max_transfers_per_principal"),
        "{body}"
    );
    let r = client()
        .put(format!(
            "{}/v1/sandboxes/{}/files?path=/tmp/up.txt",
            t.gw.url, t.sandbox
        ))
        .bearer_auth(&t.key)
        .body("hello")
        .send()
        .await
        .unwrap();
    error_body(r, 429, "transfer_limit").await;
    // Another principal of the tenant (with its own place) is served.
    let admin = t.gw.key("acme", "admin");
    let r = t.get(&admin, "/tmp/small.txt").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "small");

    // The slow download ends: its place comes back.
    t.guest.gate.notify_one();
    let mut len = first.len();
    while let Some(c) = slow.chunk().await.unwrap() {
        len += c.len();
    }
    assert_eq!(len, PREFIX * 2);
    let mut freed = false;
    for _ in 0..100 {
        let r = t.get(&t.key, "/tmp/small.txt").await;
        if r.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed, "the transfer place was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_never_read_past_its_limit_and_a_large_one_is_scanned() {
    let mut config = ServerConfig::default();
    config.limits.max_file_bytes = 512 * 1024;
    let t = setup(config).await;
    let url = format!(
        "{}/v1/sandboxes/{}/files?path=/tmp/up.txt",
        t.gw.url, t.sandbox
    );
    let r = client()
        .put(&url)
        .bearer_auth(&t.key)
        .body(vec![b'a'; 512 * 1024 + 1])
        .send()
        .await
        .unwrap();
    error_body(r, 413, "payload_too_large").await;
    // Large enough to be scanned off the async workers: card data is still refused...
    let mut dirty = text_with_pans(400 * 1024, &[300 * 1024]);
    let r = client()
        .put(&url)
        .bearer_auth(&t.key)
        .body(dirty.clone())
        .send()
        .await
        .unwrap();
    error_body(r, 403, "policy_denied").await;
    // ... and clean data is written.
    dirty[300 * 1024..300 * 1024 + PAN.len()].copy_from_slice(b"0000000000000000");
    let r = client()
        .put(&url)
        .bearer_auth(&t.key)
        .body(dirty.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        t.guest.files.lock().unwrap()["/tmp/up.txt"].as_ref(),
        dirty.as_slice()
    );
}

/// The same through a real VM: the guest sends the file in its own chunks (256 KiB), and a card
/// number written across one of their boundaries, past the prefix, is masked in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_file_streams_masked_across_its_chunks() {
    if !common::vm::available("file transfer VM test") {
        return;
    }
    let data_dir = common::vm::data_dir("ztee-ft");
    let engine = common::vm::engine(data_dir.path());
    let executor = ztee_server::VmExecutor::new(engine).with_admission(data_dir.path());
    let gw = Gateway::start_in(ServerConfig::default(), Arc::new(executor), data_dir).await;
    let key = gw.key("acme", "agent");
    let sbx: serde_json::Value = gw.post_json(&key, "/v1/sandboxes", &json!({})).await;
    let id = sbx["id"].as_str().unwrap();
    // The card number starts 8 bytes before the guest's fifth 256 KiB chunk ends.
    let before = 5 * 256 * 1024 - 8 - 1;
    let script = format!(
        "head -c {before} /dev/zero | tr '\\0' a > /tmp/big.txt; \
         printf '\\n5500%s0004\\n' 00000000 >> /tmp/big.txt; \
         head -c 1048576 /dev/zero | tr '\\0' b >> /tmp/big.txt; wc -c < /tmp/big.txt"
    );
    let out = gw.exec_json(&key, id, &["sh", "-c", &script]).await;
    // Written by the guest, so the command itself carries no card number.
    let pan = "5500000000000004";
    let size = before + 1 + pan.len() + 1 + 1_048_576;
    assert_eq!(out["stdout"], format!("{size}\n"), "{out}");
    let r = client()
        .get(format!(
            "{}/v1/sandboxes/{id}/files?path=/tmp/big.txt",
            gw.url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(text.len(), size);
    assert!(!text.contains(pan), "a card number left unmasked");
    let masked = &text[before + 1..before + 1 + pan.len()];
    assert!(masked.ends_with("0004") && masked.contains('*'), "{masked}");
    let _ = gw.stop().await;
}
