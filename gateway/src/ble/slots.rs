//! Connection slots: how many links the adapter holds at once
//! (`ble.max_connections`; a controller keeps only a few LE links).
//!
//! A device that streams (heart rate, continuous SpO2) keeps its slot while
//! connected. A device that only hands over measurements (cuff, scale,
//! thermometer, glucose meter, spot-check oximeter) takes a slot when it is
//! heard advertising and gives it back once its link idles. Devices that find
//! every slot held wait in one queue, served in the order they started
//! waiting — except that a streaming device never takes the last free slot
//! while devices of the other kind are paired (and there is more than one
//! slot): streaming devices hold their links for hours, and would otherwise
//! starve every hand-over. A streaming device that finds no slot for it keeps
//! waiting (and is counted in the `waiting` gauge) until one frees.

use super::BleStats;
use hailan_proto::gatt::DeviceKind;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Whether devices of `kind` stream (hold their link) rather than hand over
/// stored measurements. A pulse oximeter streams unless it turns out to have
/// no continuous measurement (a spot-check oximeter: see the session).
pub(crate) fn streams(kind: DeviceKind) -> bool {
    matches!(
        kind,
        DeviceKind::HeartRateMonitor | DeviceKind::PulseOximeter
    )
}

/// The slots of one adapter.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
    changed: Notify,
    stats: Arc<BleStats>,
}

#[derive(Debug)]
struct State {
    max: usize,
    /// Keep one slot for hand-overs (devices of both kinds are paired).
    keep_one: bool,
    held: usize,
    held_streaming: usize,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    ticket: u64,
    streaming: bool,
}

impl State {
    /// How many links streaming devices may hold.
    fn streaming_cap(&self) -> usize {
        if self.keep_one && self.max > 1 {
            self.max - 1
        } else {
            self.max
        }
    }

    fn fits(&self, streaming: bool) -> bool {
        self.held < self.max && (!streaming || self.held_streaming < self.streaming_cap())
    }

    /// `ticket` is the longest-waiting device that a free slot fits.
    fn is_turn_of(&self, ticket: u64) -> bool {
        self.queue
            .iter()
            .find(|w| self.fits(w.streaming))
            .is_some_and(|w| w.ticket == ticket)
    }
}

/// A held slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    streaming: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.held -= 1;
        if self.streaming {
            s.held_streaming -= 1;
        }
        self.slots.publish(&s);
        drop(s);
        self.slots.changed.notify_waiters();
    }
}

/// A place in the queue; leaving it (a cancelled wait) lets the next one on.
struct Queued<'a> {
    slots: &'a Arc<Slots>,
    ticket: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.queue.retain(|w| w.ticket != self.ticket);
        self.slots.publish(&s);
        drop(s);
        self.slots.changed.notify_waiters();
    }
}

impl Slots {
    pub(crate) fn new(max: usize, stats: Arc<BleStats>) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                max: max.max(1),
                keep_one: false,
                held: 0,
                held_streaming: 0,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
            stats,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, s: &State) {
        self.stats
            .slots_held
            .store(s.held as u64, Ordering::Relaxed);
        self.stats
            .slots_waiting
            .store(s.queue.len() as u64, Ordering::Relaxed);
    }

    /// Whether one slot is kept for hand-overs (the supervisor sets it from
    /// the paired devices: true when both kinds are paired).
    pub(crate) fn keep_one_for_handovers(&self, keep: bool) {
        let mut s = self.lock();
        if s.keep_one != keep {
            s.keep_one = keep;
            drop(s);
            self.changed.notify_waiters();
        }
    }

    /// How many links streaming devices may hold now.
    pub(crate) fn streaming_cap(&self) -> usize {
        self.lock().streaming_cap()
    }

    /// Wait for a slot (cancel-safe: dropping the future leaves the queue).
    pub(crate) async fn take(self: &Arc<Self>, streaming: bool) -> Slot {
        let ticket = {
            let mut s = self.lock();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.queue.push_back(Waiter { ticket, streaming });
            self.publish(&s);
            ticket
        };
        let queued = Queued {
            slots: self,
            ticket,
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.is_turn_of(ticket) {
                    s.held += 1;
                    if streaming {
                        s.held_streaming += 1;
                    }
                    // Leave the queue under the same lock: `queued` must not
                    // run its Drop (which would wake the others for nothing).
                    s.queue.retain(|w| w.ticket != ticket);
                    self.publish(&s);
                    std::mem::forget(queued);
                    drop(s);
                    // The next in line may fit too (another free slot).
                    self.changed.notify_waiters();
                    return Slot {
                        slots: self.clone(),
                        streaming,
                    };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const SHORT: Duration = Duration::from_millis(50);

    fn slots(max: usize) -> Arc<Slots> {
        Slots::new(max, Arc::default())
    }

    #[tokio::test]
    async fn never_more_links_than_slots_and_first_come_first_served() {
        let s = slots(2);
        let a = s.take(false).await;
        let _b = s.take(false).await;
        assert_eq!(s.stats.slots_held(), 2);
        // c starts waiting first, then d.
        let mut c = Box::pin(s.take(false));
        assert!(timeout(SHORT, &mut c).await.is_err(), "no slot free");
        let mut d = Box::pin(s.take(false));
        assert!(timeout(SHORT, &mut d).await.is_err(), "no slot free");
        assert_eq!(s.stats.slots_waiting(), 2);
        drop(a);
        // d is asked first, but c waited longer: the slot is c's.
        assert!(timeout(SHORT, &mut d).await.is_err(), "d jumped the queue");
        let c = timeout(Duration::from_secs(5), &mut c)
            .await
            .expect("c gets the slot a gave back");
        assert_eq!(s.stats.slots_held(), 2);
        assert_eq!(s.stats.slots_waiting(), 1);
        drop(c);
        let _d = timeout(Duration::from_secs(5), &mut d)
            .await
            .expect("d gets the slot c gave back");
        assert_eq!(s.stats.slots_waiting(), 0);
    }

    #[tokio::test]
    async fn streaming_devices_leave_one_slot_for_handovers() {
        let s = slots(2);
        s.keep_one_for_handovers(true);
        let _hr0 = s.take(true).await;
        // A second strap waits although a slot is free …
        let mut hr1 = Box::pin(s.take(true));
        assert!(timeout(SHORT, &mut hr1).await.is_err());
        // … which a cuff that came later gets at once.
        let cuff = timeout(SHORT, s.take(false)).await.expect("the kept slot");
        assert_eq!(s.stats.slots_held(), 2);
        drop(cuff);
        assert!(timeout(SHORT, &mut hr1).await.is_err(), "still kept");
        // Nothing left to hand over: the strap may take it.
        s.keep_one_for_handovers(false);
        timeout(Duration::from_secs(5), &mut hr1)
            .await
            .expect("the slot is no longer kept");
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let s = slots(1);
        let a = s.take(false).await;
        let mut gone = Box::pin(s.take(false));
        assert!(timeout(SHORT, &mut gone).await.is_err());
        assert_eq!(s.stats.slots_waiting(), 1);
        drop(gone);
        assert_eq!(s.stats.slots_waiting(), 0);
        let mut next = Box::pin(s.take(false));
        drop(a);
        timeout(Duration::from_secs(5), &mut next)
            .await
            .expect("the next in line, not the one that left");
    }
}
