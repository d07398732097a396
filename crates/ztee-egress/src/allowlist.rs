//! Which destinations a sandbox may reach: `HOST:PORT` rules, exact or `*.domain`.
//!
//! Host names are compared in lower case, without a trailing dot. `*.example.com` matches every
//! name below `example.com` (`api.example.com`, `a.b.example.com`) but not `example.com` itself:
//! allow both when both are meant. IP literals (`192.0.2.7:443`, `[2001:db8::1]:443`) match only
//! themselves. Ports are always explicit: there is no "any port".

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::EgressError;

/// A destination host as a client named it: a DNS name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as it appears in a URL authority or CONNECT target (IPv6 in brackets).
    pub fn parse(text: &str) -> Result<Self, EgressError> {
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| EgressError::InvalidHost(text.to_string()));
        }
        if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        normalize_name(text).map(Host::Name)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Lower-cases a DNS name, drops one trailing dot and checks its shape (RFC 1123 labels).
fn normalize_name(text: &str) -> Result<String, EgressError> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(name)
    } else {
        Err(EgressError::InvalidHost(text.to_string()))
    }
}

/// Splits `HOST:PORT` (IPv6 hosts in brackets) into its parts.
pub fn split_host_port(text: &str) -> Result<(Host, u16), EgressError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| EgressError::InvalidTarget(format!("{text:?} is not HOST:PORT")))?;
    if host.contains(':') && !host.starts_with('[') {
        return Err(EgressError::InvalidTarget(format!(
            "{text:?}: write IPv6 addresses in brackets, e.g. [2001:db8::1]:443"
        )));
    }
    let port = parse_port(port)
        .ok_or_else(|| EgressError::InvalidTarget(format!("{text:?}: port must be 1-65535")))?;
    Ok((Host::parse(host)?, port))
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The host part of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(Host),
    /// Any name ending in `.` + this domain (stored without the leading `*.`).
    Subdomains(String),
}

/// One allowed destination: `HOST:PORT` or `*.DOMAIN:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub host: HostPattern,
    pub port: u16,
}

impl EgressRule {
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match (&self.host, host) {
            (HostPattern::Exact(allowed), host) => allowed == host,
            (HostPattern::Subdomains(domain), Host::Name(name)) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (HostPattern::Subdomains(_), Host::Ip(_)) => false,
        }
    }
}

impl FromStr for EgressRule {
    type Err = EgressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = text.strip_prefix("*.") {
            let (domain, port) = rest.rsplit_once(':').ok_or_else(|| {
                EgressError::InvalidTarget(format!("{text:?} is not *.DOMAIN:PORT"))
            })?;
            let port = parse_port(port).ok_or_else(|| {
                EgressError::InvalidTarget(format!("{text:?}: port must be 1-65535"))
            })?;
            let domain = normalize_name(domain)?;
            if !domain.contains('.') {
                // `*.com` would allow a whole top-level domain: almost certainly a mistake.
                return Err(EgressError::InvalidTarget(format!(
                    "{text:?}: a wildcard needs a domain with at least two labels, e.g. *.example.com:443"
                )));
            }
            return Ok(EgressRule {
                host: HostPattern::Subdomains(domain),
                port,
            });
        }
        if text.contains('*') {
            return Err(EgressError::InvalidTarget(format!(
                "{text:?}: a wildcard is only allowed as a leading '*.' (e.g. *.example.com:443)"
            )));
        }
        let (host, port) = split_host_port(text)?;
        Ok(EgressRule {
            host: HostPattern::Exact(host),
            port,
        })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(host) => write!(f, "{host}:{}", self.port),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}:{}", self.port),
        }
    }
}

impl Serialize for EgressRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The destinations one sandbox may reach. Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Allowlist(Vec<EgressRule>);

impl Allowlist {
    pub fn new(rules: Vec<EgressRule>) -> Self {
        Self(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn rules(&self) -> &[EgressRule] {
        &self.0
    }

    /// The first rule that allows `host:port`, if any.
    pub fn allows(&self, host: &Host, port: u16) -> Option<&EgressRule> {
        self.0.iter().find(|rule| rule.matches(host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> EgressRule {
        text.parse().unwrap()
    }

    fn host(text: &str) -> Host {
        Host::parse(text).unwrap()
    }

    #[test]
    fn exact_rules_match_host_and_port_only() {
        let r = rule("API.Example.com.:443");
        assert_eq!(r.to_string(), "api.example.com:443");
        assert!(r.matches(&host("api.example.com"), 443));
        assert!(r.matches(&host("API.EXAMPLE.COM."), 443));
        assert!(!r.matches(&host("api.example.com"), 80));
        assert!(!r.matches(&host("x.api.example.com"), 443));
        assert!(!r.matches(&host("example.com"), 443));
    }

    #[test]
    fn wildcards_match_subdomains_but_not_the_domain_or_lookalikes() {
        let r = rule("*.example.com:443");
        assert!(r.matches(&host("a.example.com"), 443));
        assert!(r.matches(&host("a.b.example.com"), 443));
        assert!(!r.matches(&host("example.com"), 443));
        assert!(!r.matches(&host("badexample.com"), 443));
        assert!(!r.matches(&host("example.com.evil.net"), 443));
        assert!(!r.matches(&host("a.example.com"), 8443));
        assert!(!r.matches(&host("93.184.216.34"), 443));
    }

    #[test]
    fn ip_literals() {
        let r = rule("[2001:db8::1]:443");
        assert!(r.matches(&host("[2001:db8::1]"), 443));
        assert!(!r.matches(&host("[2001:db8::2]"), 443));
        let r = rule("192.0.2.7:80");
        assert!(r.matches(&host("192.0.2.7"), 80));
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:65536",
            "example.com:http",
            "*.com:443",
            "*:443",
            "a*.example.com:443",
            "exa mple.com:443",
            "-bad.example.com:443",
            "2001:db8::1:443",
            ":443",
            "*.example.com",
        ] {
            assert!(bad.parse::<EgressRule>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn rules_round_trip_through_json() {
        let list: Allowlist =
            serde_json::from_str(r#"["*.pypi.org:443", "files.example.com:80"]"#).unwrap();
        assert_eq!(list.rules().len(), 2);
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["*.pypi.org:443","files.example.com:80"]"#
        );
        assert!(serde_json::from_str::<Allowlist>(r#"["nope"]"#).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn label() -> impl Strategy<Value = String> {
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
        }

        proptest! {
            #[test]
            fn wildcard_matches_exactly_the_names_below_its_domain(
                domain in proptest::collection::vec(label(), 2..4),
                prefix in proptest::collection::vec(label(), 0..3),
                port in 1u16..,
            ) {
                let domain = domain.join(".");
                let r: EgressRule = format!("*.{domain}:{port}").parse().unwrap();
                let name = if prefix.is_empty() { domain.clone() } else { format!("{}.{domain}", prefix.join(".")) };
                let expected = !prefix.is_empty();
                prop_assert_eq!(r.matches(&Host::Name(name.clone()), port), expected);
                // Glued to the domain without a dot is never a subdomain.
                let glued = format!("x{domain}");
                prop_assert!(!r.matches(&Host::Name(glued), port));
                let other_port = if port == u16::MAX { 1 } else { port + 1 };
                prop_assert!(!r.matches(&Host::Name(name), other_port));
            }

            #[test]
            fn parsing_never_panics_and_display_round_trips(text in "\\PC{0,40}") {
                if let Ok(r) = text.parse::<EgressRule>() {
                    let again: EgressRule = r.to_string().parse().unwrap();
                    prop_assert_eq!(again, r);
                }
            }
        }
    }
}
