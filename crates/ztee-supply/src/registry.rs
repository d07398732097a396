//! A client for the OCI distribution API (what Docker Hub, Harbor, Zot and CNCF distribution
//! serve): blob upload and download, manifest put and get, with basic and bearer-token auth.
//! [`push`] and [`pull`] copy an image, with its cosign signature and attestations, between the
//! local [`Store`] and a registry, checking every digest on the way in.
//!
//! Everything here blocks (reqwest's blocking client, which runs its own small runtime thread):
//! call it from a plain thread or from `tokio::task::spawn_blocking`, never from an async task.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, ImageIndex};
use crate::reference::Reference;
use crate::store::Store;

/// Registry credentials. The password is never logged or put into an error.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password.as_str());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// How to reach one registry host.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub credentials: Option<Credentials>,
    /// Use plain HTTP. Always on for loopback hosts (`localhost`, `127.0.0.1`, `[::1]`).
    pub plain_http: bool,
}

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may stay silent: while we wait for a response head, and on every read of a
/// body (a per-read bound, so a multi-gigabyte layer may take as long as it needs).
const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// The fifth redirect in a row is an error, so at most four are followed.
const MAX_REDIRECTS: usize = 5;
/// A request with a body is also bounded while the body is sent; the bound grows with the body at
/// this floor rate so that a large layer over a slow link is not cut off.
const UPLOAD_FLOOR_BYTES_PER_SEC: u64 = 64 * 1024;

/// The blocking HTTP client every outbound request of this crate goes through: rustls with the
/// host's native roots, no proxy from the environment, and no automatic redirects
/// ([`execute`] follows them itself, so that credentials never go along).
pub(crate) fn http_client(read_timeout: Duration) -> Result<reqwest::blocking::Client, String> {
    reqwest::blocking::Client::builder()
        .user_agent(concat!("ztee/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(read_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("setting up the HTTP client: {}", error_chain(&e)))
}

/// An error and its sources on one line: reqwest's own message alone ("error sending request")
/// leaves out the reason an operator needs (refused, timed out, certificate unknown...).
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Sends one request and follows redirects: a 301, 302 or 303 turns anything but GET and HEAD into
/// a GET without a body; a 307 or 308 is followed only by a request that cannot carry a body (a
/// blob upload is never replayed elsewhere); the Authorization header never follows a redirect,
/// even to the same host (registries hand blob downloads to storage that must not see the
/// registry's credentials). Any other answer, including an error status, is returned as is.
pub(crate) fn execute(
    http: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    authorization: Option<&str>,
    body: Option<Bytes>,
) -> Result<reqwest::blocking::Response, String> {
    let mut method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let mut authorization = authorization;
    let mut body = body;
    let mut redirects = 0;
    loop {
        let mut request = http.request(method.clone(), url.clone());
        for (name, value) in headers {
            // The length described the first request's body; a redirected request has none.
            if redirects > 0 && name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            request = request.header(*name, *value);
        }
        if let Some(a) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(b) = &body {
            let len = u64::try_from(b.len()).unwrap_or(u64::MAX);
            let sending = Duration::from_secs(len / UPLOAD_FLOOR_BYTES_PER_SEC);
            request = request
                .timeout(REGISTRY_READ_TIMEOUT.saturating_add(sending))
                .body(b.clone());
        }
        let response = request.send().map_err(|e| error_chain(&e.without_url()))?;
        let status = response.status().as_u16();
        if !(300..399).contains(&status) {
            return Ok(response);
        }
        if redirects + 1 >= MAX_REDIRECTS {
            return Err(format!("reached max redirects ({MAX_REDIRECTS})"));
        }
        let Some(location) = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
        else {
            return Ok(response);
        };
        let next = url
            .join(location)
            .map_err(|e| format!("bad redirection to {location:?}: {e}"))?;
        let bodiless = [
            reqwest::Method::GET,
            reqwest::Method::HEAD,
            reqwest::Method::OPTIONS,
            reqwest::Method::TRACE,
        ]
        .contains(&method);
        match status {
            301..=303 => {
                if method != reqwest::Method::HEAD {
                    method = reqwest::Method::GET;
                }
            }
            307 | 308 if bodiless => {}
            _ => return Ok(response),
        }
        // Path only: a redirect to object storage carries a signed query, which is a credential.
        let shown = format!("{}{}", next.origin().ascii_serialization(), next.path());
        tracing::debug!(status, to = %shown, "following a redirect");
        url = next;
        authorization = None;
        body = None;
        redirects += 1;
    }
}

pub struct Client {
    host: String,
    base: String,
    http: reqwest::blocking::Client,
    credentials: Option<Credentials>,
    /// Bearer tokens by scope, so a push fetches one token per repository and action set.
    tokens: Mutex<HashMap<String, String>>,
}

enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = HashMap::new();
    // key="value" pairs; values are quoted and may contain commas (scopes do).
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        map.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    Some(Challenge::Bearer {
        realm: map.remove("realm")?,
        service: map.remove("service"),
        scope: map.remove("scope"),
    })
}

fn is_loopback(host: &str) -> bool {
    let bare = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(bare, "localhost" | "[::1]") || bare.starts_with("127.")
}

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: reqwest::blocking::Response,
}

