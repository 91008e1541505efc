//! When and how long to wait before trying a request again.
//!
//! Delays grow exponentially from `base_delay` up to `max_delay`, and each is stretched by a
//! random share of itself (up to double) so that the clients of one account do not retry in
//! lockstep (backon's schedule). A server's
//! `Retry-After` is a floor: the wait is never shorter than what the server asked for. A
//! server that asks for longer than `max_wait` ends the retries at once with a rate-limited
//! error that carries the wait, so that the scheduler (not a sleeping plugin) does the
//! waiting.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How a client retries failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// The first retry's delay before jitter.
    pub base_delay: Duration,
    /// The longest step the backoff grows to (jitter may stretch a step up to twice this).
    pub max_delay: Duration,
    /// The longest `Retry-After` the client waits for itself; past it, the request fails as
    /// rate-limited with the server's delay.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delays before each retry, in order (`max_attempts - 1` of them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_bounded() {
        let policy = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_wait: Duration::from_secs(1),
        };
        let delays: Vec<_> = policy.delays().collect();
        assert_eq!(delays.len(), 5);
        // backon's jitter adds a random share of each step, up to the step itself.
        for (i, d) in delays.iter().enumerate() {
            let step = (100u64 << i).min(1000);
            assert!(
                *d >= Duration::from_millis(step) && *d <= Duration::from_millis(2 * step),
                "retry {i}: {d:?}"
            );
        }
        let other: Vec<_> = policy.delays().collect();
        assert_ne!(delays, other, "two schedules should differ by their jitter");
        assert_eq!(RetryPolicy::never().delays().count(), 0);
    }
}
