//! The gateway's durable state: paired devices (with their secrets and seq
//! counters) and the outbox, in one SQLite database under the state
//! directory.
//!
//! Why SQLite: a reading counts as taken only once it is on disk (DESIGN §7),
//! and the outbox row, the device's next seq and its glucose cursor must move
//! together — one transaction, WAL with `synchronous=FULL` (fsync on every
//! commit; survives kill -9 and power loss). The CLI (`devices`, `status`,
//! `pair`, `forget`) reads and writes the same file while the daemon runs.
//!
//! Outbox order is the row id: FIFO overall, so FIFO per device. A row
//! leaves only when the broker acknowledged it ([`Store::remove`]).

use anyhow::{Context, Result, bail};
use hailan_proto::zk::DeviceSecret;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "gateway.db";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    name TEXT,
    kind TEXT NOT NULL,
    secret BLOB NOT NULL,
    manufacturer TEXT, model TEXT, serial TEXT, firmware TEXT, hardware TEXT,
    paired_at_ms INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1,
    glucose_cursor INTEGER NOT NULL DEFAULT -1,
    battery INTEGER, rssi INTEGER,
    connected INTEGER NOT NULL DEFAULT 0,
    state_at_ms INTEGER,
    last_reading_at_ms INTEGER,
    needs_repair INTEGER NOT NULL DEFAULT 0,
    bonded_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT,
    kind TEXT NOT NULL,
    first_seq INTEGER,
    count INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    oldest_recorded_at_ms INTEGER,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS user_slots (
    slot_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    user_index INTEGER NOT NULL,
    consent INTEGER,
    patient TEXT,
    secret BLOB NOT NULL,
    paired_at_ms INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1,
    last_reading_at_ms INTEGER,
    UNIQUE (device_id, user_index)
);
CREATE TABLE IF NOT EXISTS unassigned (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    user_index INTEGER,
    data_type TEXT NOT NULL,
    taken BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    slot_id TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('outbox_bytes', '0');
"#;

/// A paired device as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceRow {
    /// The gateway's id for the device, made at pairing (e.g.
    /// `hrm-c0ffee000001-3f2a`): the `device_id` of its registration and readings.
    pub device_id: String,
    /// Bluetooth address, `AA:BB:CC:DD:EE:FF`; one paired device per address.
    pub address: String,
    /// Advertised name at pairing, if any.
    pub name: Option<String>,
    /// `DeviceKind::as_str()`.
    pub kind: String,
    /// Wiped when dropped, never printed (`DeviceSecret`'s own Drop and Debug).
    #[serde(skip)]
    /// The device secret `s` made at pairing (DESIGN §5.2): its proofs
    /// show knowledge of it; it never leaves the gateway.
    pub secret: DeviceSecret,
    /// Manufacturer name (Device Information 0x2A29) read at pairing.
    pub manufacturer: Option<String>,
    /// Model number (0x2A24) read at pairing.
    pub model: Option<String>,
    /// Serial number (0x2A25) read at pairing.
    pub serial: Option<String>,
    /// Firmware revision (0x2A26) read at pairing.
    pub firmware: Option<String>,
    /// Hardware revision (0x2A27) read at pairing.
    pub hardware: Option<String>,
    /// When it was paired, ms since the Unix epoch.
    pub paired_at_ms: i64,
    /// The seq its next reading gets (from 1; strictly increasing, survives
    /// restarts).
    pub next_seq: u64,
    /// Glucose meters: sequence number of the last record committed to the
    /// outbox, -1 = none yet.
    pub glucose_cursor: i32,
    /// Last battery level seen, percent.
    pub battery: Option<u8>,
    /// Last signal strength recorded, dBm.
    pub rssi: Option<i16>,
    /// Whether the daemon holds a BLE link to it (as last recorded).
    pub connected: bool,
    /// When its state was last recorded, ms since the Unix epoch.
    pub state_at_ms: Option<i64>,
    /// The newest `recorded_at` of its readings committed to the outbox, ms
    /// since the Unix epoch.
    pub last_reading_at_ms: Option<i64>,
    /// The device refused its bond (a battery change, a reset, another
    /// host): no session runs until the owner pairs it again.
    pub needs_repair: bool,
    /// When BlueZ's bond was last made (pairing, or pairing again after
    /// `needs_repair`): a new value restarts the device's session.
    pub bonded_at_ms: i64,
    /// Outbox rows of this device not yet acknowledged by the broker.
    pub outbox_depth: u64,
}

/// One user slot of a shared device (User Data Service), mapped by the
/// owner to one patient: a device of its own for ingest (its own id,
/// secret, commitment and seq line), fed by the measurements that name its
/// user index.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlotRow {
    /// Its device id: `{device_id}-u{user_index}-{random}`, new at each mapping.
    pub slot_id: String,
    /// The physical device it is a slot of.
    pub device_id: String,
    /// The device's User Index for this user.
    pub user_index: u8,
    /// The consent code the owner gave for it (0–9999), if any.
    pub consent: Option<u16>,
    /// The patient's DID; `None` is the gateway's owner.
    pub patient: Option<String>,
    /// Its own device secret (never printed).
    #[serde(skip)]
    pub secret: DeviceSecret,
    /// When it was mapped, ms since the Unix epoch.
    pub paired_at_ms: i64,
    /// The seq its next reading gets.
    pub next_seq: u64,
    /// The newest `recorded_at` of its readings committed to the outbox.
    pub last_reading_at_ms: Option<i64>,
}

/// Where a measurement of a device goes ([`Store::route`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The device's own line (it has no user slots).
    Device,
    /// The user slot its user index is mapped to.
    Slot(String),
    /// Held for the owner: a shared device's measurement with no user
    /// index, or one no slot is mapped to.
    Unassigned,
}

