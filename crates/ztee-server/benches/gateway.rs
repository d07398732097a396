//! Gateway overhead and end-to-end latency.
//!
//!   cargo bench -p ztee-server --bench gateway            # overhead only
//!   ZTEE_BENCH_VM=1 cargo bench -p ztee-server --bench gateway   # plus real VMs
//!
//! Part 1 measures what the gateway adds per request with the VM taken out (an executor that
//! answers at once): authentication, inbound DLP on a 4 KiB body, the Rego policy, outbound DLP
//! and a durable audit append, over real HTTP on loopback. `GET /healthz` is measured in the
//! same run, interleaved, as the HTTP baseline. Part 2 runs `POST /v1/run` on real microVMs,
//! from a warm pool and from a cold boot, side by side.
//!
//! Part 1 also runs a load generator: `POST /v1/run` from 1, 8, 64 and 256 concurrent keep-alive
//! clients, with the disk's raw fsync latency (200 bytes + fdatasync in the audit directory)
//! measured in the same run as the floor every audited request pays at least once.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use ztee_server::exec::{
    AdmittedImage, CreateSpec, ExecError, ExecSpec, Executor, OutputEvent, OutputStream,
    SandboxHandle,
};
use ztee_server::ServerConfig;

const ROUNDS: usize = 2000;
const WARMUP: usize = 200;

/// The VM taken out: every command exits 0 at once with a short output.
struct Instant0;
struct Sandbox0;
struct Done(bool);

#[async_trait]
impl Executor for Instant0 {
    async fn admit(&self, image: &str) -> Result<AdmittedImage, ExecError> {
        Err(ExecError::Guest(format!(
            "no images in this benchmark: {image}"
        )))
    }
    async fn create(&self, _: CreateSpec) -> Result<Box<dyn SandboxHandle>, ExecError> {
        Ok(Box::new(Sandbox0))
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "none"})
    }
}

#[async_trait]
impl SandboxHandle for Sandbox0 {
    fn id(&self) -> String {
        "bench".into()
    }
    fn info(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    async fn exec(&self, _: ExecSpec) -> Result<Box<dyn OutputStream>, ExecError> {
        Ok(Box::new(Done(false)))
    }
    async fn write_file(&self, _: &str, _: Bytes, _: u32) -> Result<(), ExecError> {
        Ok(())
    }
    async fn read_file(&self, _: &str) -> Result<Bytes, ExecError> {
        Ok(Bytes::new())
    }
    async fn destroy(&self) -> Result<(), ExecError> {
        Ok(())
    }
}

#[async_trait]
impl OutputStream for Done {
    async fn next_event(&mut self) -> Option<OutputEvent> {
        if self.0 {
            return None;
        }
        self.0 = true;
        Some(OutputEvent::Exit {
            exit_code: Some(0),
            timed_out: false,
        })
    }
}

struct Samples(Vec<Duration>);

impl Samples {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

async fn start(
    data_dir: &std::path::Path,
    executor: Arc<dyn Executor>,
    config: ServerConfig,
) -> (String, String) {
    let bundle = ztee_policy::Bundle::builtin().unwrap();
    let policy = ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::compile(&bundle).unwrap(),
        config.dlp.inbound,
    );
    let engines = ztee_server::Engines {
        executor,
        dlp: Arc::new(ztee_server::ZteeDlp::new(Default::default()).unwrap()),
        policy: Some(Arc::new(policy)),
        dlp_api: None,
    };
    let listener = ztee_server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (state, _) = ztee_server::build(config, data_dir, engines).await.unwrap();
    let key = ztee_server::apikey::create(&state.store, "bench", "agent", "")
        .unwrap()
        .key;
    tokio::spawn(ztee_server::serve(state, listener, std::future::pending()));
    (format!("http://{addr}"), key)
}

/// About 4 KiB of Python without card data.
fn body_4k() -> serde_json::Value {
    let mut code = String::from("import json\n");
    let mut i = 0;
    while code.len() < 4096 - 64 {
        code.push_str(&format!(
            "total_{i} = sum(x * {i} for x in range(100))  # step {i}\n"
        ));
        i += 1;
    }
    serde_json::json!({"cmd": ["python3", "-c", code]})
}

fn unlimited_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.quotas.requests_per_second = 1e9;
    config.quotas.burst = u32::MAX;
    // One loopback address sends everything: lift the per-source limit too.
    config.quotas.source_requests_per_second = 1e9;
    config.quotas.source_burst = u32::MAX;
    // Up to 256 runs of one tenant are in flight at once under load.
    config.quotas.max_sandboxes_per_tenant = u32::MAX;
    config.quotas.max_memory_mib_per_tenant = u64::MAX;
    config
}

