//! The rate-limit budget of one connection: how many requests may start in any window of
//! the vendor's interval.
//!
//! The budget is a token bucket whose tokens come back one interval after they were spent
//! (a sliding window of start times). A classic bucket that refills continuously would let
//! a full burst through and then the refill on top of it, up to twice the limit within one
//! interval, which a vendor counting requests per window answers with 429s. With the
//! sliding window, no interval ever sees more starts than the limit, whether the vendor
//! counts in fixed or sliding windows, and a sync still uses the whole budget.
//!
//! Corrections from responses only ever make the budget stricter: a remaining-requests
//! header lower than the budget's own count spends the difference (other clients of the
//! same account use it too), and a `Retry-After` pauses every request of the connection.
//!
//! Invariant: at most `limit.requests` calls to [`RateBudget::acquire`] return within any
//! span of `limit.per` (plus a small safety margin for clock and network jitter).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A vendor's documented rate limit: `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl RateLimit {
    /// `requests` per `per`; a limit of zero requests is treated as one.
    pub fn new(requests: u32, per: Duration) -> Self {
        Self {
            requests: requests.max(1),
            per,
        }
    }

    /// The requests per second the limit allows.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.per.as_secs_f64().max(f64::EPSILON)
    }
}

/// A shared budget; clone the `Arc` it lives in to share it between requests.
#[derive(Debug)]
pub struct RateBudget {
    limit: RateLimit,
    /// The window actually enforced: the vendor's interval plus a margin.
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When each request of the current window started, oldest first.
    started: VecDeque<Instant>,
    /// No request starts before this instant (set from `Retry-After`).
    paused_until: Option<Instant>,
}

impl State {
    fn forget_before(&mut self, now: Instant, window: Duration) {
        while let Some(&oldest) = self.started.front() {
            if oldest + window <= now {
                self.started.pop_front();
            } else {
                break;
            }
        }
    }
}

impl RateBudget {
    /// A budget for `limit`, with a margin of 2% of the interval (at least 5 ms) so that
    /// requests that leave on time but arrive late still fit the vendor's window.
    pub fn new(limit: RateLimit) -> Self {
        let margin = (limit.per / 50).max(Duration::from_millis(5));
        Self {
            limit,
            window: limit.per + margin,
            state: Mutex::new(State::default()),
        }
    }

    /// The limit this budget enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the deque inconsistent, so a
        // poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a request may start, and counts it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                state.forget_before(now, self.window);
                match state.paused_until {
                    Some(until) if until > now => until - now,
                    _ if state.started.len() < self.limit.requests as usize => {
                        state.started.push_back(now);
                        return;
                    }
                    _ => {
                        let oldest = *state
                            .started
                            .front()
                            .expect("a full window holds at least one start");
                        oldest + self.window - now
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// How many requests could start now without waiting.
    pub fn available(&self) -> u32 {
        let mut state = self.lock();
        let now = Instant::now();
        state.forget_before(now, self.window);
        if state.paused_until.is_some_and(|until| until > now) {
            return 0;
        }
        self.limit.requests - state.started.len() as u32
    }

    /// Takes the vendor's word for how many requests remain in its current window: when it
    /// is fewer than the budget thinks, the difference is spent now.
    pub fn observe_remaining(&self, remaining: u64) {
        let mut state = self.lock();
        let now = Instant::now();
        state.forget_before(now, self.window);
        let free = self.limit.requests as u64 - state.started.len() as u64;
        for _ in remaining..free {
            state.started.push_back(now);
        }
    }

    /// Stops every request of this budget from starting for `delay` (a `Retry-After`).
    pub fn pause_for(&self, delay: Duration) {
        let mut state = self.lock();
        let until = Instant::now() + delay;
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_window_sees_more_starts_than_the_limit() {
        let budget = RateBudget::new(RateLimit::new(5, Duration::from_millis(300)));
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..12 {
            budget.acquire().await;
            starts.push(begin.elapsed());
        }
        // The first five start at once, the next five one window later, and so on.
        assert!(starts[4] < Duration::from_millis(100), "{starts:?}");
        assert!(starts[5] >= Duration::from_millis(300), "{starts:?}");
        assert!(starts[10] >= Duration::from_millis(600), "{starts:?}");
        for (i, start) in starts.iter().enumerate().skip(5) {
            assert!(
                *start - starts[i - 5] >= Duration::from_millis(300),
                "starts {} and {i} are within one window: {starts:?}",
                i - 5
            );
        }
    }

    #[tokio::test]
    async fn a_lower_remaining_count_spends_the_difference() {
        let budget = RateBudget::new(RateLimit::new(10, Duration::from_secs(10)));
        budget.acquire().await;
        assert_eq!(budget.available(), 9);
        budget.observe_remaining(3);
        assert_eq!(budget.available(), 3);
        // A higher count than the budget's own never loosens it.
        budget.observe_remaining(8);
        assert_eq!(budget.available(), 3);
    }

    #[tokio::test]
    async fn a_pause_holds_every_request() {
        let budget = RateBudget::new(RateLimit::new(100, Duration::from_secs(1)));
        budget.pause_for(Duration::from_millis(150));
        assert_eq!(budget.available(), 0);
        let begin = Instant::now();
        budget.acquire().await;
        assert!(begin.elapsed() >= Duration::from_millis(150));
    }
}