/// What proving needs of a device or user slot ([`Store::identity`]).
#[derive(Clone, Debug)]
pub struct Identity {
    /// `DeviceKind::as_str()` of the physical device.
    pub kind: String,
    /// Its device secret.
    pub secret: DeviceSecret,
    /// The seq its next reading gets.
    pub next_seq: u64,
    /// Glucose meters: the last record committed, -1 = none.
    pub glucose_cursor: i32,
    /// Whose readings these are: `None` the owner, else a patient's DID.
    pub patient: Option<String>,
}

/// A shared device's reading held for the owner to assign
/// (`hailan-gateway unassigned`, `assign`).
#[derive(Clone, Debug, PartialEq)]
pub struct HeldRow {
    /// Its number, what `assign` takes.
    pub id: i64,
    /// The physical device that measured.
    pub device_id: String,
    /// The user index the measurement named, if any.
    pub user_index: Option<u8>,
    /// Its data type (`BODY_WEIGHT` …).
    pub data_type: String,
    /// The reading as taken, with its original time ([`hailan_proto::group::Taken::to_cbor`]).
    pub taken: Vec<u8>,
    /// When the gateway received it, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// The user slot the owner assigned it to, until it is committed.
    pub slot_id: Option<String>,
}

/// What an outbox row carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A device registration, queued at pairing (never refused for quota).
    Registration,
    /// A reading batch: one device's readings in one or more proof groups.
    Readings,
    /// A device state (battery, RSSI, link, firmware, `needs_repair`).
    State,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Registration => "registration",
            EntryKind::Readings => "readings",
            EntryKind::State => "state",
        }
    }
}

/// One unsent envelope.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// The row id: the outbox's order, and what [`Store::remove`] takes on PUBACK.
    pub id: i64,
    /// The encoded envelope, published as it is on `hailan/v1/{gateway_id}/up`.
    pub payload: Vec<u8>,
}

/// Outbox depth and age, for `status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct OutboxStats {
    /// Unsent envelopes (registrations, reading batches, device states).
    pub entries: u64,
    /// Readings in those envelopes.
    pub readings: u64,
    /// Bytes of envelope payload, what `outbox.quota_mb` limits.
    pub bytes: u64,
    /// Creation time of the oldest unsent row.
    pub oldest_created_at_ms: Option<i64>,
    /// Recording time of the oldest unsent reading.
    pub oldest_recorded_at_ms: Option<i64>,
}

/// Readings about to be committed to the outbox.
#[derive(Clone, Debug)]
pub struct NewReadings<'a> {
    /// The device they were taken from.
    pub device_id: &'a str,
    /// Seq of the first reading; must be the device's next seq.
    pub first_seq: u64,
    /// Readings in the envelope, with seqs `first_seq .. first_seq + count`.
    pub count: u64,
    /// Earliest `recorded_at` among them, ms since the Unix epoch.
    pub oldest_recorded_at_ms: i64,
    /// Latest `recorded_at` among them, ms since the Unix epoch.
    pub newest_recorded_at_ms: i64,
    /// Glucose: the highest record sequence number among them.
    pub glucose_record: Option<u16>,
    /// Held readings ([`HeldRow::id`]) these are: they leave the hold in
    /// the same transaction.
    pub assigned: &'a [i64],
    /// The encoded reading-batch envelope.
    pub payload: &'a [u8],
}

/// Why the outbox refused an entry.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The entry would take the outbox over its quota.
    #[error(
        "outbox full: {bytes} bytes queued, quota {quota} bytes (outbox.quota_mb); the newest readings are refused until the broker takes some"
    )]
    Full {
        /// Payload bytes in the outbox now.
        bytes: u64,
        /// The quota in bytes (`outbox.quota_mb`).
        quota: u64,
    },
    /// The readings do not start at the device's next seq.
    #[error("seq {got} for device {device} but its next seq is {expected}")]
    SeqOutOfOrder {
        /// The device.
        device: String,
        /// Its next seq in the store.
        expected: u64,
        /// The first seq of the refused readings.
        got: u64,
    },
    /// No paired device has this id (it was forgotten).
    #[error("device {0} is not paired (forgotten?)")]
    UnknownDevice(String),
    /// A held reading among them was committed already (or forgotten).
    #[error("held reading {0} is no longer held (committed already?)")]
    NotHeld(i64),
    /// SQLite failed.
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

/// The database, shared by the daemon's tasks (one connection, short
/// transactions) and usable by the CLI at the same time.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    quota_bytes: u64,
    held_max: i64,
}

/// How many readings may wait for the owner to assign them; beyond, the
/// newest is refused (logged, counted), as the outbox refuses when full.
pub const MAX_HELD: i64 = 10_000;

fn db_err(e: rusqlite::Error, what: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(what.to_owned())
}

