//! The scanner and its stall watchdog: discovery runs for as long as the
//! gateway runs (it finds devices that come back, and gives RSSI), and a
//! scanner that silently stops reporting — the most reported BLE-gateway
//! failure — is noticed and cured.
//!
//! Escalation, each step logged at WARN with its reason:
//! 1. no discovery event (device found, RSSI, advertisement) for
//!    `scan_stall_after` while scanning, or BlueZ says it is not discovering
//!    ⇒ restart discovery (StopDiscovery + StartDiscovery);
//! 2. still silent ⇒ reset adapter power (Powered false → true), then
//!    start discovery; later resets wait longer and longer (backoff);
//! 3. starting discovery fails ⇒ retry with backoff; every third failure in
//!    a row resets adapter power.
//!
//! Silence is expected when every device BlueZ knows is connected
//! (connected devices do not advertise): that is not a stall.

use super::BleStats;
use super::adapter::{CALL_TIMEOUT, Radio};
use super::backoff::Backoff;
use super::hub::Hub;
use bluez_async::AdapterInfo;
use std::time::Duration;
use tokio::time::Instant;

/// How long after our own power reset its Powered events are ignored.
const OWN_RESET_ECHO: Duration = Duration::from_secs(2);

/// The scanner's state between supervisor ticks.
pub(crate) struct Scanner {
    stall_after: Duration,
    scanning: bool,
    /// When to try starting discovery again (while not scanning).
    next_start: Instant,
    start_failures: u32,
    retry: Backoff,
    /// Time of the last cure (restart or reset); events after it prove it worked.
    acted_at: Instant,
    /// No escalation before this.
    next_check: Instant,
    /// 0 healthy, 1 discovery restarted, ≥ 2 adapter reset.
    escalation: u32,
    reset_hold: Backoff,
    not_discovering: u32,
    /// Power events until then are the echo of our own power reset.
    own_reset_until: Option<Instant>,
}

impl Scanner {
    pub(crate) fn new(stall_after: Duration, retry_min: Duration, retry_max: Duration) -> Scanner {
        let now = Instant::now();
        let stall_after = stall_after.max(Duration::from_millis(100));
        Scanner {
            stall_after,
            scanning: false,
            next_start: now,
            start_failures: 0,
            retry: Backoff::new(retry_min, retry_max),
            acted_at: now,
            next_check: now,
            escalation: 0,
            reset_hold: Backoff::new(stall_after, stall_after.saturating_mul(16)),
            not_discovering: 0,
            own_reset_until: None,
        }
    }

    /// Is discovery believed to be running?
    pub(crate) fn scanning(&self) -> bool {
        self.scanning
    }

    /// The adapter's power changed (btleplug `StateUpdate`).
    pub(crate) fn on_powered(&mut self, radio: &Radio, on: bool) {
        if self
            .own_reset_until
            .is_some_and(|until| Instant::now() < until)
        {
            // Our own off/on: discovery was restarted right after it.
            tracing::debug!(adapter = %radio.name, powered = on, "power event of our own reset");
            return;
        }
        if on {
            if !self.scanning {
                tracing::info!(adapter = %radio.name, "adapter powered on: starting discovery");
                self.next_start = Instant::now();
            }
        } else {
            if self.scanning {
                tracing::warn!(adapter = %radio.name, "adapter powered off: discovery stopped, retrying until it is back");
            }
            self.scanning = false;
            self.next_start = Instant::now();
        }
    }

