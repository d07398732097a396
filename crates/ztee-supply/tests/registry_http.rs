//! The registry client's and the vulnerability database download's HTTP behaviour, pinned against
//! a scripted loopback server: which redirects are followed, that credentials never follow a
//! redirect, what an error says, and that the status of a failed download is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use ztee_supply::registry::{Client, Credentials, RegistryOptions};
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::Digest;

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Seen) -> Vec<u8> + Send + Sync;

/// An HTTP/1.1 server on loopback answering every request with `handler`'s bytes, one request
/// per connection, recording what it was sent.
struct Scripted {
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn start(handler: impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let request = read_request(&stream);
                let Some(request) = request else { continue };
                let answer = handler(&request);
                record.lock().unwrap().push(request);
                let mut stream = stream;
                let _ = stream.write_all(&answer);
                let _ = stream.flush();
            }
        });
        Scripted { host, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

fn answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn with_credentials() -> RegistryOptions {
    RegistryOptions {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "s3cret-pass".to_string().into(),
        }),
        plain_http: true,
    }
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[test]
fn a_redirected_manifest_is_fetched_without_the_registry_credentials() {
    let server = Scripted::start(|r| match (r.path.as_str(), r.header("authorization")) {
        ("/v2/vm/python/manifests/1", None) => answer(
            "401 Unauthorized",
            &[("WWW-Authenticate", r#"Basic realm="Registry""#)],
            b"",
        ),
        ("/v2/vm/python/manifests/1", Some(_)) => answer(
            "307 Temporary Redirect",
            &[("Location", "/storage/m1")],
            b"",
        ),
        ("/storage/m1", _) => answer(
            "200 OK",
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            MANIFEST,
        ),
        _ => answer("404 Not Found", &[], b""),
    });
    let client = Client::new(&server.host, with_credentials()).unwrap();
    let (media_type, bytes) = client.get_manifest("vm/python", "1").unwrap().unwrap();
    assert_eq!(media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(bytes, MANIFEST);

    let seen = server.seen();
    let storage: Vec<_> = seen.iter().filter(|s| s.path == "/storage/m1").collect();
    assert_eq!(storage.len(), 1, "the redirect was followed once: {seen:?}");
    assert_eq!(storage[0].method, "GET");
    assert_eq!(
        storage[0].header("authorization"),
        None,
        "credentials stay with the registry, even on the same host"
    );
    assert!(
        storage[0]
            .header("accept")
            .is_some_and(|a| a.contains("application/vnd.oci.image.manifest.v1+json")),
        "the Accept header goes along: {:?}",
        storage[0]
    );
}

#[test]
fn a_blob_upload_answered_with_a_307_is_not_sent_again_elsewhere() {
    let server = Scripted::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("HEAD", _) => answer("404 Not Found", &[], b""),
        ("POST", "/v2/vm/python/blobs/uploads/") => answer(
            "202 Accepted",
            &[("Location", "/v2/vm/python/blobs/uploads/u1?_state=x")],
            b"",
        ),
        ("PUT", p) if p.starts_with("/v2/vm/python/blobs/uploads/u1") => {
            answer("307 Temporary Redirect", &[("Location", "/elsewhere")], b"")
        }
        _ => answer("201 Created", &[], b""),
    });
    let client = Client::new(
        &server.host,
        RegistryOptions {
            credentials: None,
            plain_http: true,
        },
    )
    .unwrap();
    let blob = b"layer bytes";
    let err = client
        .push_blob("vm/python", &Digest::of(blob), blob)
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 307"), "{err}");
    let seen = server.seen();
    assert!(
        seen.iter().all(|s| s.path != "/elsewhere"),
        "a request with a body is not replayed to a redirect target: {seen:?}"
    );
    let put = seen.iter().find(|s| s.method == "PUT").unwrap();
    assert_eq!(put.body, blob);
    assert!(put.path.contains("_state=x&digest=sha256:"), "{}", put.path);
    let post = seen.iter().find(|s| s.method == "POST").unwrap();
    assert_eq!(post.header("content-length"), Some("0"));
}

#[test]
fn an_error_names_the_status_and_the_registry_message_but_not_the_password() {
    let server = Scripted::start(|r| match r.header("authorization") {
        None => answer(
            "401 Unauthorized",
            &[("WWW-Authenticate", r#"Basic realm="Registry""#)],
            b"",
        ),
        Some(_) => answer(
            "403 Forbidden",
            &[("Content-Type", "application/json")],
            br#"{"errors":[{"code":"DENIED","message":"repository is read-only"}]}"#,
        ),
    });
    let client = Client::new(&server.host, with_credentials()).unwrap();
    let err = client
        .get_manifest("vm/python", "1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("registry {}", server.host))
            && err.contains("HTTP 403 repository is read-only"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pass"), "{err}");
    let seen = server.seen();
    assert_eq!(
        seen.last().and_then(|s| s.header("authorization")),
        Some("Basic Y2k6czNjcmV0LXBhc3M="),
        "basic credentials answer the challenge"
    );
}

#[test]
fn a_refused_connection_says_why() {
    // Bind then drop: nothing listens on this port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let client = Client::new(
        &host,
        RegistryOptions {
            credentials: None,
            plain_http: true,
        },
    )
    .unwrap();
    let err = client
        .get_manifest("vm/python", "1")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "registry {host}: GET http://{host}/v2/vm/python/manifests/1: "
        )) && err.to_ascii_lowercase().contains("refused"),
        "{err}"
    );
}

fn osv_zip() -> Vec<u8> {
    let record = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/osv-debian/DSA-5532-1.json"),
    )
    .unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("DSA-5532-1.json", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(&record).unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn a_vulnerability_download_follows_a_redirect_and_reports_a_missing_ecosystem() {
    let archive = osv_zip();
    let server = Scripted::start(move |r| match r.path.as_str() {
        "/osv/Debian/all.zip" => {
            answer("302 Found", &[("Location", "/mirror/Debian/all.zip")], b"")
        }
        "/mirror/Debian/all.zip" => answer("200 OK", &[], &archive),
        _ => answer("404 Not Found", &[], b"no such ecosystem"),
    });
    let data = tempfile::tempdir().unwrap();
    let db = VulnDb::open(data.path());
    let base = format!("http://{}/osv", server.host);
    let report = db.update(&base, &["Debian"], |_| {}).unwrap();
    assert_eq!((report.files_read, report.records_added), (1, 1));

    let err = db.update(&base, &["Nope"], |_| {}).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("vulnerability database: {base}/Nope/all.zip: HTTP 404")
    );
}

#[test]
fn an_upload_start_redirected_with_a_303_continues_as_a_plain_get() {
    let server = Scripted::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("HEAD", _) => answer("404 Not Found", &[], b""),
        ("POST", "/v2/vm/python/blobs/uploads/") => answer(
            "303 See Other",
            &[("Location", "/v2/vm/python/blobs/uploads/started")],
            b"",
        ),
        ("GET", "/v2/vm/python/blobs/uploads/started") => answer(
            "202 Accepted",
            &[("Location", "/v2/vm/python/blobs/uploads/u1")],
            b"",
        ),
        ("PUT", p) if p.starts_with("/v2/vm/python/blobs/uploads/u1?digest=") => {
            answer("201 Created", &[], b"")
        }
        _ => answer("400 Bad Request", &[], b"unexpected"),
    });
    let client = Client::new(
        &server.host,
        RegistryOptions {
            credentials: None,
            plain_http: true,
        },
    )
    .unwrap();
    let blob = b"layer bytes";
    client
        .push_blob("vm/python", &Digest::of(blob), blob)
        .unwrap();
    let seen = server.seen();
    let get = seen.iter().find(|s| s.method == "GET").unwrap();
    assert_eq!(
        (get.header("content-length"), get.body.len()),
        (None, 0),
        "the redirected request carries no body and no stale length: {get:?}"
    );
}
