//! Opening stored readings: decrypt each sealed value with the owner's data
//! key, then recompute the commitment from the opened value, blinding and the
//! reading's own header, and compare it with the stored commitment *and* with
//! the commitment and context among the stored proof's public inputs — so a
//! number is shown only when it is exactly the value the verified proof
//! covers. A window's readings share one commitment: it is recomputed once
//! per window, from all of its readings.
//!
//! Pure and CPU-bound: [`check_parallel`] spreads the groups over the
//! blocking pool.

use super::keyring::KeyRing;
use super::opened_cache::{self, OpenedCache, OpenedWindow};
use chrono::{DateTime, Utc};
use hailan_proto::seal::{SealedValue, open_parts};
use hailan_proto::zk::fr_from_bytes;
use hailan_proto::zk::prove::{reading_commitment, window_commitment};
use hailan_proto::{DataType, ReadingHeader, WindowHeader};
use std::sync::Arc;
use uuid::Uuid;

/// One `health_data` row as the API reads it ([`crate::store::READING_SELECT`]), completed
/// with its device and its proof's statement and public inputs (read
/// separately, shared by all the readings they cover). The columns most rows
/// share with their neighbours (data type, gateway, proof hash, key id) are
/// shared strings: a day is 86,400 rows, and allocating, hashing and freeing
/// each one's copies was a fifth of reading it.
#[derive(Debug, Clone)]
pub struct StoredReading {
    /// Row id (`health_data.id`).
    pub id: Uuid,
    /// The device's row id (`health_data.device_id` → `iot_devices.id`); `None`
    /// once the device row was deleted.
    pub device_id: Option<Uuid>,
    /// Data type name (`health_data.data_type`), e.g. `HEART_RATE`.
    pub data_type: Arc<str>,
    /// When the device took the reading (`health_data.recorded_at`), part of the header.
    pub recorded_at: DateTime<Utc>,
    /// The device's sequence number of the reading (`health_data.seq`), part of the header.
    pub seq: i64,
    /// The gateway that sent it (`health_data.gateway_id`), part of the header.
    pub gateway_id: Arc<str>,
    /// Whether ingest verified its proof (`health_data.verified`); an unverified
    /// reading's value is never shown.
    pub verified: bool,
    /// Hex SHA-256 of the proof covering it (`health_data.zk_proof_hash`), shared
    /// by a window's readings.
    pub zk_proof_hash: Option<Arc<str>>,
    /// `None` also for a stored value that is not 32 bytes (the column's
    /// check forbids it): it matches no recomputed commitment either way.
    pub reading_commitment: Option<[u8; 32]>,
    /// CIDv1 (raw, sha2-256) of the sealed value's ciphertext (`hailan_proto::cid`).
    pub ipfs_data_cid: Option<String>,
    /// Id of the data key that sealed the value (the stored value's `kid`).
    pub kid: Option<Arc<str>>,
    /// The stored nonce and ciphertext, hex-decoded as the row is read, or
    /// why they could not be.
    pub sealed: Result<SealedBytes, &'static str>,
    /// The device's own id and name, filled in from `iot_devices` after the read.
    pub device: Option<Arc<DeviceInfo>>,
    /// The covering proof's statement, seq range, key id and public inputs C and
    /// x, filled in from `zk_proofs` after the read.
    pub proof: Option<Arc<ProofInfo>>,
}

pub use hailan_proto::stored::SealedBytes;

/// A reading's device: its own id (`iot_devices.device_id`, part of the
/// header) and name.
#[derive(Debug)]
pub struct DeviceInfo {
    /// The device's own id as its gateway registered it (`iot_devices.device_id`).
    pub ext: String,
    /// Its name (`iot_devices.device_name`), if it has one.
    pub name: Option<String>,
}

/// The stored proof covering a reading (`zk_proofs`).
#[derive(Debug)]
pub struct ProofInfo {
    /// `reading` or `window`.
    pub statement: String,
    /// Seq of the first reading the proof covers (`zk_proofs.first_seq`).
    pub first_seq: i64,
    /// How many readings it covers (`zk_proofs.reading_count`): 1 for a reading
    /// proof, up to 16 for a window.
    pub reading_count: i32,
    /// Hex id of the verifying key (`zk_proofs.key_id`).
    pub key_id: String,
    /// Public input 1 (0-based), the reading commitment C, in decimal;
    /// `None` if the stored inputs are too few.
    pub c: Option<String>,
    /// Public input 2 (0-based), the context x — the hash of the reading's or
    /// window's header — in decimal; `None` if the stored inputs are too few.
    pub x: Option<String>,
}

