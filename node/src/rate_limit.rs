//! Pacing of background transfers (rebalance copies, tiering uploads) to an average rate.

use std::time::{Duration, Instant};

/// Paces spending to `bytes_per_sec` on average. `spend` returns how long the caller should
/// wait; the caller sleeps outside any lock.
pub struct RateLimit {
    bytes_per_sec: u64,
    started: Instant,
    spent: u64,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            started: Instant::now(),
            spent: 0,
        }
    }

    /// Records `n` bytes sent and returns the pause that keeps the average at the rate.
    pub fn spend(&mut self, n: u64) -> Duration {
        self.spent += n;
        let due = Duration::from_secs_f64(self.spent as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_with_spending() {
        let mut r = RateLimit::new(1000);
        assert!(r.spend(0).is_zero());
        let p = r.spend(2000);
        assert!(
            p > Duration::from_millis(1500) && p <= Duration::from_secs(2),
            "{p:?}"
        );
    }
}