impl Client {
    pub fn new(host: &str, options: RegistryOptions) -> Result<Client> {
        let scheme = if options.plain_http || is_loopback(host) {
            "http"
        } else {
            "https"
        };
        let http = http_client(REGISTRY_READ_TIMEOUT).map_err(|reason| Error::Registry {
            registry: host.to_string(),
            reason,
        })?;
        Ok(Client {
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            http,
            credentials: options.credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            reason: reason.into(),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| self.err(format!("token service {realm}: invalid URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            if let Some(s) = scope {
                query.append_pair("scope", s);
            }
        }
        let basic = self.credentials.as_ref().map(Credentials::basic_header);
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let response = execute(&self.http, "GET", url.as_str(), &[], basic.as_deref(), None)
            .map_err(|e| self.err(format!("token service {realm}: {e}")))?;
        let code = response.status().as_u16();
        if code >= 400 {
            return Err(self.err(format!(
                "token service {realm} refused the credentials (HTTP {code})"
            )));
        }
        // A token is a few kilobytes; a bigger answer is not a token service's.
        let body: TokenResponse = serde_json::from_reader(response.take(1 << 20)).map_err(|e| {
            self.err(format!(
                "token service {realm} sent an unreadable answer: {e}"
            ))
        })?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| self.err(format!("token service {realm} sent no token")))
    }

    fn authorization_for(&self, challenge: &Challenge) -> Result<String> {
        match challenge {
            Challenge::Basic => self
                .credentials
                .as_ref()
                .map(Credentials::basic_header)
                .ok_or_else(|| self.err("authentication required (set ZTEE_REGISTRY_USERNAME and ZTEE_REGISTRY_PASSWORD)")),
            Challenge::Bearer { realm, service, scope } => {
                let key = scope.clone().unwrap_or_default();
                if let Some(token) = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned()) {
                    return Ok(format!("Bearer {token}"));
                }
                let token = self.fetch_token(realm, service.as_deref(), scope.as_deref())?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(key, token.clone());
                }
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Sends one request; on a 401 answers the registry's challenge once and retries.
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response> {
        let url = self.url(path);
        let mut authorization: Option<String> = None;
        for attempt in 0..2 {
            let response = execute(
                &self.http,
                method,
                &url,
                headers,
                authorization.as_deref(),
                body.clone(),
            )
            .map_err(|e| self.err(format!("{method} {url}: {e}")))?;
            let status = response.status().as_u16();
            if status == 401 && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(parse_challenge)
                    .ok_or_else(|| {
                        self.err(format!(
                            "{method} {url}: 401 without a usable WWW-Authenticate challenge"
                        ))
                    })?;
                authorization = Some(self.authorization_for(&challenge)?);
                continue;
            }
            // The first value of each header, as the registry protocol never repeats one we read.
            let mut names = HashMap::new();
            for (name, value) in response.headers() {
                if let Ok(value) = value.to_str() {
                    names
                        .entry(name.as_str().to_string())
                        .or_insert_with(|| value.to_string());
                }
            }
            return Ok(Response {
                status,
                headers: names,
                body: response,
            });
        }
        Err(self.err(format!(
            "{method} {url}: the registry refused the credentials (HTTP 401)"
        )))
    }

    fn expect(&self, response: Response, ok: &[u16], what: &str) -> Result<Response> {
        if ok.contains(&response.status) {
            return Ok(response);
        }
        let mut text = String::new();
        let _ = response.body.take(2048).read_to_string(&mut text);
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("errors")?
                    .get(0)?
                    .get("message")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        Err(self.err(format!("{what}: HTTP {} {detail}", response.status)))
    }

    pub fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let r = self.send(
            "HEAD",
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            None,
        )?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => self
                .expect(r, &[200], &format!("checking blob {digest}"))
                .map(|_| false),
        }
    }

    /// Uploads a blob (monolithic POST-then-PUT upload) unless the registry already has it.
    pub fn push_blob(&self, repository: &str, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.upload_blob(repository, digest, Bytes::copy_from_slice(bytes))
    }

    /// [`Client::push_blob`] for a blob already owned, so a layer is not copied to be sent.
    fn upload_blob(&self, repository: &str, digest: &Digest, bytes: Bytes) -> Result<()> {
        if self.has_blob(repository, digest)? {
            return Ok(());
        }
        let start = self.send(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[("Content-Length", "0")],
            Some(Bytes::new()),
        )?;
        let start = self.expect(start, &[202], &format!("starting upload of {digest}"))?;
        let location = start
            .headers
            .get("location")
            .ok_or_else(|| self.err("upload started without a Location header"))?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={digest}");
        let done = self.send(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
        )?;
        self.expect(done, &[201, 204], &format!("uploading blob {digest}"))?;
        Ok(())
    }

    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let r = self.send(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(Bytes::copy_from_slice(bytes)),
        )?;
        self.expect(
            r,
            &[201, 200],
            &format!("putting manifest {repository}:{reference}"),
        )?;
        Ok(Digest::of(bytes))
    }

    /// Fetches a manifest by tag or digest. Returns `None` for 404. The body is checked against
    /// the digest asked for, or against the `Docker-Content-Digest` header for a tag.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let accept = [
            oci::MEDIA_TYPE_OCI_MANIFEST,
            oci::MEDIA_TYPE_DOCKER_MANIFEST,
            oci::MEDIA_TYPE_OCI_INDEX,
            oci::MEDIA_TYPE_DOCKER_LIST,
        ]
        .join(", ");
        let r = self.send(
            "GET",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Accept", &accept)],
            None,
        )?;
        if r.status == 404 {
            return Ok(None);
        }
        let mut r = self.expect(
            r,
            &[200],
            &format!("getting manifest {repository}:{reference}"),
        )?;
        let mut bytes = Vec::new();
        r.body
            .by_ref()
            .take(16 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(format!("reading manifest {repository}:{reference}: {e}")))?;
        let actual = Digest::of(&bytes);
        let claimed = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => r
                .headers
                .get("docker-content-digest")
                .and_then(|d| d.parse().ok()),
        };
        if let Some(expected) = claimed {
            if expected != actual {
                return Err(Error::DigestMismatch {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let media_type = r
            .headers
            .get("content-type")
            .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|c| oci::is_image_manifest(c) || oci::is_index(c))
            .or_else(|| oci::sniff_media_type(&bytes))
            .ok_or_else(|| {
                self.err(format!(
                    "manifest {repository}:{reference} has no known media type"
                ))
            })?;
        Ok(Some((media_type, bytes)))
    }

    /// Streams a blob into the store, refusing it unless it hashes to `digest`.
    pub fn pull_blob(&self, repository: &str, digest: &Digest, store: &Store) -> Result<()> {
        if store.has_blob(digest) && store.verify_blob(digest).is_ok() {
            return Ok(());
        }
        let r = self.send(
            "GET",
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            None,
        )?;
        let r = self.expect(r, &[200], &format!("getting blob {digest}"))?;
        store.put_blob_reader(r.body, Some(digest))?;
        Ok(())
    }
}

/// What a push or pull moved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Transfer {
    pub reference: String,
    pub digest: Digest,
    pub blobs: usize,
    /// Cosign artifacts (`sha256-<hex>.sig` / `.att`) copied along with the image.
    pub attachments: Vec<String>,
}