impl StoredReading {
    /// The device's own id (part of the reading's header).
    pub fn device_ext(&self) -> Option<&str> {
        self.device.as_deref().map(|d| d.ext.as_str())
    }

    /// `reading` or `window`, from the stored proof.
    pub fn statement(&self) -> Option<&str> {
        self.proof.as_deref().map(|p| p.statement.as_str())
    }

    fn is_window(&self) -> bool {
        self.verified && self.statement() == Some("window")
    }
}

/// What the API may say about a reading's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Opened, and the commitment re-opened: these fixed-point slots are the proven ones.
    Verified(Vec<u32>),
    /// Never shown as a number, with the reason.
    Unverifiable(String),
}

impl Check {
    /// The proven fixed-point slots of a verified reading; `None` when unverifiable.
    pub fn slots(&self) -> Option<&[u32]> {
        match self {
            Check::Verified(s) => Some(s),
            Check::Unverifiable(_) => None,
        }
    }
}

/// Maps keyed by proof hashes and ids (foldhash: SipHash over 64-character
/// proof hashes was a twentieth of a day view).
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The groups of rows that are checked together: a window's readings (by
/// proof hash), or one reading.
pub fn groups(rows: &[StoredReading]) -> Vec<Vec<usize>> {
    let mut windows: Map<(Option<Uuid>, &str), usize> = Map::default();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match (r.is_window(), r.zk_proof_hash.as_deref()) {
            (true, Some(hash)) => {
                let g = *windows.entry((r.device_id, hash)).or_insert_with(|| {
                    out.push(Vec::new());
                    out.len() - 1
                });
                out[g].push(i);
            }
            _ => out.push(vec![i]),
        }
    }
    out
}

/// A window cut by a time range or a page: where its other readings are
/// (its device's seqs `first_seq..=last_seq` under its proof).
#[derive(Debug, Clone)]
pub struct CutWindow {
    /// The device's row id (`iot_devices.id`).
    pub device: Uuid,
    /// The window's data type.
    pub data_type: Arc<str>,
    /// Seq of the window's first reading.
    pub first_seq: i64,
    /// Seq of its last reading (`first_seq + reading_count - 1`).
    pub last_seq: i64,
    /// Hex SHA-256 of the window's proof, which all its readings name.
    pub proof_hash: Arc<str>,
}

/// Windows among `rows` (grouped as [`groups`] gives them) with fewer
/// readings present than their proof covers.
pub fn incomplete_windows(rows: &[StoredReading], groups: &[Vec<usize>]) -> Vec<CutWindow> {
    groups
        .iter()
        .filter_map(|g| {
            let w = CutWindow::of(&rows[g[0]])?;
            let want = usize::try_from(w.last_seq - w.first_seq + 1).ok()?;
            (g.len() < want).then_some(w)
        })
        .collect()
}

impl CutWindow {
    /// The window `r` belongs to, from its proof's public inputs; `None`
    /// for a reading proven alone, unproven, or whose proof is not read.
    pub fn of(r: &StoredReading) -> Option<CutWindow> {
        let proof = r.proof.as_ref()?;
        if !r.is_window() {
            return None;
        }
        Some(CutWindow {
            device: r.device_id?,
            data_type: Arc::clone(&r.data_type),
            first_seq: proof.first_seq,
            last_seq: proof.first_seq + i64::from(proof.reading_count) - 1,
            proof_hash: Arc::clone(r.zk_proof_hash.as_ref()?),
        })
    }
}

/// Decrypt one stored reading (no commitment check).
pub fn open_row(r: &StoredReading, keys: &KeyRing) -> Result<SealedValue, String> {
    let (Some(kid), Ok(sealed)) = (r.kid.as_deref(), &r.sealed) else {
        return Err(match &r.sealed {
            Err(why) => (*why).to_owned(),
            Ok(_) => "the stored value is not a sealed value".into(),
        });
    };
    let key = keys
        .get(kid)
        .ok_or_else(|| format!("no data key {kid:?} in the API's key ring"))?;
    let device = r.device_ext().ok_or("the reading's device is unknown")?;
    let seq = u64::try_from(r.seq).map_err(|_| "negative seq")?;
    let header = ReadingHeader {
        gateway_id: &r.gateway_id,
        device_id: device,
        data_type: &r.data_type,
        seq,
        recorded_at_ms: r.recorded_at.timestamp_millis(),
    };
    open_parts(key, &header, kid, &sealed.nonce, &sealed.ciphertext)
        .map_err(|e| format!("ciphertext does not decrypt: {e}"))
}

