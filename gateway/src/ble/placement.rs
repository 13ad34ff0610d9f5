//! Where a device's link goes when the gateway has several adapters
//! (`ble.adapters`): devices spread over the adapters that are up, stay
//! where they are while that adapter is up, and move when it powers off or
//! stops answering.
//!
//! A bond belongs to one adapter: BlueZ keeps link keys per adapter, so a
//! cuff bonded through `hci0` is a stranger to `hci1` (and, asked to encrypt
//! there, would look like a lost bond). A device that needs its bond is
//! therefore placed only on adapters where BlueZ holds its bond — pairing it
//! through a second adapter (`hailan-gateway pair --adapter hci1`) is what
//! lets it move. A device with no bond anywhere goes anywhere: connecting
//! shows whether it must be paired again.

use super::adapter::{CALL_TIMEOUT, Radio};
use super::hub::Hub;
use super::slots::Slots;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::watch;

/// One adapter as the sessions see it.
#[derive(Debug)]
pub(crate) struct AdapterCtx {
    /// The adapter.
    pub(crate) radio: Radio,
    /// Its BlueZ events.
    pub(crate) hub: Arc<Hub>,
    /// Its links.
    pub(crate) slots: Arc<Slots>,
    /// Powered and answering (the supervisor keeps it current).
    up: AtomicBool,
    /// Sessions placed on it: [hand-over, streaming].
    placed: [AtomicUsize; 2],
}

impl AdapterCtx {
    pub(crate) fn new(radio: Radio, hub: Arc<Hub>, slots: Arc<Slots>) -> AdapterCtx {
        AdapterCtx {
            radio,
            hub,
            slots,
            up: AtomicBool::new(true),
            placed: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    pub(crate) fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record whether it is up; true if that changed.
    pub(crate) fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }
}

/// The adapters and a signal that one of them went up or down.
#[derive(Debug)]
pub(crate) struct Adapters {
    pub(crate) all: Vec<AdapterCtx>,
    changed: watch::Sender<u64>,
    /// Choosing and counting happen as one step (sessions starting together
    /// must not all read the same loads).
    placing: std::sync::Mutex<()>,
    /// An adapter named in the settings was missing at start: a bond may
    /// be on it.
    pub(crate) some_missing: bool,
}

impl Adapters {
    pub(crate) fn new(all: Vec<AdapterCtx>, some_missing: bool) -> Adapters {
        Adapters {
            all,
            some_missing,
            changed: watch::channel(0).0,
            placing: std::sync::Mutex::new(()),
        }
    }