async fn overhead() {
    let dir = tempfile::tempdir().unwrap();
    let (url, key) = start(dir.path(), Arc::new(Instant0), unlimited_config()).await;
    let client = reqwest::Client::new();
    let body = body_4k();
    let (mut health, mut run) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + ROUNDS {
        let t = Instant::now();
        let r = client.get(format!("{url}/healthz")).send().await.unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap();
        let h = t.elapsed();
        let t = Instant::now();
        let r = client
            .post(format!("{url}/v1/run"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        r.bytes().await.unwrap();
        let d = t.elapsed();
        if i >= WARMUP {
            health.push(h);
            run.push(d);
        }
    }
    let (health, run) = (Samples(health), Samples(run));
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "request (VM excluded)",
        "n",
        "p50 ms",
        "p99 ms",
        "p50 vs healthz",
    ]);
    table.add_row(vec![
        "GET /healthz (HTTP baseline)".into(),
        ROUNDS.to_string(),
        ms(health.pct(0.5)),
        ms(health.pct(0.99)),
        "1.00x".into(),
    ]);
    table.add_row(vec![
        "POST /v1/run, 4 KiB: auth+DLP+policy+audit".into(),
        ROUNDS.to_string(),
        ms(run.pct(0.5)),
        ms(run.pct(0.99)),
        format!(
            "{:.2}x",
            run.pct(0.5).as_secs_f64() / health.pct(0.5).as_secs_f64()
        ),
    ]);
    table.add_row(vec![
        "gateway overhead (difference)".into(),
        String::new(),
        ms(run.pct(0.5).saturating_sub(health.pct(0.5))),
        ms(run.pct(0.99).saturating_sub(health.pct(0.99))),
        String::new(),
    ]);
    println!("{table}");
}

const LEVELS: [usize; 4] = [1, 8, 64, 256];
/// Measured time per concurrency level, after a warm-up of a quarter of it.
const LEVEL_SECS: f64 = 4.0;
const FSYNC_ROUNDS: usize = 1000;

/// The disk's floor: 200 bytes appended and fdatasync'd, on a file in the audit directory.
fn fsync_floor(dir: &std::path::Path) -> Samples {
    use std::io::Write;
    let path = dir.join("fsync-floor.bench");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let line = [b'x'; 200];
    let mut v = Vec::with_capacity(FSYNC_ROUNDS);
    for i in 0..WARMUP + FSYNC_ROUNDS {
        let t = Instant::now();
        f.write_all(&line).unwrap();
        f.sync_data().unwrap();
        if i >= WARMUP {
            v.push(t.elapsed());
        }
    }
    drop(f);
    std::fs::remove_file(&path).unwrap();
    Samples(v)
}