fn decimal_of(c: &[u8; 32]) -> Option<String> {
    fr_from_bytes(c).map(|x| x.to_string())
}

/// Compare a recomputed commitment `c` (and its decimal `c_dec`) and context
/// `x` with what is stored.
fn matches_stored(r: &StoredReading, c: &[u8; 32], c_dec: &str, x: &str) -> Result<(), String> {
    if r.reading_commitment.as_ref() != Some(c) {
        return Err(
            "commitment does not open: the opened value does not match the stored commitment"
                .into(),
        );
    }
    let proof = r.proof.as_deref();
    if proof.and_then(|p| p.c.as_deref()) != Some(c_dec) {
        return Err("commitment does not open: the proof covers another commitment".into());
    }
    if proof.and_then(|p| p.x.as_deref()) != Some(x) {
        return Err("the proof was made for another reading header".into());
    }
    Ok(())
}

/// A stored reading decrypted, or why it was not.
pub type Opened = Result<SealedValue, String>;

/// Decrypt every row (independent of proofs: can run while rows arrive).
pub fn open_all(rows: &[StoredReading], keys: &KeyRing) -> Vec<Opened> {
    rows.iter().map(|r| open_row(r, keys)).collect()
}

fn check_single(r: &StoredReading, opened: &Opened) -> Check {
    if !r.verified {
        return Check::Unverifiable("not verified at ingest (no valid proof)".into());
    }
    let Some(data_type) = DataType::from_name(&r.data_type) else {
        return Check::Unverifiable(format!("unknown data type {}", r.data_type));
    };
    let result = (|| {
        let v = opened.as_ref().map_err(Clone::clone)?;
        let device = r.device_ext().ok_or("the reading's device is unknown")?;
        let header = ReadingHeader {
            gateway_id: &r.gateway_id,
            device_id: device,
            data_type: &r.data_type,
            seq: u64::try_from(r.seq).map_err(|_| "negative seq")?,
            recorded_at_ms: r.recorded_at.timestamp_millis(),
        };
        let c = reading_commitment(data_type, &v.slots, &v.blinding, &header)
            .map_err(|e| format!("commitment does not open: {e}"))?;
        let c_dec = decimal_of(&c).ok_or("commitment does not open: not a field element")?;
        matches_stored(r, &c, &c_dec, &header.context().to_string())?;
        Ok::<_, String>(v.slots.clone())
    })();
    match result {
        Ok(slots) => Check::Verified(slots),
        Err(reason) => Check::Unverifiable(reason),
    }
}

fn check_window(
    rows: &[StoredReading],
    members: &[usize],
    opened: &[Opened],
    pre: &PrecomputedWindows,
) -> Vec<(usize, Check)> {
    let mut members = members.to_vec();
    members.sort_by_key(|i| rows[*i].seq);
    let first = &rows[members[0]];
    let fail_all = |reason: String| -> Vec<(usize, Check)> {
        members
            .iter()
            .map(|i| (*i, Check::Unverifiable(reason.clone())))
            .collect()
    };
    let want = first
        .proof
        .as_ref()
        .and_then(|p| usize::try_from(p.reading_count).ok());
    let first_seq = first.proof.as_ref().map(|p| p.first_seq);
    let contiguous = members
        .iter()
        .enumerate()
        .all(|(k, i)| first_seq.map(|f| f + k as i64) == Some(rows[*i].seq));
    if want != Some(members.len()) || !contiguous {
        return fail_all(format!(
            "window incomplete: {} of {} readings are readable",
            members.len(),
            want.unwrap_or(0)
        ));
    }
    // Open every reading; one that fails takes the window's check with it.
    if members.iter().any(|i| opened[*i].is_err()) {
        return members
            .iter()
            .map(|i| {
                let reason = match &opened[*i] {
                    Err(e) => e.clone(),
                    Ok(_) => "another reading of its window does not decrypt, so the window's \
                              commitment cannot be opened"
                        .into(),
                };
                (*i, Check::Unverifiable(reason))
            })
            .collect();
    }
    let calc = match pre
        .get(&(
            first.device_id,
            first.zk_proof_hash.clone().unwrap_or_else(|| Arc::from("")),
        ))
        .filter(|w| !w.split && w.ids.iter().eq(members.iter().map(|i| &rows[*i].id)))
    {
        Some(w) => w.result.clone(),
        None => window_calc(rows, &members, opened),
    };
    let (c, c_dec, x, values) = match calc {
        Ok(calc) => calc,
        Err(e) => return fail_all(e),
    };
    members
        .iter()
        .zip(values)
        .map(|(i, v)| {
            let check = match matches_stored(&rows[*i], &c, &c_dec, &x) {
                Ok(()) => Check::Verified(vec![v]),
                Err(e) => Check::Unverifiable(e),
            };
            (*i, check)
        })
        .collect()
}

