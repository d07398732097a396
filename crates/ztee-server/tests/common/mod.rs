//! Shared test scaffolding: a gateway on a loopback port with its own data directory.
#![allow(dead_code, clippy::unwrap_used)]

pub mod checks;
pub mod npm;
pub mod oidc;
pub mod venv;
pub mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use ztee_server::exec::{
    AdmittedImage, CreateSpec, ExecError, ExecSpec, Executor, OutputEvent, OutputStream,
    SandboxHandle,
};
use ztee_server::AppState;
use ztee_server::ServerConfig;

pub struct Gateway {
    pub url: String,
    pub admin_key: String,
    pub state: Arc<AppState>,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(config: ServerConfig, executor: Arc<dyn Executor>) -> Gateway {
        let data_dir = tempfile::tempdir().unwrap();
        Self::start_in(config, executor, data_dir).await
    }

    pub async fn start_in(
        config: ServerConfig,
        executor: Arc<dyn Executor>,
        data_dir: tempfile::TempDir,
    ) -> Gateway {
        Self::start_with_policy(config, executor, data_dir, None).await
    }

    /// Like [`Gateway::start_in`], deciding with `policy` (e.g. a Rego bundle) instead of the
    /// built-in rules.
    pub async fn start_with_policy(
        mut config: ServerConfig,
        executor: Arc<dyn Executor>,
        data_dir: tempfile::TempDir,
        policy: Option<Arc<dyn ztee_server::PolicyEngine>>,
    ) -> Gateway {
        config.listen = "127.0.0.1:0".parse().unwrap();
        let dlp = ztee_server::ZteeDlp::new(Default::default()).unwrap();
        let dlp_api = Arc::new(ztee_dlp::http::DlpState::new(dlp.scanner()));
        let listener = ztee_server::bind(config.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let engines = ztee_server::Engines {
            executor,
            dlp: Arc::new(dlp),
            policy,
            dlp_api: Some(dlp_api),
        };
        let (state, bootstrap) = ztee_server::build(config, data_dir.path(), engines)
            .await
            .unwrap();
        let admin_key = bootstrap.admin_key.map(|k| k.key).unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = state.clone();
        let task = tokio::spawn(async move {
            ztee_server::serve(s, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Gateway {
            url: format!("http://{addr}"),
            admin_key,
            state,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Creates an API key directly in the store, as `ztee apikey create` does.
    pub fn key(&self, tenant: &str, role: &str) -> String {
        ztee_server::apikey::create(&self.state.store, tenant, role, "test")
            .unwrap()
            .key
    }

    /// `POST {path}` with a JSON body, as the holder of `key`.
    pub async fn post(
        &self,
        key: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> reqwest::Response {
        client()
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// [`Gateway::post`], answered with JSON (whatever the status).
    pub async fn post_json(
        &self,
        key: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> serde_json::Value {
        self.post(key, path, body).await.json().await.unwrap()
    }

    /// `POST /v1/sandboxes/{sandbox}/commands` with `cmd`, as the holder of `key`.
    pub async fn exec(&self, key: &str, sandbox: &str, cmd: &[&str]) -> reqwest::Response {
        let path = format!("/v1/sandboxes/{sandbox}/commands");
        self.post(key, &path, &serde_json::json!({ "cmd": cmd }))
            .await
    }

    /// [`Gateway::exec`], answered with JSON (whatever the status).
    pub async fn exec_json(&self, key: &str, sandbox: &str, cmd: &[&str]) -> serde_json::Value {
        self.exec(key, sandbox, cmd).await.json().await.unwrap()
    }

    /// `GET {path}` as the holder of `key`.
    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// `DELETE {path}` as the holder of `key`.
    pub async fn delete(&self, key: &str, path: &str) -> reqwest::Response {
        client()
            .delete(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// [`Gateway::get`], answered with JSON (whatever the status).
    pub async fn get_json(&self, key: &str, path: &str) -> serde_json::Value {
        self.get(key, path).await.json().await.unwrap()
    }

    /// Stops the server and drops its state (closing the audit log with a checkpoint); returns
    /// the data directory for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), task).await;
        }
        let Gateway {
            state, data_dir, ..
        } = self;
        drop(state);
        data_dir
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Asserts the error body shape and returns the parsed body.
pub async fn error_body(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let rid = resp
        .headers()
        .get("x-request-id")
        .expect("X-Request-ID on every response")
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["request_id"], rid.as_str(), "{body}");
    body
}

/// A test double for the VM engine, for tests about the gateway (auth, tenancy, errors, DLP
/// stage order) rather than the VM; VM behaviour is covered by the tests that boot real VMs.
/// A command "runs" by printing its arguments after the program name, then its stdin, on stdout,
/// and `stderr:` lines of the env value `ERR` on stderr. Files are kept in memory.
#[derive(Default)]
pub struct EchoExecutor {
    pub created: Mutex<Vec<CreateSpec>>,
    pub executed: Arc<Mutex<Vec<ExecSpec>>>,
    pub destroyed: Arc<Mutex<u32>>,
    /// When set, `create` fails with this engine error.
    pub fail_create: Mutex<Option<String>>,
    /// Images this double's "supply chain" admits, by reference, with their digests; every
    /// other image is refused by the rule `no-policy`, as a node without an admission policy.
    pub admitted_images: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl Executor for EchoExecutor {
    async fn admit(&self, image: &str) -> Result<AdmittedImage, ExecError> {
        match self.admitted_images.lock().unwrap().get(image) {
            Some(digest) => Ok(AdmittedImage::without_rootfs(image, digest)),
            None => Err(ExecError::Refused {
                image: image.to_owned(),
                rule: "no-policy".into(),
                reason: "this node has no admission policy, so it boots only its default image"
                    .into(),
            }),
        }
    }

    async fn create(&self, spec: CreateSpec) -> Result<Box<dyn SandboxHandle>, ExecError> {
        if let Some(msg) = self.fail_create.lock().unwrap().clone() {
            return Err(ExecError::Engine(msg));
        }
        self.created.lock().unwrap().push(spec);
        Ok(Box::new(EchoSandbox {
            id: uuid::Uuid::new_v4().to_string(),
            files: Mutex::new(HashMap::new()),
            executed: self.executed.clone(),
            destroyed: self.destroyed.clone(),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "echo"})
    }
}

pub struct EchoSandbox {
    id: String,
    files: Mutex<HashMap<String, Bytes>>,
    executed: Arc<Mutex<Vec<ExecSpec>>>,
    destroyed: Arc<Mutex<u32>>,
}

struct Events(std::collections::VecDeque<OutputEvent>);

#[async_trait]
impl OutputStream for Events {
    async fn next_event(&mut self) -> Option<OutputEvent> {
        self.0.pop_front()
    }
}

#[async_trait]
impl SandboxHandle for EchoSandbox {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn info(&self) -> serde_json::Value {
        // Shaped like the VM engine's: host internals (pid, jail) next to the VM facts.
        serde_json::json!({
            "id": self.id,
            "backend": "echo",
            "vmm_pid": 4242,
            "jail": {"uid": 64_000, "chroot": format!("/srv/jail/{}", self.id),
                     "cgroup": format!("/sys/fs/cgroup/ztee/{}", self.id)},
        })
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn OutputStream>, ExecError> {
        self.executed.lock().unwrap().push(spec.clone());
        let mut events = std::collections::VecDeque::new();
        let mut out = spec.argv[1..].join(" ");
        if let Some(stdin) = &spec.stdin {
            out.push_str(&String::from_utf8_lossy(stdin));
        }
        // Split the output in small chunks so redaction across chunk boundaries is exercised.
        for chunk in out.as_bytes().chunks(5) {
            events.push_back(OutputEvent::Stdout(Bytes::copy_from_slice(chunk)));
        }
        if let Some(err) = spec.env.get("ERR") {
            events.push_back(OutputEvent::Stderr(Bytes::from(format!("stderr: {err}"))));
        }
        events.push_back(OutputEvent::Exit {
            exit_code: Some(0),
            timed_out: false,
        });
        Ok(Box::new(Events(events)))
    }

    async fn write_file(&self, path: &str, content: Bytes, _mode: u32) -> Result<(), ExecError> {
        self.files.lock().unwrap().insert(path.to_owned(), content);
        Ok(())
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, ExecError> {
        self.files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| ExecError::NotFound(format!("{path}: no such file in the sandbox")))
    }

    async fn destroy(&self) -> Result<(), ExecError> {
        *self.destroyed.lock().unwrap() += 1;
        Ok(())
    }
}

/// The repository's policy bundle (`policies/`), with `configure` applied to its
/// `data.ztee.config` (grants, pre-approved egress, ...), as the gateway's Rego policy.
pub fn repository_policy(
    configure: impl FnOnce(&mut serde_json::Value),
) -> Arc<dyn ztee_server::PolicyEngine> {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    std::fs::create_dir_all(dir.path().join("ztee")).unwrap();
    std::fs::copy(
        repo.join("ztee/main.rego"),
        dir.path().join("ztee/main.rego"),
    )
    .unwrap();
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join("data.json")).unwrap()).unwrap();
    configure(&mut data["ztee"]["config"]);
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let bundle = ztee_policy::Bundle::from_dir(dir.path()).unwrap();
    Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::compile(&bundle).unwrap(),
        Default::default(),
    ))
}
