//! When a simulated device next does something: measure (every `period`,
//! after a stagger), a SpO2 spot check (oximeters only), a battery tick.
//! Pure, so the one rule that matters is tested: after handling what was
//! due, the next wake-up is in the future — a deadline left in the past
//! turns the device's loop into a busy loop (it did: every non-oximeter
//! spun on a spot check it never takes, a whole core for 20 straps).

use std::time::Duration;
use tokio::time::Instant;

/// What is due now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Due {
    /// The device's regular measurement (a heart-rate or continuous SpO2
    /// value, a cuff's or scale's reading …) is due.
    pub measure: bool,
    /// An oximeter's SpO2 spot check is due (never for other devices).
    pub spot: bool,
    /// A battery tick is due: the level drains a little (more while
    /// connected); a change of a whole percent is notified on 0x2A19.
    pub battery: bool,
}

/// A device's timetable.
#[derive(Clone, Debug)]
pub struct Schedule {
    period: Duration,
    spot_period: Option<Duration>,
    battery_period: Duration,
    next_measure: Instant,
    next_spot: Option<Instant>,
    next_battery: Instant,
}

impl Schedule {
    /// Starting `now`: the first measurement after `stagger + period`; spot
    /// checks every `spot_period` if the device takes them.
    pub fn new(
        now: Instant,
        stagger: Duration,
        period: Duration,
        spot_period: Option<Duration>,
        battery_period: Duration,
    ) -> Schedule {
        Schedule {
            period,
            spot_period,
            battery_period,
            next_measure: now + stagger + period,
            next_spot: spot_period.map(|p| now + p),
            next_battery: now + battery_period,
        }
    }

    /// The earliest deadline.
    pub fn wake_at(&self) -> Instant {
        let mut at = self.next_measure.min(self.next_battery);
        if let Some(spot) = self.next_spot {
            at = at.min(spot);
        }
        at
    }

    /// What is due at `now`; each due deadline moves past `now` (a
    /// measurement keeps its rhythm unless it fell a whole period behind).
    pub fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if now >= self.next_measure {
            due.measure = true;
            self.next_measure += self.period;
            if self.next_measure <= now {
                self.next_measure = now + self.period;
            }
        }
        if let (Some(next), Some(p)) = (self.next_spot, self.spot_period)
            && now >= next
        {
            due.spot = true;
            self.next_spot = Some(now + p);
        }
        if now >= self.next_battery {
            due.battery = true;
            self.next_battery = now + self.battery_period;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn after_handling_what_is_due_the_next_wake_up_is_in_the_future() {
        let t0 = Instant::now();
        for spot in [None, Some(60 * MS)] {
            let mut s = Schedule::new(t0, 3 * MS, 10 * MS, spot, 30 * MS);
            let mut now = t0;
            for step in 0..500u32 {
                // Wake at the deadline, or late (a busy runtime), or early (a notify).
                now = s.wake_at() + MS * (step % 7);
                s.due(now);
                assert!(
                    s.wake_at() > now,
                    "spot {spot:?}, step {step}: stuck in the past"
                );
            }
            assert!(now > t0 + 100 * MS);
        }
    }

    #[test]
    fn measurements_keep_their_rhythm_and_only_oximeters_take_spot_checks() {
        let t0 = Instant::now();
        let mut strap = Schedule::new(t0, Duration::ZERO, 10 * MS, None, 1000 * MS);
        let mut measured = 0;
        for i in 1..=100u32 {
            let d = strap.due(t0 + 10 * MS * i + MS);
            assert!(!d.spot);
            measured += u32::from(d.measure);
        }
        assert_eq!(measured, 100);
        let mut oximeter = Schedule::new(t0, Duration::ZERO, 10 * MS, Some(50 * MS), 1000 * MS);
        let spots = (1..=100u32)
            .filter(|i| oximeter.due(t0 + 10 * MS * *i).spot)
            .count();
        assert_eq!(spots, 20);
    }
}