/// A window's recomputed commitment (bytes, decimal), context x (decimal) and values.
pub type Calc = ([u8; 32], String, String, Vec<u32>);

/// Recompute a window's commitment from its opened readings (`members` in
/// seq order, all opened): needs no proof data, so it can run while rows
/// still arrive.
fn window_calc(
    rows: &[StoredReading],
    members: &[usize],
    opened: &[Opened],
) -> Result<Calc, String> {
    let first = &rows[members[0]];
    let opened: Vec<&SealedValue> = members
        .iter()
        .filter_map(|i| opened[*i].as_ref().ok())
        .collect();
    if opened.len() != members.len() {
        return Err("a reading of the window does not decrypt".into());
    }
    let blinding = opened[0].blinding;
    let mut values = Vec::with_capacity(opened.len());
    for (k, v) in opened.iter().enumerate() {
        if v.blinding != blinding || usize::from(v.position) != k || v.slots.len() != 1 {
            return Err("the window's sealed values disagree (blinding, position or slots)".into());
        }
        values.push(v.slots[0]);
    }
    let start_ms = first.recorded_at.timestamp_millis();
    let offsets: Option<Vec<u32>> = members
        .iter()
        .map(|i| u32::try_from(rows[*i].recorded_at.timestamp_millis() - start_ms).ok())
        .collect();
    let (Some(offsets_ms), Some(device), Ok(first_seq)) =
        (offsets, first.device_ext(), u64::try_from(first.seq))
    else {
        return Err("the window's header cannot be rebuilt".into());
    };
    let header = WindowHeader {
        gateway_id: &first.gateway_id,
        device_id: device,
        data_type: &first.data_type,
        first_seq,
        start_ms,
        offsets_ms,
    };
    let c = window_commitment(&values, &blinding, &header)
        .map_err(|e| format!("commitment does not open: {e}"))?;
    let c_dec = decimal_of(&c).ok_or("commitment does not open: not a field element")?;
    Ok((c, c_dec, header.context().to_string(), values))
}

/// A window's commitment recomputed ahead, from the readings of one streamed chunk.
#[derive(Debug, Clone)]
pub struct Precomputed {
    /// The readings it was computed from, in seq order.
    ids: Vec<Uuid>,
    result: Result<Calc, String>,
    /// The window spans chunks: its entry is not to be used.
    split: bool,
}

/// Precomputed windows by (device, proof hash).
pub type PrecomputedWindows = Map<(Option<Uuid>, Arc<str>), Precomputed>;

