//! E-mail addresses and IPv6 addresses, found from their anchor characters (`@`, `:`) with
//! bounded expansion around each anchor, so the cost stays linear in the text.

use std::net::Ipv6Addr;

use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_IPV6: usize = 45;

fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-')
}

pub(crate) fn emails(text: &str, out: &mut Vec<Candidate>) {
    let b = text.as_bytes();
    let mut resume = 0;
    for at in memchr::memchr_iter(b'@', b) {
        if at < resume {
            continue;
        }
        let mut start = at;
        while start > 0 && at - start < MAX_LOCAL && is_local_char(b[start - 1]) {
            start -= 1;
        }
        // The local part starts with an alphanumeric.
        while start < at && !b[start].is_ascii_alphanumeric() {
            start += 1;
        }
        let mut end = at + 1;
        while end < b.len() && end - at <= MAX_DOMAIN && is_domain_char(b[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start == at || !domain_ok(&b[at + 1..end]) {
            continue;
        }
        out.push(Candidate {
            entity: Entity::EmailAddress,
            start,
            end,
            score: 1.0,
            rule: RuleId::Static("email.address"),
        });
        resume = end;
    }
}

fn domain_ok(domain: &[u8]) -> bool {
    let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
    if labels.len() < 2 {
        return false;
    }
    let labels_ok = labels
        .iter()
        .all(|l| !l.is_empty() && l.len() <= 63 && l[0] != b'-' && l[l.len() - 1] != b'-');
    let tld = labels[labels.len() - 1];
    labels_ok && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
}

fn is_v6_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

pub(crate) fn ipv6(text: &str, out: &mut Vec<Candidate>) {
    let b = text.as_bytes();
    let mut done = 0;
    for colon in memchr::memchr_iter(b':', b) {
        if colon < done {
            continue;
        }
        let mut start = colon;
        while start > done && is_v6_char(b[start - 1]) {
            start -= 1;
        }
        let mut end = colon + 1;
        while end < b.len() && is_v6_char(b[end]) {
            end += 1;
        }
        done = end;
        // A trailing dot or colon is punctuation, not part of the address.
        while end > start && matches!(b[end - 1], b'.') {
            end -= 1;
        }
        let token = &b[start..end];
        let glued = (start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_'))
            || b.get(end)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if glued || token.len() < 3 || token.len() > MAX_IPV6 {
            continue;
        }
        let colons = token.iter().filter(|&&c| c == b':').count();
        let hex_digits = token.iter().filter(|c| c.is_ascii_hexdigit()).count();
        if colons < 2 || hex_digits == 0 {
            continue;
        }
        let Ok(s) = std::str::from_utf8(token) else {
            continue;
        };
        if s.parse::<Ipv6Addr>().is_ok() {
            out.push(Candidate {
                entity: Entity::IpAddress,
                start,
                end,
                score: 0.6,
                rule: RuleId::Static("ip_address.v6"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str, f: fn(&str, &mut Vec<Candidate>)) -> Vec<String> {
        let mut out = Vec::new();
        f(text, &mut out);
        out.iter()
            .map(|c| text[c.start..c.end].to_string())
            .collect()
    }

    #[test]
    fn emails_found_with_valid_domains_only() {
        assert_eq!(
            spans("mail john.doe+x@example.co.uk, or .a@b.io.", emails),
            vec!["john.doe+x@example.co.uk", "a@b.io"]
        );
        assert!(spans("user@localhost @ a@b", emails).is_empty());
    }

    #[test]
    fn ipv6_found_but_not_times_macs_or_paths() {
        assert_eq!(
            spans("from 2001:db8::ff00:42:8329 and ::1 at 12:30:45", ipv6),
            vec!["2001:db8::ff00:42:8329", "::1"]
        );
        assert!(spans("00:1a:2b:3c:4d:5e std::vec::Vec", ipv6).is_empty());
    }
}
