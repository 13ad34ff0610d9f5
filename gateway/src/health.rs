//! Liveness for the systemd watchdog: loops that are really alive call
//! [`Beat::beat`]; whoever pings systemd checks [`Beat::age`].

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The process-wide monotonic origin the beats are measured from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Monotonic milliseconds since [`origin`].
fn now_ms() -> i64 {
    i64::try_from(origin().elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// The time of the last heartbeat of one loop.
#[derive(Debug)]
pub struct Beat {
    last_ms: AtomicI64,
}

impl Beat {
    /// A beat that has just beaten.
    pub fn new() -> Arc<Beat> {
        Arc::new(Beat {
            last_ms: AtomicI64::new(now_ms()),
        })
    }

    /// "I am alive now."
    pub fn beat(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn age(&self) -> Duration {
        let ms = now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}