/// Decrypt the readings of `rows` (one streamed chunk) and recompute the
/// commitments of the windows among them before their proofs are read.
/// Windows found in `cache` (same digest of their stored bytes) are taken
/// from it without decrypting; the others are opened and kept there. Only
/// windowable data types; whether a group really is a complete window is
/// decided later, against its proof.
pub fn open_chunk(
    rows: &[StoredReading],
    keys: &KeyRing,
    cache: &OpenedCache,
) -> (Vec<Opened>, PrecomputedWindows) {
    let mut by_key: Map<(Option<Uuid>, &Arc<str>), Vec<usize>> = Map::default();
    for (i, r) in rows.iter().enumerate() {
        let windowable =
            DataType::from_name(&r.data_type).is_some_and(hailan_proto::zk::prove::windowable);
        if let (true, true, Some(h)) = (r.verified, windowable, r.zk_proof_hash.as_ref()) {
            by_key.entry((r.device_id, h)).or_default().push(i);
        }
    }
    let mut opened: Vec<Option<Opened>> = vec![None; rows.len()];
    let mut pre = PrecomputedWindows::default();
    let mut fresh = Vec::new();
    for ((device, hash), mut members) in by_key {
        members.sort_by_key(|i| rows[*i].seq);
        let digest = cache
            .is_enabled()
            .then(|| opened_cache::digest(rows, &members));
        match digest.as_ref().and_then(|d| cache.get(d)) {
            Some(hit) if hit.values.len() == members.len() => {
                for (i, v) in members.iter().zip(&hit.values) {
                    opened[*i] = Some(Ok(v.clone()));
                }
                let ids = members.iter().map(|i| rows[*i].id).collect();
                pre.insert(
                    (device, Arc::clone(hash)),
                    Precomputed {
                        ids,
                        result: Ok(hit.calc.clone()),
                        split: false,
                    },
                );
            }
            _ => fresh.push((device, hash, members, digest)),
        }
    }
    let opened: Vec<Opened> = opened
        .into_iter()
        .zip(rows)
        .map(|(o, r)| o.unwrap_or_else(|| open_row(r, keys)))
        .collect();
    for (device, hash, members, digest) in fresh {
        let values: Vec<SealedValue> = members
            .iter()
            .filter_map(|i| opened[*i].as_ref().ok().cloned())
            .collect();
        if values.len() != members.len() {
            continue;
        }
        let result = window_calc(rows, &members, &opened);
        if let (Ok(calc), Some(digest)) = (&result, digest) {
            let calc = calc.clone();
            cache.insert(digest, OpenedWindow { values, calc });
        }
        let ids = members.iter().map(|i| rows[*i].id).collect();
        let window = Precomputed {
            ids,
            result,
            split: false,
        };
        pre.insert((device, Arc::clone(hash)), window);
    }
    (opened, pre)
}

/// Merge the windows of another chunk; a window seen in two chunks is split.
pub fn merge_precomputed(into: &mut PrecomputedWindows, more: PrecomputedWindows) {
    for (k, v) in more {
        match into.get_mut(&k) {
            Some(old) => old.split = true,
            None => {
                into.insert(k, v);
            }
        }
    }
}

/// Check the groups `gs` of `rows`, decrypted as `opened` (same indexes),
/// using windows recomputed ahead in `pre` where they match exactly.
pub fn check_groups(
    rows: &[StoredReading],
    opened: &[Opened],
    gs: &[Vec<usize>],
    pre: &PrecomputedWindows,
) -> Vec<(usize, Check)> {
    let mut out = Vec::new();
    for g in gs {
        let r = &rows[g[0]];
        if r.is_window() {
            out.extend(check_window(rows, g, opened, pre));
        } else {
            out.extend(g.iter().map(|i| (*i, check_single(&rows[*i], &opened[*i]))));
        }
    }
    out
}

