//! Retry delays: exponential with full jitter, never below
//! `retry_policy.backoff` (so a failing server is never hammered) and never
//! above `retry_policy.max_backoff`.
//!
//! The n-th retry (from 0) waits a uniformly random time in
//! `[backoff, min(max_backoff, backoff * 2^(n+1))]`: random, so a fleet that
//! lost its server at the same moment does not come back in step.

use crate::config::RetryPolicy;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: &RetryPolicy) -> Backoff {
        Backoff {
            base: policy.backoff,
            max: policy.max_backoff.max(policy.backoff),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.saturating_add(1).min(30));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, and one more attempt counted.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.base + crate::os::random::jitter(ceiling.saturating_sub(self.base))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds() {
        let policy = RetryPolicy {
            max_retries: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        };
        let mut b = Backoff::new(&policy);
        let ceilings: Vec<u64> = (0..7)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(
                    d >= Duration::from_secs(1) && d <= c,
                    "{d:?} outside [1s, {c:?}]"
                );
                c.as_secs()
            })
            .collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_spread() {
        let policy = RetryPolicy {
            max_retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(&policy);
            b.next_delay();
            b.next_delay();
            seen.insert(b.next_delay().as_millis() / 50);
        }
        assert!(seen.len() > 5, "jitter spreads retries: {seen:?}");
    }
}
