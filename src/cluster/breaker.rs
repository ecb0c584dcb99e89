//! When to leave Redis alone: after a failed or timed-out call, every call skips Redis (and
//! takes its fallback at once) for `retry_after`, then the next call tries again. A call that
//! succeeds closes the breaker. Lock-free; time is tokio's, so tests pause and advance it.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// A circuit breaker in front of Redis.
#[derive(Debug)]
pub struct Breaker {
    epoch: Instant,
    retry_after: Duration,
    /// Microseconds since `epoch` until which calls skip Redis; 0: closed.
    open_until_us: AtomicU64,
}

impl Breaker {
    /// A closed breaker that stays open for `retry_after` after each failure.
    pub fn new(retry_after: Duration) -> Breaker {
        Breaker {
            epoch: Instant::now(),
            retry_after,
            open_until_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now.
    pub fn allows(&self) -> bool {
        let until = self.open_until_us.load(Ordering::Relaxed);
        until == 0 || self.now_us() >= until
    }

    /// Whether the breaker is open (Redis was failing at the last call).
    pub fn is_open(&self) -> bool {
        self.open_until_us.load(Ordering::Relaxed) != 0
    }

    /// A call failed: skip Redis for `retry_after`.
    pub fn failed(&self) {
        let until = self
            .now_us()
            .saturating_add(u64::try_from(self.retry_after.as_micros()).unwrap_or(u64::MAX))
            .max(1);
        self.open_until_us.store(until, Ordering::Relaxed);
    }

    /// A call succeeded: closed again.
    pub fn succeeded(&self) {
        self.open_until_us.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_and_retries_after_the_interval() {
        let b = Breaker::new(Duration::from_millis(1000));
        assert!(b.allows() && !b.is_open());
        b.failed();
        assert!(!b.allows() && b.is_open());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.allows());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allows(), "half-open: the next call tries Redis");
        assert!(b.is_open(), "still open until a call succeeds");
        b.failed();
        assert!(!b.allows());
        tokio::time::advance(Duration::from_millis(1000)).await;
        b.succeeded();
        assert!(b.allows() && !b.is_open());
    }
}