/// Check every row of `rows`, grouped as `gs` ([`groups`]), in parallel on
/// the blocking pool (one task per core).
pub async fn check_parallel(
    rows: Arc<Vec<StoredReading>>,
    opened: Arc<Vec<Opened>>,
    pre: Arc<PrecomputedWindows>,
    gs: Vec<Vec<usize>>,
) -> Vec<Check> {
    let n = rows.len();
    let tasks = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .min(gs.len().div_ceil(64).max(1));
    let mut chunks: Vec<Vec<Vec<usize>>> = vec![Vec::new(); tasks];
    let per = gs.len().div_ceil(tasks).max(1);
    for (k, g) in gs.into_iter().enumerate() {
        chunks[(k / per).min(tasks - 1)].push(g);
    }
    let mut handles = Vec::with_capacity(tasks);
    for chunk in chunks {
        let rows = Arc::clone(&rows);
        let opened = Arc::clone(&opened);
        let pre = Arc::clone(&pre);
        handles.push(tokio::task::spawn_blocking(move || {
            check_groups(&rows, &opened, &chunk, &pre)
        }));
    }
    let mut out = vec![Check::Unverifiable("not checked".into()); n];
    for h in handles {
        match h.await {
            Ok(results) => {
                for (i, c) in results {
                    out[i] = c;
                }
            }
            Err(e) => tracing::error!(error = %e, "a check task failed"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hailan_proto::seal::{DataKey, seal};
    use rand::SeedableRng;

    const GW: &str = "gw-unit";
    const DEVICE: &str = "hr-unit";

    /// One heart-rate window of four readings, sealed under `key`, as the
    /// API reads it.
    fn window(key: &DataKey) -> Vec<StoredReading> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let values = [61u32, 62, 64, 63];
        let start_ms = 1_763_942_400_000i64;
        let mut blinding = [5u8; 32];
        blinding[31] = 0;
        let header = WindowHeader {
            gateway_id: GW,
            device_id: DEVICE,
            data_type: "HEART_RATE",
            first_seq: 1,
            start_ms,
            offsets_ms: vec![0, 1000, 2000, 3000],
        };
        let c = hailan_proto::zk::prove::window_commitment(&values, &blinding, &header)
            .expect("a valid window");
        let device = Arc::new(DeviceInfo {
            ext: DEVICE.into(),
            name: None,
        });
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let seq = 1 + i as i64;
                let t = start_ms + 1000 * i as i64;
                let rh = ReadingHeader {
                    gateway_id: GW,
                    device_id: DEVICE,
                    data_type: "HEART_RATE",
                    seq: seq as u64,
                    recorded_at_ms: t,
                };
                let value = SealedValue {
                    slots: vec![*v],
                    blinding,
                    position: i as u16,
                    original_unit: None,
                    extras: Default::default(),
                };
                let s = seal(key, &rh, &value, &mut rng);
                StoredReading {
                    id: Uuid::from_u128(i as u128 + 1),
                    device_id: Some(Uuid::from_u128(99)),
                    data_type: "HEART_RATE".into(),
                    recorded_at: DateTime::from_timestamp_millis(t).expect("a time"),
                    seq,
                    gateway_id: GW.into(),
                    verified: true,
                    zk_proof_hash: Some("ab".repeat(32).into()),
                    reading_commitment: Some(c),
                    ipfs_data_cid: None,
                    kid: Some(s.kid.into()),
                    sealed: Ok(SealedBytes {
                        nonce: s.nonce,
                        ciphertext: s.ciphertext,
                    }),
                    device: Some(Arc::clone(&device)),
                    proof: None,
                }
            })
            .collect()
    }

    fn values(opened: &[Opened]) -> Vec<Option<Vec<u32>>> {
        opened
            .iter()
            .map(|o| o.as_ref().ok().map(|v| v.slots.clone()))
            .collect()
    }

    #[test]
    fn an_opened_window_is_served_from_the_cache_until_a_stored_byte_changes() {
        let key = DataKey::new("owner-key", [7; 32]);
        let keys = KeyRing::from_keys([key.clone()]);
        let no_keys = KeyRing::from_keys([]);
        let mut rows = window(&key);
        let want = vec![
            Some(vec![61]),
            Some(vec![62]),
            Some(vec![64]),
            Some(vec![63]),
        ];

        let cache = OpenedCache::new(8);
        let (opened, pre) = open_chunk(&rows, &keys, &cache);
        assert_eq!(values(&opened), want);
        assert_eq!(cache.len(), 1);
        let first = pre.values().next().map(|w| w.result.clone());

        // Served again without any key: from the cache, the same commitment.
        let (opened, pre) = open_chunk(&rows, &no_keys, &cache);
        assert_eq!(values(&opened), want, "not served from the cache");
        assert_eq!(pre.values().next().map(|w| w.result.clone()), first);

        // One ciphertext byte changed: a miss, opened afresh (and here,
        // without the key, not opened at all).
        if let Ok(sealed) = rows[2].sealed.as_mut() {
            sealed.ciphertext[0] ^= 1;
        }
        let (opened, _) = open_chunk(&rows, &no_keys, &cache);
        assert!(
            opened.iter().all(Result::is_err),
            "a changed window came from the cache"
        );

        // Capacity 0 keeps nothing.
        let rows = window(&key);
        let off = OpenedCache::new(0);
        let _ = open_chunk(&rows, &keys, &off);
        let (opened, _) = open_chunk(&rows, &no_keys, &off);
        assert!(opened.iter().all(Result::is_err));
    }
}
