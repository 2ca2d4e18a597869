//! Pacing of attempts to one receiver: the wait after a failure and the rate limit.
//!
//! Apart from the lane because both are pure arithmetic over time, tested without a
//! receiver, and because the backoff is part of what the outside relies on (receivers
//! coming back are not hit by every host at once).

use crate::config::{RateLimit, RetryConfig};
use std::time::Duration;
use tokio::time::Instant;

/// Wait before the next attempt after `failures` failed ones: doubling from `initial`,
/// capped at `max`, with "equal jitter" (a random point in the upper half) so receivers
/// coming back are not hit by every host at once; at least what the receiver asked for
/// with `Retry-After` (itself capped at `max`).
pub fn backoff(retry: &RetryConfig, failures: u32, asked: Option<Duration>) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = retry.initial.0.saturating_mul(1u32 << exp).min(retry.max.0);
    let half = full / 2;
    let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64));
    let delay = half + jitter;
    match asked {
        Some(a) => delay.max(a.min(retry.max.0)),
        None => delay,
    }
}

/// Token bucket: `count` attempts per `per`, bursting up to `count`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_token: Duration,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: a receiver may burst `count` attempts at once before the limit paces it.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(limit.count),
            tokens: f64::from(limit.count),
            per_token: limit.per / limit.count,
            last: now,
        }
    }

    /// Takes a token, or says when the next one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let earned =
            now.saturating_duration_since(self.last).as_secs_f64() / self.per_token.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + self.per_token.mul_f64(1.0 - self.tokens))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::duration::HumanDuration;

    fn retry(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            initial: HumanDuration(Duration::from_millis(initial_ms)),
            max: HumanDuration(Duration::from_millis(max_ms)),
            max_age: HumanDuration(Duration::from_secs(60)),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let r = retry(100, 1000);
        for _ in 0..200 {
            for (failures, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (40, 1000),
            ] {
                let d = backoff(&r, failures, None).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "{failures}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
        assert_eq!(
            backoff(&r, 1, Some(Duration::from_secs(5))),
            Duration::from_secs(1)
        );
        assert!(backoff(&r, 1, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
    }

    #[test]
    fn token_bucket_allows_a_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                count: 3,
                per: Duration::from_secs(3),
            },
            start,
        );
        for _ in 0..3 {
            assert!(b.take(start).is_ok());
        }
        let next = b.take(start).unwrap_err();
        assert_eq!(next - start, Duration::from_secs(1));
        assert!(b.take(start + Duration::from_millis(999)).is_err());
        assert!(b.take(start + Duration::from_secs(1)).is_ok());
    }
}
