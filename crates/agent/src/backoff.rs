//! The one exponential backoff with jitter: MQTT/IoT Hub reconnects, IoT Hub twin requests and
//! stream collector restarts wait [`Backoff::delay`] after their `attempt`-th failure in a row.
//! The jitter keeps a fleet that lost its broker (or its audit daemon) at the same moment from
//! coming back in lockstep.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter).
    pub initial: Duration,
    /// The delay never grows past this.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): `initial * 2^attempt` capped at `max`,
    /// then a random point in its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_u64())
    }

    /// [`Backoff::delay`] with the random number given (pure, for tests and for callers with
    /// their own seeded source): the result is in `[base / 2, base]` for the base delay
    /// [`Backoff::base`] of `attempt`.
    pub(crate) fn delay_with(&self, attempt: u32, random: u64) -> Duration {
        let base = self.base(attempt);
        let half = base / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % jitter_ms)
    }

    /// The delay before jitter: `initial * 2^attempt`, capped at `max` (never overflows).
    pub fn base(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(1u32 << attempt.min(20)).min(self.max)
    }
}

fn random_u64() -> u64 {
    // uuid's v4 generator is the process's random source already; no extra dependency.
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    #[test]
    fn grows_caps_and_jitters() {
        for attempt in 0..40 {
            let base = Duration::from_millis(500)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(30));
            assert_eq!(B.base(attempt), base);
            let d = B.delay(attempt);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?} vs {base:?}");
        }
        assert_eq!(B.base(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        assert_eq!(B.delay_with(0, 0), Duration::from_millis(250));
        assert_eq!(B.delay_with(0, 249), Duration::from_millis(499));
        assert_eq!(B.delay_with(0, 250), Duration::from_millis(250));
        assert_eq!(
            B.delay_with(6, u64::MAX),
            Duration::from_millis(15_000 + u64::MAX % 15_000)
        );
        // A zero initial delay stays zero (no division by zero).
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay_with(3, 7), Duration::ZERO);
    }
}
