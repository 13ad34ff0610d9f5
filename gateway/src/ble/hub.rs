//! One btleplug event stream for the whole run, fanned out on a broadcast
//! channel: the watchdog learns when discovery last reported anything,
//! sessions learn about discoveries and disconnections of their device.
//!
//! One long-lived stream rather than one per task also keeps the D-Bus match
//! rules steady (bluez-async removes a rule in a spawned task when a stream
//! is dropped, which is racy — see the session's notes).

use btleplug::api::CentralEvent;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Broadcast capacity; a receiver that lags re-checks its device's state.
const CAPACITY: usize = 1024;

/// The fan-out point.
#[derive(Debug)]
pub(crate) struct Hub {
    tx: broadcast::Sender<CentralEvent>,
    last_activity: Mutex<Instant>,
    alive: AtomicBool,
}

/// Events that prove discovery is reporting.
fn is_discovery_activity(ev: &CentralEvent) -> bool {
    matches!(
        ev,
        CentralEvent::DeviceDiscovered(_)
            | CentralEvent::DeviceUpdated(_)
            | CentralEvent::RssiUpdate { .. }
            | CentralEvent::ManufacturerDataAdvertisement { .. }
            | CentralEvent::ServiceDataAdvertisement { .. }
            | CentralEvent::ServicesAdvertisement { .. }
    )
}

impl Hub {
    pub(crate) fn new() -> Hub {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            last_activity: Mutex::new(Instant::now()),
            alive: AtomicBool::new(true),
        }
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CentralEvent> {
        self.tx.subscribe()
    }

    /// When discovery last reported a device or an RSSI.
    pub(crate) fn last_activity(&self) -> Instant {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is the BlueZ event stream still flowing?
    pub(crate) fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Forward `stream` until it ends or `cancel`.
    pub(crate) async fn pump(
        &self,
        mut stream: Pin<Box<dyn Stream<Item = CentralEvent> + Send>>,
        cancel: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else {
                tracing::error!(
                    "BlueZ event stream ended: no more discoveries or disconnections will be seen"
                );
                self.alive.store(false, Ordering::Relaxed);
                return;
            };
            if is_discovery_activity(&ev) {
                *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            // No receivers is fine.
            let _ = self.tx.send(ev);
        }
    }
}
