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
    /// Sessions placed on it.
    placed: AtomicUsize,
}

impl AdapterCtx {
    pub(crate) fn new(radio: Radio, hub: Arc<Hub>, slots: Arc<Slots>) -> AdapterCtx {
        AdapterCtx {
            radio,
            hub,
            slots,
            up: AtomicBool::new(true),
            placed: AtomicUsize::new(0),
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
}

impl Adapters {
    pub(crate) fn new(all: Vec<AdapterCtx>) -> Adapters {
        Adapters {
            all,
            changed: watch::channel(0).0,
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

    /// Move a session's placement from `from` to `to`.
    pub(crate) fn place(&self, from: Option<usize>, to: Option<usize>) {
        if let Some(a) = from.and_then(|i| self.all.get(i)) {
            a.placed.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(a) = to.and_then(|i| self.all.get(i)) {
            a.placed.fetch_add(1, Ordering::Relaxed);
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

    /// Where a session now on `current` should link ([`choose`]).
    pub(crate) fn choose(&self, current: Option<usize>, bonds: Option<&[bool]>) -> usize {
        let up: Vec<bool> = self.all.iter().map(AdapterCtx::up).collect();
        let load: Vec<usize> = self
            .all
            .iter()
            .map(|a| a.placed.load(Ordering::Relaxed))
            .collect();
        choose(current, &up, bonds, &load)
    }
}

async fn bonded_on(radio: &Radio, address: &str) -> bool {
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
/// that needs its bond, which adapters hold it; `load[i]`: devices placed
/// on `i` (counting this one where it is).
///
/// - Allowed: with a bond somewhere, only adapters holding it; else all.
/// - Among allowed adapters that are up: stay on `current`, else the least
///   loaded (lowest index on a tie).
/// - None up: stay on `current` (if allowed) or the first allowed: the
///   session keeps trying there, and the scanner brings its adapter back.
pub(crate) fn choose(
    current: Option<usize>,
    up: &[bool],
    bonds: Option<&[bool]>,
    load: &[usize],
) -> usize {
    let n = up.len();
    let bonded_somewhere = bonds.is_some_and(|b| b.iter().any(|x| *x));
    let allowed = |i: usize| !bonded_somewhere || bonds.is_some_and(|b| b.get(i) == Some(&true));
    let ready = |i: usize| allowed(i) && up.get(i) == Some(&true);
    if let Some(c) = current.filter(|c| ready(*c)) {
        return c;
    }
    let load_of = |i: usize| {
        let l = load.get(i).copied().unwrap_or(0);
        // Its own placement does not count against the adapter it is on.
        if Some(i) == current {
            l.saturating_sub(1)
        } else {
            l
        }
    };
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

    #[test]
    fn new_devices_spread_over_the_adapters_that_are_up() {
        assert_eq!(choose(None, &[true, true], None, &[0, 0]), 0);
        assert_eq!(choose(None, &[true, true], None, &[1, 0]), 1);
        assert_eq!(choose(None, &[true, true, true], None, &[2, 2, 1]), 2);
        assert_eq!(choose(None, &[false, true], None, &[0, 3]), 1);
    }

    #[test]
    fn a_device_stays_while_its_adapter_is_up_and_moves_when_it_is_not() {
        assert_eq!(choose(Some(0), &[true, true], None, &[5, 0]), 0);
        assert_eq!(choose(Some(0), &[false, true], None, &[5, 4]), 1);
        assert_eq!(choose(Some(1), &[true, false, true], None, &[3, 1, 2]), 2);
    }

    #[test]
    fn a_bonded_device_goes_only_where_its_bond_is() {
        let bonds = [true, false];
        assert_eq!(choose(None, &[true, true], Some(&bonds), &[9, 0]), 0);
        // Its adapter is down: it stays there rather than meet a stranger.
        assert_eq!(choose(Some(0), &[false, true], Some(&bonds), &[1, 0]), 0);
        // Bonded on both: it moves.
        assert_eq!(
            choose(Some(0), &[false, true], Some(&[true, true]), &[1, 0]),
            1
        );
        // Bonded nowhere: anywhere (connecting tells whether it needs pairing again).
        assert_eq!(
            choose(None, &[true, true], Some(&[false, false]), &[1, 0]),
            1
        );
    }

    #[test]
    fn with_nothing_up_it_keeps_its_place() {
        assert_eq!(choose(Some(1), &[false, false], None, &[0, 1]), 1);
        assert_eq!(choose(None, &[false, false], None, &[0, 0]), 0);
        assert_eq!(choose(None, &[false], None, &[]), 0);
    }
}
