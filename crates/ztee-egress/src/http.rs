//! The proxy request a sandbox program sends: `CONNECT host:port` for a tunnel (HTTPS), or a
//! plain HTTP request with an absolute URI (`GET http://host:port/path HTTP/1.1`).

use crate::allowlist::{split_host_port, Host};

/// Largest request head (request line and headers) the proxy reads.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

/// Headers meant for the proxy or for one hop only; never forwarded.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    Connect { host: Host, port: u16 },
    Plain(PlainRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRequest {
    pub method: String,
    pub host: Host,
    pub port: u16,
    /// Origin-form target (`/path?query`).
    pub path: String,
    /// End-to-end headers, in order, without hop-by-hop ones and without `Host`.
    pub headers: Vec<(String, Vec<u8>)>,
    pub content_length: u64,
}

impl PlainRequest {
    /// The head sent upstream: origin-form request line, `Host` from the URI, one request per
    /// connection.
    pub fn upstream_head(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        let host = if self.port == 80 {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

/// Why a request was refused before any destination was considered; each maps to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed proxy request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error(
        "only http:// URLs can be sent as plain requests; use CONNECT (an https:// URL) for TLS"
    )]
    UnsupportedScheme,
    #[error("chunked or other transfer encodings are not supported; send a Content-Length")]
    TransferEncoding,
}

impl RequestError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::TransferEncoding => (411, "Length Required"),
            Self::Malformed(_) | Self::UnsupportedScheme => (400, "Bad Request"),
        }
    }
}

/// Parses a complete head (ending in an empty line). Returns the request and the head's length.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyRequest, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(RequestError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(RequestError::Malformed(err.to_string())),
    };
    if len > MAX_HEAD {
        return Err(RequestError::HeadTooLarge);
    }
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default();
    if method == "CONNECT" {
        let (host, port) =
            split_host_port(target).map_err(|e| RequestError::Malformed(e.to_string()))?;
        return Ok(Some((ProxyRequest::Connect { host, port }, len)));
    }
    let Some(rest) = strip_scheme(target, "http://") else {
        if strip_scheme(target, "https://").is_some() {
            return Err(RequestError::UnsupportedScheme);
        }
        return Err(RequestError::Malformed(
            "a proxy request needs an absolute http:// URL".into(),
        ));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    if authority.contains('@') {
        return Err(RequestError::Malformed(
            "credentials in the URL are not forwarded".into(),
        ));
    }
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (authority, 80)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| RequestError::Malformed("bad URL authority".into()))?;
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| RequestError::Malformed("bad port in URL".into()))?;
        (h, port)
    };
    let host = Host::parse(host).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let mut content_length = None;
    let mut kept = Vec::new();
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if name == "transfer-encoding" {
            return Err(RequestError::TransferEncoding);
        }
        if name == "content-length" {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| RequestError::Malformed("bad Content-Length".into()))?;
            if content_length.is_some_and(|existing| existing != value) {
                return Err(RequestError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(value);
            continue;
        }
        if name == "host" || HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        kept.push((header.name.to_string(), header.value.to_vec()));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > 0 {
        kept.push((
            "Content-Length".into(),
            content_length.to_string().into_bytes(),
        ));
    }
    Ok(Some((
        ProxyRequest::Plain(PlainRequest {
            method,
            host,
            port,
            path,
            headers: kept,
            content_length,
        }),
        len,
    )))
}

fn strip_scheme<'a>(target: &'a str, scheme: &str) -> Option<&'a str> {
    let head = target.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &target[scheme.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> ProxyRequest {
        parse(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn connect() {
        assert_eq!(
            parse_ok("CONNECT Api.Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            ProxyRequest::Connect {
                host: Host::Name("api.example.com".into()),
                port: 443
            }
        );
    }

    #[test]
    fn plain_request_is_rewritten_to_origin_form() {
        let ProxyRequest::Plain(req) = parse_ok(
            "POST http://svc.example:8080/a?b=1 HTTP/1.1\r\nHost: evil.example\r\nProxy-Connection: keep-alive\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc",
        ) else {
            panic!("not plain")
        };
        assert_eq!(req.content_length, 3);
        let head = String::from_utf8(req.upstream_head()).unwrap();
        assert_eq!(
            head,
            "POST /a?b=1 HTTP/1.1\r\nHost: svc.example:8080\r\nX-A: 1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(b"GET https://a.example/ HTTP/1.1\r\n\r\n").unwrap_err(),
            RequestError::UnsupportedScheme
        );
        assert!(matches!(
            parse(b"GET /local HTTP/1.1\r\n\r\n").unwrap_err(),
            RequestError::Malformed(_)
        ));
        assert_eq!(
            parse(b"POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err(),
            RequestError::TransferEncoding
        );
        assert!(parse(b"GET http://u:p@a.example/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(
            b"GET http://a.example/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_err());
        assert_eq!(parse(b"GET http://a.example/ HTTP/1.1\r\n").unwrap(), None);
        let huge = format!(
            "GET http://a.example/ HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(
            parse(huge.as_bytes()).unwrap_err(),
            RequestError::HeadTooLarge
        );
    }
}