fn registry_of(reference: &Reference) -> Result<&str> {
    reference.registry.as_deref().ok_or_else(|| {
        Error::invalid(
            "registry reference",
            reference.to_string(),
            "name a registry host, e.g. registry.example/vm/python:1",
        )
    })
}

fn manifest_children(media_type: &str, bytes: &[u8]) -> Result<Vec<Descriptor>> {
    if oci::is_index(media_type) {
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| Error::malformed("image index", e))?;
        return Ok(index.manifests);
    }
    let manifest: oci::ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| Error::malformed("image manifest", e))?;
    let mut children = vec![manifest.config];
    children.extend(manifest.layers);
    Ok(children)
}

fn push_manifest_tree(
    client: &Client,
    store: &Store,
    repository: &str,
    descriptor: &Descriptor,
    tag: &str,
) -> Result<usize> {
    let bytes = store.read_blob(&descriptor.digest)?;
    let mut blobs = 0;
    for child in manifest_children(&descriptor.media_type, &bytes)? {
        if oci::is_image_manifest(&child.media_type) {
            blobs +=
                push_manifest_tree(client, store, repository, &child, &child.digest.to_string())?;
        } else {
            let blob = store.read_blob(&child.digest)?;
            client.upload_blob(repository, &child.digest, Bytes::from(blob))?;
            blobs += 1;
        }
    }
    client.push_manifest(repository, tag, &descriptor.media_type, &bytes)?;
    Ok(blobs)
}

