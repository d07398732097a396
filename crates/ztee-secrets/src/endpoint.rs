//! Which URLs ztee may send credentials or approval details to: `https://` anywhere, plain
//! `http://` only to the host itself (`localhost`, 127.0.0.0/8, `::1`), nothing else. Checked when
//! the configuration is read, so a gateway never starts with a Vault token or a signed approval
//! link bound for a remote host in clear text.
//!
//! Errors name the configuration key and the URL's host, never its user name, password, path or
//! query, which may be credentials themselves (a Slack webhook's path is its secret).

use std::net::{Ipv4Addr, Ipv6Addr};

/// A configured URL that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{key}: not a URL ({reason}); expected https://HOST[:PORT]/...")]
    NotAUrl { key: String, reason: String },
    #[error("{key}: the scheme {scheme}:// is not allowed; use https://")]
    Scheme { key: String, scheme: String },
    #[error("{key}: not an https:// URL with a host")]
    NoHost { key: String },
    #[error(
        "{key}: plain http:// to {host} is refused: only a loopback host (localhost, 127.0.0.0/8, \
         ::1) may be reached without TLS; use https://"
    )]
    PlainHttp { key: String, host: String },
    #[error("{key}: the URL must not carry a user name or password")]
    Credentials { key: String },
}

/// Parses `url` (the value of the configuration key `key`) and checks its transport: `https://`
/// to any host, `http://` to a loopback host only.
pub fn check_endpoint(key: &str, url: &str) -> Result<reqwest::Url, EndpointError> {
    let key = key.to_owned();
    let parsed = match reqwest::Url::parse(url) {
        Ok(parsed) => parsed,
        // url's parse errors describe the problem without quoting the input.
        Err(err) => {
            return Err(EndpointError::NotAUrl {
                key,
                reason: err.to_string(),
            })
        }
    };
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        // Without `//host` the text after the scheme may be anything, credentials included:
        // it is not shown.
        return Err(EndpointError::NoHost { key });
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(host) => Ok(parsed),
        "http" => Err(EndpointError::PlainHttp {
            key,
            host: host.to_owned(),
        }),
        other => Err(EndpointError::Scheme {
            key,
            scheme: other.to_owned(),
        }),
    }
}

/// `localhost`, 127.0.0.0/8 or `::1`, as the URL parser normalised them (`127.1` is
/// `127.0.0.1`, IPv6 hosts come in brackets).
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
        .is_some_and(|v6| v6.is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        check_endpoint("k.url", url).unwrap_err().to_string()
    }

    #[test]
    fn https_anywhere_http_only_to_loopback() {
        for fine in [
            "https://example.com/hook",
            "https://10.0.0.1:8200",
            "http://127.0.0.1:9000/x",
            "http://127.255.0.1/x",
            "http://127.1/x",
            "http://LOCALHOST:8200",
            "http://[::1]:8200",
        ] {
            assert!(check_endpoint("k.url", fine).is_ok(), "{fine}");
        }
        for (bad, expect) in [
            (
                "http://example.com/hook",
                "k.url: plain http:// to example.com is refused",
            ),
            ("http://10.0.0.1/", "to 10.0.0.1 is refused"),
            ("http://[2001:db8::1]/", "to [2001:db8::1] is refused"),
            ("http://localhost.example.com/", "to localhost.example.com"),
            ("http://0.0.0.0/", "to 0.0.0.0 is refused"),
            ("http://[::ffff:10.0.0.1]/", "is refused"),
            (
                "ftp://example.com/x",
                "k.url: the scheme ftp:// is not allowed",
            ),
            (
                "file:///etc/passwd",
                "k.url: not an https:// URL with a host",
            ),
            ("example.com/hook", "k.url: not a URL"),
            ("", "k.url: not a URL"),
        ] {
            let err = refused(bad);
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_do_not_quote_credentials() {
        for (bad, secrets) in [
            (
                "http://alice:s3cret@example.com/T0/B1/XyZ?token=t0k",
                &["alice", "s3cret", "T0", "XyZ", "t0k"][..],
            ),
            ("alice:s3cret@example.com", &["alice", "s3cret"][..]),
            ("http://alice:s3cret@[::1", &["alice", "s3cret"][..]),
        ] {
            let err = refused(bad);
            for secret in secrets {
                assert!(!err.contains(secret), "{secret} in {err}");
            }
        }
    }
}