    /// Adapter `i` is up or not; wakes waiting sessions when that changed.
    pub(crate) fn set_up(&self, i: usize, up: bool) {
        if let Some(a) = self.all.get(i)
            && a.set_up(up)
        {
            if self.all.len() > 1 {
                let what = if up {
                    "up"
                } else {
                    "down: its devices move to the others"
                };
                tracing::info!(adapter = %a.radio.name, up, "adapter {what}");
            }
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees the next up/down change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Place a session now on `current` ([`choose`]) and count it there;
    /// `streaming`: it holds its link (counted apart, so streams spread).
    pub(crate) fn place(
        &self,
        current: Option<usize>,
        bonds: Option<&[bool]>,
        streaming: bool,
    ) -> usize {
        let _one_at_a_time = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let up: Vec<bool> = self.all.iter().map(AdapterCtx::up).collect();
        let kind = usize::from(streaming);
        let load: Vec<(usize, usize)> = self
            .all
            .iter()
            .map(|a| {
                let same = a.placed[kind].load(Ordering::Relaxed);
                let other = a.placed[1 - kind].load(Ordering::Relaxed);
                (same, same + other)
            })
            .collect();
        let to = choose(current, &up, bonds, &load);
        if Some(to) != current {
            self.unplace(current, streaming);
            if let Some(a) = self.all.get(to) {
                a.placed[kind].fetch_add(1, Ordering::Relaxed);
            }
        }
        to
    }

    /// A session on `at` ends (or moves).
    pub(crate) fn unplace(&self, at: Option<usize>, streaming: bool) {
        if let Some(a) = at.and_then(|i| self.all.get(i)) {
            a.placed[usize::from(streaming)].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Which adapters hold a bond of `address` (BlueZ `Paired` on each),
    /// as far as they say: `None` for an adapter that is down and could not
    /// tell (an unplugged adapter's bonds are still on disk).
    pub(crate) async fn bonds(&self, address: &str) -> Vec<Option<bool>> {
        let mut out = Vec::with_capacity(self.all.len());
        for a in &self.all {
            let paired = bonded_on(&a.radio, address).await;
            out.push(if paired || a.up() { Some(paired) } else { None });
        }
        out
    }
}

/// Does BlueZ hold a bond of `address` through this adapter (`Paired`)?
pub(crate) async fn bonded_on(radio: &Radio, address: &str) -> bool {
    let Ok(id) = radio.device_id(address) else {
        return false;
    };
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, radio.bluez.get_device_info(&id)).await,
        Ok(Ok(info)) if info.paired
    )
}

/// The adapter for a device now on `current` (`None`: not placed yet).
/// `up[i]`: adapter `i` is powered and answering; `bonds`: for a device
/// that needs its bond, which adapters hold it; `load[i]`: (devices of its
/// sort — streaming or handing over — placed on `i`, all devices placed on
/// `i`).
///
/// - Allowed: with a bond somewhere, only adapters holding it; else all.
/// - Among allowed adapters that are up: stay on `current`, else the least
///   loaded (fewest of its sort, then fewest in all, then lowest index).
/// - None up: stay on `current` (if allowed) or the first allowed: the
///   session keeps trying there, and the scanner brings its adapter back.
pub(crate) fn choose(
    current: Option<usize>,
    up: &[bool],
    bonds: Option<&[bool]>,
    load: &[(usize, usize)],
) -> usize {
    let n = up.len();
    let bonded_somewhere = bonds.is_some_and(|b| b.iter().any(|x| *x));
    let allowed = |i: usize| !bonded_somewhere || bonds.is_some_and(|b| b.get(i) == Some(&true));
    let ready = |i: usize| allowed(i) && up.get(i) == Some(&true);
    if let Some(c) = current.filter(|c| ready(*c)) {
        return c;
    }
    let load_of = |i: usize| load.get(i).copied().unwrap_or((0, 0));
    if let Some(best) = (0..n)
        .filter(|i| ready(*i))
        .min_by_key(|i| (load_of(*i), *i))
    {
        return best;
    }
    current
        .filter(|c| allowed(*c) && *c < n)
        .or_else(|| (0..n).find(|i| allowed(*i)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::choose;

    /// Loads where every device is of the same sort.
    fn n(loads: &[usize]) -> Vec<(usize, usize)> {
        loads.iter().map(|l| (*l, *l)).collect()
    }

    #[test]
    fn new_devices_spread_over_the_adapters_that_are_up() {
        assert_eq!(choose(None, &[true, true], None, &n(&[0, 0])), 0);
        assert_eq!(choose(None, &[true, true], None, &n(&[1, 0])), 1);
        assert_eq!(choose(None, &[true, true, true], None, &n(&[2, 2, 1])), 2);
        assert_eq!(choose(None, &[false, true], None, &n(&[0, 3])), 1);
    }

    #[test]
    fn streams_spread_apart_from_hand_overs() {
        // Two straps on hci0, three cuffs on hci1: a third strap goes to
        // hci1, where no link is held for hours yet.
        assert_eq!(choose(None, &[true, true], None, &[(2, 2), (0, 3)]), 1);
        // Same count of its sort: the adapter with fewer in all.
        assert_eq!(choose(None, &[true, true], None, &[(1, 4), (1, 2)]), 1);
    }

    #[test]
    fn a_device_stays_while_its_adapter_is_up_and_moves_when_it_is_not() {
        assert_eq!(choose(Some(0), &[true, true], None, &n(&[5, 0])), 0);
        assert_eq!(choose(Some(0), &[false, true], None, &n(&[5, 4])), 1);
        assert_eq!(
            choose(Some(1), &[true, false, true], None, &n(&[3, 1, 2])),
            2
        );
    }

    #[test]
    fn a_bonded_device_goes_only_where_its_bond_is() {
        let bonds = [true, false];
        assert_eq!(choose(None, &[true, true], Some(&bonds), &n(&[9, 0])), 0);
        // Its adapter is down: it stays there rather than meet a stranger.
        assert_eq!(
            choose(Some(0), &[false, true], Some(&bonds), &n(&[1, 0])),
            0
        );
        // Bonded on both: it moves.
        assert_eq!(
            choose(Some(0), &[false, true], Some(&[true, true]), &n(&[1, 0])),
            1
        );
        // Bonded nowhere: anywhere (connecting tells whether it needs pairing again).
        assert_eq!(
            choose(None, &[true, true], Some(&[false, false]), &n(&[1, 0])),
            1
        );
    }

    #[test]
    fn with_nothing_up_it_keeps_its_place() {
        assert_eq!(choose(Some(1), &[false, false], None, &n(&[0, 1])), 1);
        assert_eq!(choose(None, &[false, false], None, &n(&[0, 0])), 0);
        assert_eq!(choose(None, &[false], None, &[]), 0);
    }
}