impl Store {
    /// Open (creating it with mode 0600 if missing) `state_dir/gateway.db`.
    pub fn open(state_dir: &Path, quota_bytes: u64) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join(DB_FILE);
        let fresh = !path.exists();
        let conn = Connection::open(&path)
            .with_context(|| format!("opening the gateway database {}", path.display()))?;
        if fresh {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", path.display()))?;
        }
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| db_err(e, "busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db_err(e, "journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| db_err(e, "synchronous=FULL"))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| db_err(e, "creating the gateway schema"))?;
        upgrade(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
            quota_bytes,
            held_max: MAX_HELD,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (the transaction rolls back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ------------------------------------------------------------ devices

    /// Store a newly paired device and queue its registration, atomically.
    pub fn add_device(&self, d: &DeviceRow, registration: &[u8]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT device_id FROM devices WHERE address = ?1",
                [&d.address],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_err(e, "looking up the address"))?;
        if let Some(id) = taken {
            bail!(
                "{} is already paired as {id}; `hailan-gateway forget {id}` first",
                d.address
            );
        }
        tx.execute(
            "INSERT INTO devices (device_id, address, name, kind, secret, manufacturer, model, serial, firmware, hardware, paired_at_ms, battery, bonded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?11)",
            params![
                d.device_id, d.address, d.name, d.kind, d.secret.to_bytes().to_vec(), d.manufacturer, d.model,
                d.serial, d.firmware, d.hardware, d.paired_at_ms, d.battery
            ],
        )
        .map_err(|e| db_err(e, "inserting the device"))?;
        insert_entry(
            &tx,
            Some(&d.device_id),
            EntryKind::Registration,
            None,
            0,
            d.paired_at_ms,
            None,
            registration,
        )?;
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(())
    }

    /// Paired devices with their outbox depth, oldest pairing first.
    pub fn devices(&self) -> Result<Vec<DeviceRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT d.device_id, d.address, d.name, d.kind, d.secret, d.manufacturer, d.model, d.serial,
                        d.firmware, d.hardware, d.paired_at_ms, d.next_seq, d.glucose_cursor, d.battery, d.rssi,
                        d.connected, d.state_at_ms, d.last_reading_at_ms,
                        (SELECT count(*) FROM outbox o WHERE o.device_id = d.device_id), d.needs_repair, d.bonded_at_ms
                 FROM devices d ORDER BY d.paired_at_ms, d.device_id",
            )
            .map_err(|e| db_err(e, "listing devices"))?;
        let rows = st
            .query_map([], |r| {
                let secret = secret_column(r, 4)?;
                Ok(DeviceRow {
                    device_id: r.get(0)?,
                    address: r.get(1)?,
                    name: r.get(2)?,
                    kind: r.get(3)?,
                    secret,
                    manufacturer: r.get(5)?,
                    model: r.get(6)?,
                    serial: r.get(7)?,
                    firmware: r.get(8)?,
                    hardware: r.get(9)?,
                    paired_at_ms: r.get(10)?,
                    next_seq: r.get(11)?,
                    glucose_cursor: r.get(12)?,
                    battery: r.get(13)?,
                    rssi: r.get(14)?,
                    connected: r.get(15)?,
                    state_at_ms: r.get(16)?,
                    last_reading_at_ms: r.get(17)?,
                    outbox_depth: r.get(18)?,
                    needs_repair: r.get(19)?,
                    bonded_at_ms: r.get(20)?,
                })
            })
            .map_err(|e| db_err(e, "listing devices"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_err(e, "reading a device row"))
    }

    /// Mark a device whose bond was refused. Returns whether it was not
    /// marked before.
    pub fn set_needs_repair(&self, device_id: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE devices SET needs_repair = 1, connected = 0 WHERE device_id = ?1 AND needs_repair = 0",
                params![device_id],
            )
            .map_err(|e| db_err(e, "marking a device needs_repair"))?;
        Ok(n > 0)
    }

    /// The device was paired again at `at_ms`: its bond is new, its
    /// `needs_repair` cleared (the daemon starts a fresh session).
    pub fn rebonded(&self, device_id: &str, at_ms: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE devices SET needs_repair = 0, bonded_at_ms = ?2 WHERE device_id = ?1",
                params![device_id, at_ms],
            )
            .map_err(|e| db_err(e, "recording the new bond"))?;
        Ok(())
    }

    /// A device by id, address (any case) or name.
    pub fn find_device(&self, who: &str) -> Result<Option<DeviceRow>> {
        let all = self.devices()?;
        let hits: Vec<DeviceRow> = all
            .into_iter()
            .filter(|d| {
                d.device_id == who
                    || d.address.eq_ignore_ascii_case(who)
                    || d.name.as_deref() == Some(who)
            })
            .collect();
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.into_iter().next()),
            n => bail!("{n} paired devices are called {who:?}; name one by its id or address"),
        }
    }

    /// Forget a device: its row and its unsent outbox rows (their readings
    /// were sealed for a device that no longer exists here). Returns how many
    /// unsent rows were dropped.
    pub fn forget_device(&self, device_id: &str) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        let bytes: i64 = tx
            .query_row(
                "SELECT COALESCE(sum(length(payload)), 0) FROM outbox WHERE device_id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .map_err(|e| db_err(e, "sizing the device's outbox"))?;
        let slots = "SELECT slot_id FROM user_slots WHERE device_id = ?1";
        let bytes: i64 = bytes
            + tx.query_row(
                &format!("SELECT COALESCE(sum(length(payload)), 0) FROM outbox WHERE device_id IN ({slots})"),
                [device_id],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| db_err(e, "sizing the slots' outbox"))?;
        let dropped = tx
            .execute(
                &format!("DELETE FROM outbox WHERE device_id = ?1 OR device_id IN ({slots})"),
                [device_id],
            )
            .map_err(|e| db_err(e, "dropping the device's outbox"))?;
        tx.execute("DELETE FROM user_slots WHERE device_id = ?1", [device_id])
            .map_err(|e| db_err(e, "dropping the device's user slots"))?;
        tx.execute("DELETE FROM unassigned WHERE device_id = ?1", [device_id])
            .map_err(|e| db_err(e, "dropping the device's held readings"))?;
        add_bytes(&tx, -bytes)?;
        let n = tx
            .execute("DELETE FROM devices WHERE device_id = ?1", [device_id])
            .map_err(|e| db_err(e, "deleting the device"))?;
        if n == 0 {
            bail!("no paired device {device_id}");
        }
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(dropped as u64)
    }

    /// At daemon start no link is held yet, whatever the last run (perhaps
    /// killed) recorded: every device is not connected until its session
    /// says otherwise, so a state sent again is never a stale `connected`.
    pub fn reset_links(&self) -> Result<()> {
        self.conn()
            .execute("UPDATE devices SET connected = 0 WHERE connected <> 0", [])
            .map_err(|e| db_err(e, "resetting the devices' links"))?;
        Ok(())
    }

    /// Record a device's latest state; queue `payload` (its device-state
    /// envelope) if given and there is room. Returns whether it was queued;
    /// nothing is recorded nor queued for a device that is not paired (forgotten).
    pub fn record_state(
        &self,
        state: &hailan_proto::envelope::DeviceState,
        payload: Option<&[u8]>,
    ) -> Result<bool> {
        let device_id = state.device_id.as_str();
        let at_ms = state.observed_at_ms;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        // The firmware read on this connection replaces the one read at
        // pairing (devices get firmware updates).
        let known = tx
            .execute(
                "UPDATE devices SET battery = COALESCE(?2, battery), rssi = COALESCE(?3, rssi), connected = ?4, state_at_ms = ?5,
                        firmware = COALESCE(?6, firmware) WHERE device_id = ?1",
                params![
                    device_id,
                    state.battery_level,
                    state.rssi,
                    state.connected,
                    at_ms,
                    state.firmware_version
                ],
            )
            .map_err(|e| db_err(e, "updating device state"))?;
        let mut queued = false;
        if known > 0
            && let Some(p) = payload
            && outbox_bytes(&tx)? + p.len() as u64 <= self.quota_bytes
        {
            insert_entry(
                &tx,
                Some(device_id),
                EntryKind::State,
                None,
                0,
                at_ms,
                None,
                p,
            )?;
            queued = true;
        }
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(queued)
    }

    // ------------------------------------------------------------ user slots

    /// Map user `slot.user_index` of a paired device to a patient and queue
    /// the slot's registration, atomically. A user index is mapped once.
    pub fn add_slot(&self, slot: &SlotRow, registration: &[u8]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        let paired: i64 = tx
            .query_row(
                "SELECT count(*) FROM devices WHERE device_id = ?1",
                [&slot.device_id],
                |r| r.get(0),
            )
            .map_err(|e| db_err(e, "looking up the device"))?;
        if paired == 0 {
            bail!("no paired device {}", slot.device_id);
        }
        let taken: Option<String> = tx
            .query_row(
                "SELECT slot_id FROM user_slots WHERE device_id = ?1 AND user_index = ?2",
                params![slot.device_id, slot.user_index],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_err(e, "looking up the user index"))?;
        if let Some(id) = taken {
            bail!(
                "user {} of {} is already mapped as {id}; `hailan-gateway forget {id}` first",
                slot.user_index,
                slot.device_id
            );
        }
        tx.execute(
            "INSERT INTO user_slots (slot_id, device_id, user_index, consent, patient, secret, paired_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                slot.slot_id,
                slot.device_id,
                slot.user_index,
                slot.consent,
                slot.patient,
                slot.secret.to_bytes().to_vec(),
                slot.paired_at_ms
            ],
        )
        .map_err(|e| db_err(e, "inserting the user slot"))?;
        insert_entry(
            &tx,
            Some(&slot.slot_id),
            EntryKind::Registration,
            None,
            0,
            slot.paired_at_ms,
            None,
            registration,
        )?;
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(())
    }

    /// Forget one user slot: its row and its unsent outbox rows (the device
    /// stays paired; its user's readings are held from now on). Returns how
    /// many unsent rows were dropped.
    pub fn forget_slot(&self, slot_id: &str) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        let bytes: i64 = tx
            .query_row(
                "SELECT COALESCE(sum(length(payload)), 0) FROM outbox WHERE device_id = ?1",
                [slot_id],
                |r| r.get(0),
            )
            .map_err(|e| db_err(e, "sizing the slot's outbox"))?;
        let dropped = tx
            .execute("DELETE FROM outbox WHERE device_id = ?1", [slot_id])
            .map_err(|e| db_err(e, "dropping the slot's outbox"))?;
        add_bytes(&tx, -bytes)?;
        tx.execute(
            "UPDATE unassigned SET slot_id = NULL WHERE slot_id = ?1",
            [slot_id],
        )
        .map_err(|e| db_err(e, "holding the slot's assigned readings again"))?;
        if tx
            .execute("DELETE FROM user_slots WHERE slot_id = ?1", [slot_id])
            .map_err(|e| db_err(e, "deleting the user slot"))?
            == 0
        {
            bail!("no user slot {slot_id}");
        }
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(dropped as u64)
    }

    /// Every user slot, by device then user index.
    pub fn slots(&self) -> Result<Vec<SlotRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT slot_id, device_id, user_index, consent, patient, secret, paired_at_ms, next_seq, last_reading_at_ms
                 FROM user_slots ORDER BY device_id, user_index",
            )
            .map_err(|e| db_err(e, "listing user slots"))?;
        let rows = st
            .query_map([], |r| {
                Ok(SlotRow {
                    slot_id: r.get(0)?,
                    device_id: r.get(1)?,
                    user_index: r.get(2)?,
                    consent: r.get(3)?,
                    patient: r.get(4)?,
                    secret: secret_column(r, 5)?,
                    paired_at_ms: r.get(6)?,
                    next_seq: r.get(7)?,
                    last_reading_at_ms: r.get(8)?,
                })
            })
            .map_err(|e| db_err(e, "listing user slots"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_err(e, "reading a user slot"))
    }

    /// Where a measurement of `device_id` naming `user` goes: a device
    /// without user slots keeps its own line; a shared one sends it to the
    /// slot mapped to its user index, else holds it.
    pub fn route(&self, device_id: &str, user: Option<u8>) -> Result<Route> {
        let conn = self.conn();
        let (slots, mapped): (i64, Option<String>) = conn
            .query_row(
                "SELECT count(*), max(CASE WHEN user_index = ?2 THEN slot_id END)
                 FROM user_slots WHERE device_id = ?1",
                params![device_id, user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| db_err(e, "looking up the device's user slots"))?;
        Ok(match (slots, mapped) {
            (0, _) => Route::Device,
            (_, Some(slot)) => Route::Slot(slot),
            (_, None) => Route::Unassigned,
        })
    }

    /// The device or user slot `id` as proving needs it; `None` when
    /// neither is paired (forgotten).
    pub fn identity(&self, id: &str) -> Result<Option<Identity>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT kind, secret, next_seq, glucose_cursor, NULL FROM devices WHERE device_id = ?1
             UNION ALL
             SELECT d.kind, s.secret, s.next_seq, -1, s.patient FROM user_slots s
             JOIN devices d ON d.device_id = s.device_id WHERE s.slot_id = ?1",
            [id],
            |r| {
                Ok(Identity {
                    kind: r.get(0)?,
                    secret: secret_column(r, 1)?,
                    next_seq: r.get(2)?,
                    glucose_cursor: r.get(3)?,
                    patient: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(|e| db_err(e, "looking up a device"))
    }

    // ------------------------------------------------------------ held readings

    /// Hold a shared device's reading for the owner (or, `slot_id` given,
    /// for a slot that cannot take it yet); returns its number.
    pub fn hold(
        &self,
        device_id: &str,
        user_index: Option<u8>,
        data_type: &str,
        taken: &[u8],
        received_at_ms: i64,
        slot_id: Option<&str>,
    ) -> Result<i64> {
        let conn = self.conn();
        let held: i64 = conn
            .query_row("SELECT count(*) FROM unassigned", [], |r| r.get(0))
            .map_err(|e| db_err(e, "counting the held readings"))?;
        if held >= self.held_max {
            bail!(
                "{held} readings are held already (the most kept): assign them (`hailan-gateway unassigned`) or map their users; this one is refused"
            );
        }
        conn.execute(
            "INSERT INTO unassigned (device_id, user_index, data_type, taken, received_at_ms, slot_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![device_id, user_index, data_type, taken, received_at_ms, slot_id],
        )
        .map_err(|e| db_err(e, "holding an unassigned reading"))?;
        Ok(conn.last_insert_rowid())
    }

    /// The held readings, oldest first: unassigned ones, and assigned ones
    /// not yet committed.
    pub fn held(&self) -> Result<Vec<HeldRow>> {
        self.held_rows(false)
    }

    /// The held readings assigned to a slot and not yet committed, oldest
    /// first (what the daemon hands to the slots' workers).
    pub fn assigned(&self) -> Result<Vec<HeldRow>> {
        self.held_rows(true)
    }

    fn held_rows(&self, assigned_only: bool) -> Result<Vec<HeldRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT id, device_id, user_index, data_type, taken, received_at_ms, slot_id FROM unassigned
                 WHERE NOT ?1 OR slot_id IS NOT NULL ORDER BY id",
            )
            .map_err(|e| db_err(e, "listing held readings"))?;
        let rows = st
            .query_map([assigned_only], |r| {
                Ok(HeldRow {
                    id: r.get(0)?,
                    device_id: r.get(1)?,
                    user_index: r.get(2)?,
                    data_type: r.get(3)?,
                    taken: r.get(4)?,
                    received_at_ms: r.get(5)?,
                    slot_id: r.get(6)?,
                })
            })
            .map_err(|e| db_err(e, "listing held readings"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_err(e, "reading a held reading"))
    }

    /// Assign held reading `id` to user slot `slot_id` (of its device): the
    /// daemon proves it under that slot with its original time.
    pub fn assign(&self, id: i64, slot_id: &str) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE unassigned SET slot_id = ?2 WHERE id = ?1 AND slot_id IS NULL
                 AND device_id = (SELECT device_id FROM user_slots WHERE slot_id = ?2)",
                params![id, slot_id],
            )
            .map_err(|e| db_err(e, "assigning a held reading"))?;
        if n == 0 {
            bail!("reading {id} is not an unassigned reading of the device {slot_id} is a slot of");
        }
        Ok(())
    }

    // ------------------------------------------------------------ outbox

    /// Commit readings to the outbox: the row, the device's next seq and
    /// glucose cursor in one fsync'd transaction. Until this returns `Ok`
    /// the readings are not taken.
    pub fn commit_readings(&self, r: &NewReadings<'_>, now_ms: i64) -> Result<i64, Refused> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(|e| Refused::Db(db_err(e, "begin")))?;
        let next: Option<u64> = tx
            .query_row(
                "SELECT next_seq FROM devices WHERE device_id = ?1
                 UNION ALL SELECT next_seq FROM user_slots WHERE slot_id = ?1",
                [r.device_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| Refused::Db(db_err(e, "reading next seq")))?;
        let Some(next) = next else {
            return Err(Refused::UnknownDevice(r.device_id.to_owned()));
        };
        if next != r.first_seq {
            return Err(Refused::SeqOutOfOrder {
                device: r.device_id.to_owned(),
                expected: next,
                got: r.first_seq,
            });
        }
        let bytes = outbox_bytes(&tx)?;
        if bytes + r.payload.len() as u64 > self.quota_bytes {
            return Err(Refused::Full {
                bytes,
                quota: self.quota_bytes,
            });
        }
        let id = insert_entry(
            &tx,
            Some(r.device_id),
            EntryKind::Readings,
            Some(r.first_seq),
            r.count,
            now_ms,
            Some(r.oldest_recorded_at_ms),
            r.payload,
        )?;
        tx.execute(
            "UPDATE devices SET next_seq = ?2, last_reading_at_ms = max(COALESCE(last_reading_at_ms, 0), ?3),
                    glucose_cursor = max(glucose_cursor, COALESCE(?4, -1)) WHERE device_id = ?1",
            params![
                r.device_id,
                r.first_seq + r.count,
                r.newest_recorded_at_ms,
                r.glucose_record.map(i32::from)
            ],
        )
        .map_err(|e| Refused::Db(db_err(e, "advancing next seq")))?;
        tx.execute(
            "UPDATE user_slots SET next_seq = ?2, last_reading_at_ms = max(COALESCE(last_reading_at_ms, 0), ?3)
             WHERE slot_id = ?1",
            params![r.device_id, r.first_seq + r.count, r.newest_recorded_at_ms],
        )
        .map_err(|e| Refused::Db(db_err(e, "advancing the slot's next seq")))?;
        for held in r.assigned {
            let n = tx
                .execute(
                    "DELETE FROM unassigned WHERE id = ?1 AND slot_id = ?2",
                    params![held, r.device_id],
                )
                .map_err(|e| Refused::Db(db_err(e, "releasing a held reading")))?;
            if n == 0 {
                return Err(Refused::NotHeld(*held));
            }
        }
        tx.commit().map_err(|e| Refused::Db(db_err(e, "commit")))?;
        Ok(id)
    }

    /// Up to `limit` unsent rows with id greater than `after`, in order.
    pub fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached("SELECT id, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| db_err(e, "reading the outbox"))?;
        let rows = st
            .query_map(params![after, limit as i64], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    payload: r.get(1)?,
                })
            })
            .map_err(|e| db_err(e, "reading the outbox"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| db_err(e, "reading an outbox row"))
    }

    /// Remove acknowledged rows (one transaction for many acks). A row that
    /// comes back after a crash before this commit is published again and
    /// absorbed by ingest's unique key.
    pub fn remove(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| db_err(e, "begin"))?;
        let mut freed = 0i64;
        {
            let mut size = tx
                .prepare_cached("SELECT length(payload) FROM outbox WHERE id = ?1")
                .map_err(|e| db_err(e, "sizing acked rows"))?;
            let mut del = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .map_err(|e| db_err(e, "deleting acked rows"))?;
            for id in ids {
                let len: Option<i64> = size
                    .query_row([id], |r| r.get(0))
                    .optional()
                    .map_err(|e| db_err(e, "sizing an acked row"))?;
                if let Some(len) = len {
                    del.execute([id])
                        .map_err(|e| db_err(e, "deleting an acked row"))?;
                    freed += len;
                }
            }
        }
        add_bytes(&tx, -freed)?;
        tx.commit().map_err(|e| db_err(e, "commit"))?;
        Ok(())
    }

    /// Depth and age of the outbox.
    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        let conn = self.conn();
        let (entries, readings, oldest_created, oldest_recorded): (
            u64,
            Option<u64>,
            Option<i64>,
            Option<i64>,
        ) = conn
            .query_row(
                "SELECT count(*), sum(count), min(created_at_ms), min(oldest_recorded_at_ms) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| db_err(e, "outbox stats"))?;
        Ok(OutboxStats {
            entries,
            readings: readings.unwrap_or(0),
            bytes: outbox_bytes(&conn)?,
            oldest_created_at_ms: oldest_created,
            oldest_recorded_at_ms: oldest_recorded,
        })
    }

    // ------------------------------------------------------------ meta

    /// Set a daemon status value (read by `hailan-gateway status`).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|e| db_err(e, "writing status"))?;
        Ok(())
    }

    /// A daemon status value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(e, "reading status"))
    }
}

