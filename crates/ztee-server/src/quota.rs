//! Per-principal request rate limiting: a token bucket per subject, in memory.
//!
//! Tenant-wide limits on concurrent sandboxes and memory live in the state database (see
//! [`crate::store::Store::reserve_sandbox`]) because they must hold across restarts of a request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sustained requests per second each principal may make.
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// Requests a principal may make in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Sandboxes one tenant may hold at once (one-shot runs count while they run).
    #[serde(default = "default_max_sandboxes")]
    pub max_sandboxes_per_tenant: u32,
    /// Guest memory one tenant may hold at once, in MiB.
    #[serde(default = "default_max_memory")]
    pub max_memory_mib_per_tenant: u64,
}

fn default_rate() -> f64 {
    20.0
}
fn default_burst() -> u32 {
    40
}
fn default_max_sandboxes() -> u32 {
    8
}
fn default_max_memory() -> u64 {
    2048
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            requests_per_second: default_rate(),
            burst: default_burst(),
            max_sandboxes_per_tenant: default_max_sandboxes(),
            max_memory_mib_per_tenant: default_max_memory(),
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
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
        let Ok(mut buckets) = self.buckets.lock() else {
            // A panic elsewhere poisoned the map; refusing everyone would be an outage, and the
            // limiter is a fairness tool, not an access control.
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(subject) {
            let burst = self.burst;
            let rate = self.rate;
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(subject.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u64)
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
}