/// Pushes the local image `source` to `destination` (a registry reference), with its cosign
/// signature and attestations if the store has them.
pub fn push(
    store: &Store,
    source: &Reference,
    destination: &Reference,
    options: RegistryOptions,
) -> Result<Transfer> {
    let host = registry_of(destination)?;
    let tag = destination.tag_or_latest().ok_or_else(|| {
        Error::invalid(
            "push destination",
            destination.to_string(),
            "give a tag, e.g. :1 (a digest is computed, not chosen)",
        )
    })?;
    let descriptor = store.resolve(source)?;
    let client = Client::new(host, options)?;
    let repository = &destination.repository;
    let blobs = push_manifest_tree(&client, store, repository, &descriptor, tag)?;
    let mut attachments = Vec::new();
    for suffix in ["sig", "att"] {
        let cosign_tag = descriptor.digest.cosign_tag(suffix);
        let local = format!("{}:{cosign_tag}", source.name());
        if let Some(attachment) = store.lookup_tag(&local)? {
            push_manifest_tree(&client, store, repository, &attachment, &cosign_tag)?;
            attachments.push(cosign_tag);
        }
    }
    tracing::info!(%destination, digest = %descriptor.digest, "pushed");
    Ok(Transfer {
        reference: destination.to_string(),
        digest: descriptor.digest,
        blobs,
        attachments,
    })
}

fn pull_tree(
    client: &Client,
    store: &Store,
    repository: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<usize> {
    let mut blobs = 0;
    for child in manifest_children(media_type, bytes)? {
        if oci::is_image_manifest(&child.media_type) {
            let (mt, child_bytes) = client
                .get_manifest(repository, &child.digest.to_string())?
                .ok_or_else(|| {
                    client.err(format!(
                        "manifest {} listed in an index is missing",
                        child.digest
                    ))
                })?;
            blobs += pull_tree(client, store, repository, &mt, &child_bytes)?;
            store.put_blob(&child_bytes)?;
        } else {
            client.pull_blob(repository, &child.digest, store)?;
            blobs += 1;
        }
    }
    Ok(blobs)
}

/// Pulls `source` (a registry reference) into the store, tagged as `source` itself, together with
/// its cosign signature and attestations. A tag is resolved to a digest exactly once here.
pub fn pull(store: &Store, source: &Reference, options: RegistryOptions) -> Result<Transfer> {
    let host = registry_of(source)?;
    let client = Client::new(host, options)?;
    let repository = &source.repository;
    let wanted = source
        .digest
        .as_ref()
        .map(Digest::to_string)
        .or_else(|| source.tag_or_latest().map(str::to_string))
        .unwrap_or_else(|| "latest".to_string());
    let (media_type, bytes) = client
        .get_manifest(repository, &wanted)?
        .ok_or_else(|| client.err(format!("{source} not found")))?;
    let blobs = pull_tree(&client, store, repository, &media_type, &bytes)?;
    let descriptor = store.put_manifest(&media_type, &bytes)?;
    let tag = source
        .tag_or_latest()
        .map(str::to_string)
        .unwrap_or_else(|| descriptor.digest.cosign_tag("img"));
    store.tag(&format!("{}:{tag}", source.name()), descriptor.clone())?;
    let mut attachments = Vec::new();
    for suffix in ["sig", "att"] {
        let cosign_tag = descriptor.digest.cosign_tag(suffix);
        if let Some((mt, att_bytes)) = client.get_manifest(repository, &cosign_tag)? {
            pull_tree(&client, store, repository, &mt, &att_bytes)?;
            let att = store.put_manifest(&mt, &att_bytes)?;
            store.tag(&format!("{}:{cosign_tag}", source.name()), att)?;
            attachments.push(cosign_tag);
        }
    }
    tracing::info!(%source, digest = %descriptor.digest, "pulled");
    Ok(Transfer {
        reference: source.to_string(),
        digest: descriptor.digest,
        blobs,
        attachments,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:vm/python:pull,push""#,
        );
        match c {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
                assert_eq!(scope.as_deref(), Some("repository:vm/python:pull,push"));
            }
            _ => panic!("expected a bearer challenge"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("localhost")
                && !is_loopback("registry.example")
        );
    }
}
