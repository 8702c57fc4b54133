//! Exponential backoff, for restarts of crashing workloads and for reconnecting to the server.

use std::time::Duration;

/// Capped exponential backoff: `base * 2^attempt`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Backoff between restarts of a workload that keeps exiting.
    pub const RESTART: Self = Self {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };
    /// Backoff between attempts to reach the server.
    pub const RECONNECT: Self = Self {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(60),
    };

    /// The delay before attempt `attempt + 1` after `attempt` consecutive failures.
    pub fn delay(self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay with "full jitter" applied: `jitter` in `[0, 1)` scales it into
    /// `[delay/2, delay)`, so a fleet that lost its server does not reconnect in lockstep.
    /// The caller draws `jitter`; this stays deterministic.
    pub fn jittered(self, attempt: u32, jitter: f64) -> Duration {
        let delay = self.delay(attempt);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        delay / 2 + delay.mul_f64(jitter / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff::RESTART;
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(1), Duration::from_secs(2));
        assert_eq!(b.delay(5), Duration::from_secs(32));
        assert_eq!(b.delay(9), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_in_range() {
        let b = Backoff::RECONNECT;
        for attempt in 0..20 {
            let full = b.delay(attempt);
            for j in [0.0, 0.3, 0.999, f64::NAN, -1.0, 7.0] {
                let d = b.jittered(attempt, j);
                assert!(d >= full / 2 && d <= full, "{attempt} {j} {d:?}");
            }
        }
    }
}