/// `clients` keep-alive clients each sending `POST /v1/run` back to back for `secs`.
async fn load_level(
    url: &str,
    key: &str,
    body: &Arc<Vec<u8>>,
    clients: usize,
    secs: f64,
) -> (Samples, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, url, key, body) = (
            client.clone(),
            format!("{url}/v1/run"),
            key.to_owned(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                r.bytes().await.unwrap();
                v.push(t.elapsed());
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = all.len() as f64 / elapsed;
    (Samples(all), rate)
}

async fn load() {
    let dir = tempfile::tempdir().unwrap();
    let (url, key) = start(dir.path(), Arc::new(Instant0), unlimited_config()).await;
    let body = Arc::new(serde_json::to_vec(&body_4k()).unwrap());
    let audit_dir = dir.path().join("audit");
    assert!(
        audit_dir.is_dir(),
        "no audit directory in {}",
        dir.path().display()
    );
    let floor = tokio::task::block_in_place(|| fsync_floor(&audit_dir));
    let (f50, f99) = (floor.pct(0.5), floor.pct(0.99));
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "POST /v1/run under load (VM excluded)",
        "n",
        "p50 ms",
        "p99 ms",
        "req/s",
        "p50 - fsync p50 ms",
        "p99 - fsync p50 ms",
    ]);
    table.add_row(vec![
        "raw fsync, 200 B + fdatasync (floor)".into(),
        FSYNC_ROUNDS.to_string(),
        ms(f50),
        ms(f99),
        String::new(),
        String::new(),
        String::new(),
    ]);
    // ZTEE_BENCH_LEVELS=64 ZTEE_BENCH_SECS=2 narrows the run (for a profiler).
    let levels: Vec<usize> = match std::env::var("ZTEE_BENCH_LEVELS") {
        Ok(v) => v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => LEVELS.to_vec(),
    };
    let secs: f64 = std::env::var("ZTEE_BENCH_SECS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(LEVEL_SECS);
    for clients in levels {
        // Warm-up: connections opened, caches and the writer thread warm.
        load_level(&url, &key, &body, clients, secs / 4.0).await;
        let (s, rate) = load_level(&url, &key, &body, clients, secs).await;
        let p99 = s.pct(0.99);
        let over50 = s.pct(0.5).as_secs_f64() - f50.as_secs_f64();
        let over = p99.as_secs_f64() - f50.as_secs_f64();
        table.add_row(vec![
            format!("{clients} concurrent clients"),
            s.0.len().to_string(),
            ms(s.pct(0.5)),
            ms(p99),
            format!("{rate:.0}"),
            format!("{:.3}", over50 * 1000.0),
            format!("{:.3}", over * 1000.0),
        ]);
    }
    println!("{table}");
    println!(
        "fsync floor p50 {} ms, p99 {} ms; targets: p99 - fsync p50 <= 0.3 ms, >= 5000 req/s at 64",
        ms(f50),
        ms(f99)
    );
}

/// The stages one at a time, in process, on the same 4 KiB input.
async fn stages() {
    use ztee_server::DlpEngine as _;
    use ztee_server::PolicyEngine as _;
    let dir = tempfile::tempdir().unwrap();
    let store = ztee_state::Store::open_for_server(&dir.path().join("s.db")).unwrap();
    let key = ztee_server::apikey::create(&store, "bench", "agent", "")
        .unwrap()
        .key;
    let dlp = ztee_server::ZteeDlp::new(Default::default()).unwrap();
    let policy = ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    );
    let log = ztee_audit::AuditLog::open(
        ztee_audit::AuditConfig::new(dir.path()),
        ztee_audit::NodeKey::load_or_generate(dir.path()).unwrap(),
    )
    .unwrap();
    let code = body_4k()["cmd"][2].as_str().unwrap().to_owned();
    let input = ztee_server::PolicyInput {
        action: "run",
        subject: "apikey:x".into(),
        tenant: "bench".into(),
        roles: vec!["agent".into()],
        image: None,
        memory_mib: Some(128),
        vcpus: Some(1),
        timeout_s: Some(60),
        findings: Vec::new(),
        cmd: vec!["python3".into(), "-c".into(), code.clone()],
        secrets: Vec::new(),
    };
    let mut rows: Vec<(&str, Samples)> = Vec::new();
    let time = |f: &mut dyn FnMut()| {
        let mut v = Vec::with_capacity(ROUNDS);
        for i in 0..WARMUP + ROUNDS {
            let t = Instant::now();
            f();
            if i >= WARMUP {
                v.push(t.elapsed());
            }
        }
        Samples(v)
    };
    rows.push((
        "API key check (SQLite + SHA-256)",
        time(&mut || {
            ztee_server::apikey::authenticate(&store, &key)
                .unwrap()
                .unwrap();
        }),
    ));
    rows.push((
        "DLP scan, 4 KiB",
        time(&mut || {
            assert!(dlp.scan(&code).is_empty());
        }),
    ));
    rows.push((
        "Rego policy decision",
        time(&mut || {
            policy.decide(&input);
        }),
    ));
    let mut v = Vec::new();
    for i in 0..WARMUP + ROUNDS {
        let event = ztee_server::audit::event(
            ztee_audit::EventType::Run,
            ztee_audit::Outcome::Success,
            ztee_audit::Principal::system(),
            "bench",
            None,
            Some("run/bench"),
        )
        .with_code(code.as_bytes());
        let t = Instant::now();
        log.append(event).await.unwrap();
        if i >= WARMUP {
            v.push(t.elapsed());
        }
    }
    rows.push(("audit append (fsync before ack)", Samples(v)));
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "stage, in process",
        "n",
        "p50 ms",
        "p99 ms",
    ]);
    for (name, s) in &rows {
        table.add_row(vec![
            name.to_string(),
            ROUNDS.to_string(),
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
        ]);
    }
    println!("{table}");
}