    /// One watchdog turn. `info`: the adapter's properties, if it answered.
    pub(crate) async fn step(
        &mut self,
        radio: &Radio,
        hub: &Hub,
        stats: &BleStats,
        info: Option<&AdapterInfo>,
    ) {
        let now = Instant::now();
        if !self.scanning {
            if now >= self.next_start {
                self.try_start(radio, stats).await;
            }
            return;
        }
        let last = hub.last_activity();
        if last > self.acted_at && self.escalation > 0 {
            tracing::info!(adapter = %radio.name, "discovery reports again");
            self.escalation = 0;
            self.reset_hold.reset();
        }
        if let Some(i) = info {
            if i.powered && !i.discovering {
                self.not_discovering += 1;
            } else {
                self.not_discovering = 0;
            }
            if self.not_discovering >= 2 {
                self.not_discovering = 0;
                tracing::warn!(adapter = %radio.name, "adapter is not discovering although the gateway started discovery: restarting discovery");
                self.restart(radio, stats).await;
                return;
            }
        }
        let quiet = now.saturating_duration_since(last.max(self.acted_at));
        if quiet < self.stall_after || now < self.next_check {
            return;
        }
        if all_connected(radio).await {
            // Nothing is advertising: silence is expected.
            self.acted_at = now;
            return;
        }
        self.escalation += 1;
        if self.escalation == 1 {
            tracing::warn!(adapter = %radio.name, "no discovery event for {quiet:.1?} although scanning (stalled scanner): restarting discovery");
            self.restart(radio, stats).await;
        } else {
            let hold = self.reset_hold.next_delay();
            tracing::warn!(adapter = %radio.name, "discovery still silent for {quiet:.1?} after restarting it: resetting adapter power (Powered off, on)");
            self.reset(radio, stats).await;
            self.next_check = Instant::now() + hold;
        }
    }

    async fn restart(&mut self, radio: &Radio, stats: &BleStats) {
        stats.bump(|s| &s.scan_restarts);
        radio.stop_scan().await;
        self.acted_at = Instant::now();
        self.next_check = self.acted_at;
        if let Err(e) = radio.start_scan().await {
            self.failed_start(radio, &e);
        }
    }

    async fn reset(&mut self, radio: &Radio, stats: &BleStats) {
        stats.bump(|s| &s.adapter_resets);
        radio.stop_scan().await;
        let reset = radio.power_cycle().await;
        self.acted_at = Instant::now();
        match reset {
            Ok(()) => self.own_reset_until = Some(self.acted_at + OWN_RESET_ECHO),
            Err(e) => tracing::warn!(adapter = %radio.name, "resetting adapter power: {e:#}"),
        }
        if let Err(e) = radio.start_scan().await {
            self.failed_start(radio, &e);
        }
    }

    async fn try_start(&mut self, radio: &Radio, stats: &BleStats) {
        // A stale discovery session of ours would answer "InProgress".
        radio.stop_scan().await;
        match radio.start_scan().await {
            Ok(()) => {
                if self.start_failures > 0 {
                    tracing::warn!(adapter = %radio.name, "discovery running again after {} failed attempts", self.start_failures);
                } else {
                    tracing::info!(adapter = %radio.name, "discovery started");
                }
                self.scanning = true;
                self.start_failures = 0;
                self.retry.reset();
                self.acted_at = Instant::now();
                self.next_check = self.acted_at;
            }
            Err(e) => {
                self.failed_start(radio, &e);
                if self.start_failures.is_multiple_of(3) {
                    tracing::warn!(adapter = %radio.name, "discovery failed to start {} times in a row: resetting adapter power", self.start_failures);
                    stats.bump(|s| &s.adapter_resets);
                    if let Err(e) = radio.power_cycle().await {
                        tracing::warn!(adapter = %radio.name, "resetting adapter power: {e:#}");
                    }
                }
            }
        }
    }

    fn failed_start(&mut self, radio: &Radio, e: &anyhow::Error) {
        self.scanning = false;
        self.start_failures += 1;
        let d = self.retry.next_delay();
        self.next_start = Instant::now() + d;
        tracing::warn!(adapter = %radio.name, "{e:#}; retrying in {d:.1?}");
    }
}

/// BlueZ knows at least one device and every one is connected.
async fn all_connected(radio: &Radio) -> bool {
    match tokio::time::timeout(CALL_TIMEOUT, radio.bluez.get_devices_on_adapter(&radio.id)).await {
        Ok(Ok(devices)) => !devices.is_empty() && devices.iter().all(|d| d.connected),
        _ => false,
    }
}