/// Brings a database made by an older gateway to the current schema
/// (SQLite's `CREATE TABLE IF NOT EXISTS` leaves an existing table as it is).
fn upgrade(conn: &Connection) -> Result<()> {
    for (column, definition) in [
        ("needs_repair", "INTEGER NOT NULL DEFAULT 0"),
        ("bonded_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let present: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('devices') WHERE name = ?1",
                [column],
                |r| r.get(0),
            )
            .map_err(|e| db_err(e, "reading the devices table's columns"))?;
        if present == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE devices ADD COLUMN {column} {definition}"
            ))
            .map_err(|e| db_err(e, &format!("adding devices.{column}")))?;
        }
    }
    Ok(())
}

/// A device secret stored in column `i`.
fn secret_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<DeviceSecret> {
    let secret: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(r.get(i)?);
    <[u8; 32]>::try_from(secret.as_slice())
        .ok()
        .and_then(|b| DeviceSecret::from_bytes(b).ok())
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                i,
                rusqlite::types::Type::Blob,
                "the stored device secret is not a valid scalar".into(),
            )
        })
}

fn outbox_bytes(conn: &Connection) -> Result<u64> {
    let v: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'outbox_bytes'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| db_err(e, "reading the outbox size"))?;
    Ok(v.parse::<i64>().unwrap_or(0).max(0) as u64)
}