async fn vm_latency() {
    let guest = std::env::var_os("ZTEE_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/ztee/guest")
        });
    let Ok(assets) = ztee_vm::GuestAssets::in_dir(&guest) else {
        eprintln!(
            "SKIPPED: no guest assets in {}; run scripts/guest.sh",
            guest.display()
        );
        return;
    };
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "POST /v1/run `echo hi`",
        "n",
        "p50 ms",
        "max ms",
    ]);
    let mut p50s = Vec::new();
    for (label, pool, n) in [("warm pool (size 2)", 2usize, 8usize), ("cold boot", 0, 4)] {
        let dir = tempfile::Builder::new()
            .prefix("ztee-b")
            .tempdir_in("/tmp")
            .unwrap();
        let engine = ztee_vm::Engine::new(ztee_vm::EngineConfig {
            assets: assets.clone(),
            runtime_dir: dir.path().join("run"),
            cache_dir: ztee_vm::default_cache_dir(),
            accelerator: ztee_vm::AccelChoice::Auto,
            boot_timeout: Duration::from_secs(90),
            snapshots: true,
            jail: ztee_vm::JailConfig::default(),
            vmm: ztee_vm::VmmSettings::default(),
        })
        .unwrap();
        let executor = ztee_server::VmExecutor::new(engine);
        let config = ServerConfig::default();
        if pool > 0 {
            let d = &config.sandbox_defaults;
            executor.start_pool(d.memory_mib, d.vcpus, pool).unwrap();
        }
        let (url, key) = start(dir.path(), Arc::new(executor), config).await;
        let client = reqwest::Client::new();
        let mut samples = Vec::new();
        for _ in 0..n {
            // Give the pool time to refill, so each run measures a warm start.
            if pool > 0 {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            let t = Instant::now();
            let r = client
                .post(format!("{url}/v1/run"))
                .bearer_auth(&key)
                .json(&serde_json::json!({"cmd": ["echo", "hi"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            r.bytes().await.unwrap();
            samples.push(t.elapsed());
        }
        let s = Samples(samples);
        p50s.push(s.pct(0.5));
        table.add_row(vec![
            label.into(),
            n.to_string(),
            ms(s.pct(0.5)),
            ms(s.pct(1.0)),
        ]);
    }
    println!("{table}");
    if let [warm, cold] = p50s[..] {
        println!(
            "warm pool p50 is {:.1}x faster than a cold boot",
            cold.as_secs_f64() / warm.as_secs_f64()
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let only = std::env::var("ZTEE_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only == "overhead" {
            overhead().await;
        }
        if only.is_empty() || only == "load" {
            load().await;
        }
        if only.is_empty() || only == "stages" {
            stages().await;
        }
        if std::env::var_os("ZTEE_BENCH_VM").is_some() {
            vm_latency().await;
        }
    });
}
