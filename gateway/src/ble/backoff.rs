//! Jittered, capped exponential backoff: reconnect delays and adapter retries
//! spread out instead of hammering BlueZ (and each other) in lock step.

use rand::Rng;
use std::time::Duration;

/// Delays `min, 2·min, 4·min … max`, each drawn uniformly from the upper half
/// of its step ("equal jitter"), so a crowd of sessions that lost their link
/// at the same moment does not come back at the same moment.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `min` is raised to 1 ms and `max` to `min` if given smaller.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next delay to wait; doubles the step (up to `max`).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = step.saturating_mul(2).min(self.max);
        let hi = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(1);
        let lo = (hi / 2).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(lo..=hi))
    }

    /// Back to `min` (after a connection that lasted, or a healthy scanner).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= step / 2 && d <= step, "{d} ms for step {step}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn odd_bounds_are_sane() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_delay() <= Duration::from_millis(1));
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(5));
    }
}
