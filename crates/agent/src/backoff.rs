//! The one exponential backoff with jitter: MQTT/IoT Hub reconnects, IoT Hub twin requests,
//! stream collector restarts and the pipeline's delivery retries wait [`Backoff::delay`] (or
//! [`Backoff::delay_with`] with their own random source) after their `attempt`-th failure in a
//! row.
//! The jitter keeps a fleet that lost its broker (or its audit daemon) at the same moment from
//! coming back in lockstep.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter).
    pub initial: Duration,
    /// The delay never grows past this (before jitter).
    pub max: Duration,
    /// How the delay is spread around its base.
    pub jitter: Jitter,
}

/// How a delay is spread around its base delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// A random point in `[base / 2, base]`: never later than the base (reconnects, restarts).
    UpperHalf,
    /// The base plus up to a quarter of it, `[base, base * 5 / 4]` at millisecond steps: never
    /// sooner than the base (the pipeline's delivery retries).
    UpToAQuarterMore,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): `initial * 2^attempt` capped at `max`,
    /// then a random point in its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_u64())
    }

    /// [`Backoff::delay`] with the random number given (pure, for tests and for callers with
    /// their own seeded source), spread by [`Backoff::jitter`] around the base delay
    /// [`Backoff::base`] of `attempt`.
    pub(crate) fn delay_with(&self, attempt: u32, random: u64) -> Duration {
        let base = self.base(attempt);
        match self.jitter {
            Jitter::UpperHalf => {
                let half = base / 2;
                let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
                half + Duration::from_millis(random % jitter_ms)
            }
            Jitter::UpToAQuarterMore => {
                let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
                base + Duration::from_millis(random % (base_ms / 4 + 1))
            }
        }
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
        jitter: Jitter::UpperHalf,
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
            jitter: Jitter::UpperHalf,
        };
        assert_eq!(zero.delay_with(3, 7), Duration::ZERO);
        let zero = Backoff {
            jitter: Jitter::UpToAQuarterMore,
            ..zero
        };
        assert_eq!(zero.delay_with(3, 7), Duration::ZERO);
    }

    #[test]
    fn a_quarter_more_never_comes_sooner_than_the_base() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::UpToAQuarterMore,
        };
        assert_eq!(b.delay_with(0, 0), Duration::from_secs(1));
        assert_eq!(b.delay_with(0, 250), Duration::from_millis(1250));
        assert_eq!(b.delay_with(0, 251), Duration::from_secs(1));
        assert_eq!(b.delay_with(1, 499), Duration::from_millis(2499));
        assert_eq!(b.delay_with(30, 0), Duration::from_secs(60));
    }
}
