//! Request rate limiting in memory: a token bucket per principal (after authentication) and one
//! per source address (before it, see [`SourceLimiter`]).
//!
//! Tenant-wide limits on concurrent sandboxes and memory live in the state database (see
//! [`crate::store::Store::reserve_sandbox`]) because they must hold across restarts of a request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            updated: now,
        }
    }

    /// Whether the bucket would be full again: forgetting it changes nothing.
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens + now.duration_since(self.updated).as_secs_f64() * rate >= burst
    }

    /// Refills at `rate` per second up to `burst`, then takes one token. `Err(seconds)` says when
    /// the next token will be there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// The map behind a lock, also after a panic elsewhere poisoned it: a bucket is always whole
/// (plain numbers), so what the panicking thread left is still a valid limiter state.
fn lock<K>(buckets: &Mutex<HashMap<K, Bucket>>) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
    buckets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bound on tracked principals, so a flood of distinct identities cannot grow memory without end;
/// only authenticated principals get a bucket, so this is a backstop.
const MAX_BUCKETS: usize = 100_000;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `subject`. `Err(seconds)` says when the next token will be there.
    pub fn check(&self, subject: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(subject) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| !b.refilled(now, rate, burst));
        }
        buckets
            .entry(subject.to_owned())
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(now, self.rate, self.burst)
    }
}

/// Requests per source address, checked before authentication so that unauthenticated traffic
/// is limited too. IPv6 addresses count per /64 (what one host is usually given). The map holds
/// at most `capacity` addresses: when full, buckets that have refilled are dropped, and if that is
/// not enough the least recently seen eighth is forgotten (a forgotten address starts again with a
/// full burst, which is the permissive direction), so a flood of distinct addresses costs bounded
/// memory and amortized constant time.
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key an address is limited under: itself for IPv4 (and IPv4-mapped IPv6), its /64 prefix
/// for IPv6.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl SourceLimiter {
    pub fn new(rate: f64, burst: u32, capacity: usize) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            capacity: capacity.max(16),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`. `Err(seconds)` says when the next token will be there.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let key = source_key(ip);
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= self.capacity && !buckets.contains_key(&key) {
            self.evict(&mut buckets, now);
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(now, self.rate, self.burst)
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| !b.refilled(now, rate, burst));
        if buckets.len() < self.capacity {
            return;
        }
        let mut ages: Vec<(Instant, IpAddr)> =
            buckets.iter().map(|(k, b)| (b.updated, *k)).collect();
        let drop = (self.capacity / 8).max(1).min(ages.len());
        ages.select_nth_unstable_by_key(drop - 1, |(updated, _)| *updated);
        for (_, key) in &ages[..drop] {
            buckets.remove(key);
        }
    }
}

/// File transfers in flight, per principal and in total. What one transfer holds in memory is
/// bounded by its streaming (a download) or the body limit (an upload); this bounds how many run
/// at once, so parallel transfers cannot add up without end. A transfer over a limit is refused
/// at once rather than queued: a queue would hold its request and connection instead.
pub struct TransferLimiter {
    per_principal: usize,
    total: usize,
    in_flight: Arc<Mutex<(HashMap<String, usize>, usize)>>,
}

/// A transfer's place; given back when dropped (the transfer ended, however it ended).
pub struct TransferPermit {
    subject: String,
    in_flight: Arc<Mutex<(HashMap<String, usize>, usize)>>,
}

/// Which transfer limit a refused transfer would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferLimit {
    Principal(usize),
    Total(usize),
}

impl TransferLimiter {
    pub fn new(per_principal: usize, total: usize) -> Self {
        Self {
            per_principal: per_principal.max(1),
            total: total.max(1),
            in_flight: Arc::default(),
        }
    }

    /// Checks both limits and takes a place for `subject`, under one lock.
    pub fn acquire(&self, subject: &str) -> Result<TransferPermit, TransferLimit> {
        let mut guard = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (by_subject, total) = &mut *guard;
        if *total >= self.total {
            return Err(TransferLimit::Total(self.total));
        }
        let mine = by_subject.entry(subject.to_owned()).or_default();
        if *mine >= self.per_principal {
            return Err(TransferLimit::Principal(self.per_principal));
        }
        *mine += 1;
        *total += 1;
        Ok(TransferPermit {
            subject: subject.to_owned(),
            in_flight: self.in_flight.clone(),
        })
    }

    /// Transfers in flight on this gateway.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
    }
}

impl Drop for TransferPermit {
    fn drop(&mut self) {
        let mut guard = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (by_subject, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = by_subject.get_mut(&self.subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_subject.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after_and_principals_are_independent() {
        let limiter = RateLimiter::new(0.5, 3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        // 1 token at 0.5/s is 2 s away.
        assert_eq!(limiter.check("a"), Err(2));
        assert!(limiter.check("b").is_ok());
    }

    #[test]
    fn sources_are_limited_per_address_and_ipv6_per_64() {
        let limiter = SourceLimiter::new(0.5, 2, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::V4(0.into()));
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        assert_eq!(limiter.check(a), Err(2));
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::V4(0.into()));
        assert!(limiter.check(v6("2001:db8::1")).is_ok());
        assert!(limiter.check(v6("2001:db8::2")).is_ok());
        assert!(limiter.check(v6("2001:db8::3")).is_err());
        assert!(limiter.check(v6("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_within_the_bound() {
        let limiter = SourceLimiter::new(0.001, 5, 64);
        let victim: IpAddr = "198.51.100.7".parse().unwrap_or(IpAddr::V4(0.into()));
        for _ in 0..5 {
            assert!(limiter.check(victim).is_ok());
        }
        assert!(limiter.check(victim).is_err());
        for i in 0..10_000u32 {
            let _ = limiter.check(IpAddr::V4((0x0a00_0000 + i).into()));
            assert!(limiter.tracked() <= 64);
        }
    }

    #[test]
    fn transfers_are_limited_per_principal_and_in_total_and_given_back_on_drop() {
        let limiter = TransferLimiter::new(2, 3);
        let a1 = limiter.acquire("a").unwrap();
        let _a2 = limiter.acquire("a").unwrap();
        assert_eq!(
            limiter.acquire("a").err(),
            Some(TransferLimit::Principal(2))
        );
        let _b1 = limiter.acquire("b").unwrap();
        assert_eq!(limiter.acquire("c").err(), Some(TransferLimit::Total(3)));
        drop(a1);
        assert_eq!(limiter.in_flight(), 2);
        let _c1 = limiter.acquire("c").unwrap();
    }
}