fn add_bytes(conn: &Connection, delta: i64) -> Result<()> {
    conn.execute(
        "UPDATE meta SET value = CAST(max(0, CAST(value AS INTEGER) + ?1) AS TEXT) WHERE key = 'outbox_bytes'",
        [delta],
    )
    .map_err(|e| db_err(e, "updating the outbox size"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_entry(
    conn: &Connection,
    device_id: Option<&str>,
    kind: EntryKind,
    first_seq: Option<u64>,
    count: u64,
    created_at_ms: i64,
    oldest_recorded_at_ms: Option<i64>,
    payload: &[u8],
) -> Result<i64> {
    conn.execute(
        "INSERT INTO outbox (device_id, kind, first_seq, count, created_at_ms, oldest_recorded_at_ms, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![device_id, kind.as_str(), first_seq, count, created_at_ms, oldest_recorded_at_ms, payload],
    )
    .map_err(|e| db_err(e, "queueing in the outbox"))?;
    let id = conn.last_insert_rowid();
    add_bytes(conn, payload.len() as i64)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(
        id: &str,
        battery: Option<u8>,
        firmware: Option<&str>,
        at_ms: i64,
    ) -> hailan_proto::envelope::DeviceState {
        hailan_proto::envelope::DeviceState {
            device_id: id.into(),
            battery_level: battery,
            rssi: None,
            connected: true,
            firmware_version: firmware.map(str::to_owned),
            observed_at_ms: at_ms,
            needs_repair: None,
        }
    }

    fn device(id: &str, address: &str) -> DeviceRow {
        DeviceRow {
            device_id: id.into(),
            address: address.into(),
            name: Some(format!("{id} name")),
            kind: "heart_rate_monitor".into(),
            secret: DeviceSecret::from_bytes([9; 32]).expect("a valid scalar"),
            manufacturer: None,
            model: None,
            serial: None,
            firmware: None,
            hardware: None,
            paired_at_ms: 1,
            next_seq: 1,
            glucose_cursor: -1,
            battery: Some(80),
            rssi: None,
            connected: false,
            state_at_ms: None,
            last_reading_at_ms: None,
            needs_repair: false,
            bonded_at_ms: 0,
            outbox_depth: 0,
        }
    }

    fn readings<'a>(dev: &'a str, first: u64, n: u64, payload: &'a [u8]) -> NewReadings<'a> {
        NewReadings {
            device_id: dev,
            first_seq: first,
            count: n,
            oldest_recorded_at_ms: 10,
            newest_recorded_at_ms: 20,
            glucose_record: None,
            assigned: &[],
            payload,
        }
    }

    #[test]
    fn seq_advances_with_the_outbox_row_and_survives_reopening() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), 1 << 20)?;
        store.add_device(&device("d1", "AA:00:00:00:00:01"), b"reg")?;
        store.commit_readings(&readings("d1", 1, 16, b"w1"), 5)?;
        store.commit_readings(&readings("d1", 17, 1, b"r17"), 6)?;
        let e = store.commit_readings(&readings("d1", 17, 1, b"again"), 7);
        assert!(matches!(
            e,
            Err(Refused::SeqOutOfOrder { expected: 18, .. })
        ));
        drop(store);
        let store = Store::open(dir.path(), 1 << 20)?;
        let d = store.find_device("aa:00:00:00:00:01")?.expect("device");
        assert_eq!((d.next_seq, d.outbox_depth), (18, 3));
        let p = store.pending(0, 10)?;
        let payloads: Vec<&[u8]> = p.iter().map(|e| e.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"reg"[..], b"w1", b"r17"]);
        let stats = store.outbox_stats()?;
        assert_eq!((stats.entries, stats.readings, stats.bytes), (3, 17, 8));
        assert_eq!(stats.oldest_recorded_at_ms, Some(10));
        store.remove(&[p[0].id, p[1].id])?;
        assert_eq!(store.pending(0, 10)?.len(), 1);
        assert_eq!(store.pending(p[2].id, 10)?.len(), 0);
        assert_eq!(store.outbox_stats()?.bytes, 3);
        Ok(())
    }

    #[test]
    fn a_state_directory_of_an_older_gateway_gains_the_repair_columns() -> Result<()> {
        let dir = tempfile::tempdir()?;
        {
            // The devices table as the first release made it.
            let old = Connection::open(dir.path().join(DB_FILE))?;
            old.execute_batch(
                "CREATE TABLE devices (device_id TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE,
                 name TEXT, kind TEXT NOT NULL, secret BLOB NOT NULL, manufacturer TEXT, model TEXT,
                 serial TEXT, firmware TEXT, hardware TEXT, paired_at_ms INTEGER NOT NULL,
                 next_seq INTEGER NOT NULL DEFAULT 1, glucose_cursor INTEGER NOT NULL DEFAULT -1,
                 battery INTEGER, rssi INTEGER, connected INTEGER NOT NULL DEFAULT 0,
                 state_at_ms INTEGER, last_reading_at_ms INTEGER);",
            )?;
        }
        let store = Store::open(dir.path(), 1 << 20)?;
        store.add_device(&device("d1", "AA:00:00:00:00:01"), b"reg")?;
        assert!(store.set_needs_repair("d1")?);
        assert!(!store.set_needs_repair("d1")?, "marked once");
        assert!(store.devices()?[0].needs_repair);
        store.rebonded("d1", 99)?;
        let d = &store.devices()?[0];
        assert!(!d.needs_repair);
        assert_eq!(d.bonded_at_ms, 99);
        Ok(())
    }

    #[test]
    fn a_full_outbox_refuses_readings_without_consuming_their_seq() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), 10)?;
        store.add_device(&device("d1", "AA:00:00:00:00:01"), b"reg")?;
        store.commit_readings(&readings("d1", 1, 1, b"12345"), 1)?;
        let e = store.commit_readings(&readings("d1", 2, 1, b"123"), 2);
        assert!(
            matches!(
                e,
                Err(Refused::Full {
                    bytes: 8,
                    quota: 10
                })
            ),
            "{e:?}"
        );
        assert!(!store.record_state(&state("d1", Some(5), None, 3), Some(b"state"))?);
        let first = store.pending(0, 1)?;
        store.remove(&[first[0].id])?;
        store.commit_readings(&readings("d1", 2, 1, b"123"), 4)?;
        assert_eq!(store.find_device("d1")?.map(|d| d.next_seq), Some(3));
        Ok(())
    }

    fn slot(device: &str, user_index: u8, patient: Option<&str>) -> SlotRow {
        SlotRow {
            slot_id: format!("{device}-u{user_index}"),
            device_id: device.into(),
            user_index,
            consent: Some(1234),
            patient: patient.map(str::to_owned),
            secret: DeviceSecret::from_bytes([5; 32]).expect("a valid scalar"),
            paired_at_ms: 2,
            next_seq: 1,
            last_reading_at_ms: None,
        }
    }

    #[test]
    fn a_shared_device_routes_by_user_slot_and_holds_the_rest_until_assigned() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), 1 << 20)?;
        store.add_device(&device("scale", "AA:00:00:00:00:01"), b"reg")?;
        store.add_device(&device("hr", "AA:00:00:00:00:02"), b"reg")?;
        assert_eq!(
            store.route("scale", Some(1))?,
            Route::Device,
            "no slots yet"
        );
        store.add_slot(&slot("scale", 1, None), b"reg-u1")?;
        store.add_slot(&slot("scale", 2, Some("did:example:bob")), b"reg-u2")?;
        let again = store.add_slot(&slot("scale", 2, None), b"again");
        assert!(
            format!("{again:#?}").contains("already mapped"),
            "{again:?}"
        );
        assert!(store.add_slot(&slot("nothing", 1, None), b"x").is_err());
        assert_eq!(
            store.route("scale", Some(2))?,
            Route::Slot("scale-u2".into())
        );
        assert_eq!(store.route("scale", Some(3))?, Route::Unassigned);
        assert_eq!(store.route("scale", None)?, Route::Unassigned);
        assert_eq!(store.route("hr", None)?, Route::Device);
        let bob = store.identity("scale-u2")?.expect("the slot");
        assert_eq!(
            (bob.kind.as_str(), bob.patient.as_deref(), bob.next_seq),
            ("heart_rate_monitor", Some("did:example:bob"), 1)
        );

        // A held reading leaves the hold with the commit that sends it, once.
        let id = store.hold("scale", Some(3), "BODY_WEIGHT", b"taken", 7, None)?;
        assert!(store.assign(id, "hr").is_err(), "not a slot of its device");
        store.assign(id, "scale-u2")?;
        assert!(store.assign(id, "scale-u1").is_err(), "assigned once");
        assert_eq!(store.held()?[0].slot_id.as_deref(), Some("scale-u2"));
        let ids = [id];
        let mut r = readings("scale-u2", 1, 1, b"sealed");
        r.assigned = &ids;
        store.commit_readings(&r, 8)?;
        assert!(store.held()?.is_empty());
        let mut twice = readings("scale-u2", 2, 1, b"sealed");
        twice.assigned = &ids;
        assert!(matches!(
            store.commit_readings(&twice, 9),
            Err(Refused::NotHeld(_))
        ));
        assert_eq!(
            store.identity("scale-u2")?.map(|s| s.next_seq),
            Some(2),
            "seq not used"
        );

        assert_eq!(store.assigned()?, Vec::new(), "none assigned");
        // The hold is bounded: the newest is refused.
        let mut small = Store::open(dir.path(), 1 << 20)?;
        small.held_max = 1;
        small.hold("scale", None, "BODY_WEIGHT", b"taken", 11, None)?;
        let refused = small.hold("scale", None, "BODY_WEIGHT", b"taken", 12, Some("scale-u1"));
        assert!(
            format!("{refused:#?}").contains("held already"),
            "{refused:?}"
        );
        small.assign(small.held()?[0].id, "scale-u1")?;
        assert_eq!(small.assigned()?.len(), 1);
        drop(small);
        // Forgetting a slot leaves the scale and the other slot.
        store.forget_slot("scale-u2")?;
        assert_eq!(store.route("scale", Some(2))?, Route::Unassigned);
        assert!(store.forget_slot("scale-u2").is_err());
        // Forgetting the scale forgets its slots, their outbox rows and its held readings.
        store.hold("scale", None, "BODY_WEIGHT", b"taken", 10, None)?;
        let before = store.outbox_stats()?.entries;
        assert_eq!(store.forget_device("scale")?, 2);
        assert_eq!(store.outbox_stats()?.entries, before - 2);
        assert!(store.slots()?.is_empty() && store.held()?.is_empty());
        assert!(store.identity("scale-u1")?.is_none());
        Ok(())
    }

    #[test]
    fn forgetting_drops_the_device_and_its_unsent_rows() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), 1 << 20)?;
        store.add_device(&device("d1", "AA:00:00:00:00:01"), b"reg1")?;
        store.add_device(&device("d2", "AA:00:00:00:00:02"), b"reg2")?;
        let e = store.add_device(&device("d3", "AA:00:00:00:00:02"), b"reg3");
        assert!(format!("{e:#?}").contains("already paired as d2"));
        assert_eq!(store.forget_device("d1")?, 1);
        assert!(store.find_device("d1")?.is_none());
        assert_eq!(store.outbox_stats()?.bytes, 4);
        assert!(
            !store.record_state(&state("d1", None, None, 5), Some(b"state"))?,
            "nothing is queued for a forgotten device"
        );
        assert_eq!(store.outbox_stats()?.bytes, 4);
        assert!(
            store
                .record_state(&state("d2", None, Some("fw-2.0"), 5), None)
                .is_ok()
        );
        assert_eq!(
            store.find_device("d2")?.and_then(|d| d.firmware).as_deref(),
            Some("fw-2.0"),
            "the firmware read on a connection is kept"
        );
        store.reset_links()?;
        assert!(store.devices()?.iter().all(|d| !d.connected));
        assert!(matches!(
            store.commit_readings(&readings("d1", 1, 1, b"x"), 1),
            Err(Refused::UnknownDevice(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "the database holds device secrets");
        Ok(())
    }
}
