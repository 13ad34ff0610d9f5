//! Liveness beats for the systemd watchdog: each loop that must stay alive
//! (BLE supervisor, publisher) beats while it really turns; the daemon sends
//! `WATCHDOG=1` only while every beat is fresh.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> i64 {
    i64::try_from(epoch().elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// The last time one loop proved it was alive.
#[derive(Debug)]
pub struct Beat(AtomicI64);

impl Beat {
    /// A beat that starts now.
    pub fn new() -> Arc<Beat> {
        Arc::new(Beat(AtomicI64::new(now_ms())))
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let ms = (now_ms() - self.0.load(Ordering::Relaxed)).max(0);
        Duration::from_millis(ms as u64)
    }
}
