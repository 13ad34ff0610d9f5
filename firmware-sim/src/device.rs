//! One simulated device: identity, connection state, GATT layout, model state.

use crate::model::{DeviceKind, Measurement, Physiology};
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use tokio::time::Instant;

/// Public facts about a simulated device.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name used by the CLI and fault specs: kind + per-kind index (`hr0`).
    pub name: String,
    /// Kind.
    pub kind: DeviceKind,
    /// Bluetooth address, upper case (`F0:4A:1A:01:00:00`).
    pub address: String,
    /// BlueZ object path under the first adapter
    /// (`/org/bluez/hci0/dev_F0_4A_1A_01_00_00`); [`on_adapter`] gives it under another.
    pub path: String,
    /// Advertised local name.
    pub local_name: String,
    /// Serial number (Device Information 0x2A25).
    pub serial: String,
    /// How it pairs, and the passkey/number/PIN it shows.
    pub pairing: crate::pairing::Pairing,
}

/// One characteristic of a device.
#[derive(Debug)]
pub struct Char {
    /// 16-bit SIG UUID.
    pub uuid16: u16,
    /// Object path.
    pub path: String,
    /// Path of its service.
    pub service_path: String,
    /// BlueZ flag spellings.
    pub flags: Vec<&'static str>,
    /// Needs pairing (encryption) to read, write or subscribe.
    pub secure: bool,
    /// Current value.
    pub value: Mutex<Vec<u8>>,
    /// D-Bus senders holding a notify session.
    pub sessions: Mutex<BTreeSet<String>>,
    /// Client Characteristic Configuration descriptor path, if it notifies/indicates.
    pub cccd_path: Option<String>,
}

impl Char {
    /// Has the flag (`read`, `notify`, …).
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
    /// Someone holds a notify session.
    pub fn notifying(&self) -> bool {
        self.sessions.lock().map(|s| !s.is_empty()).unwrap_or(false)
    }
    /// Indications rather than notifications.
    pub fn indicates(&self) -> bool {
        self.has("indicate")
    }
}

/// One GATT service.
#[derive(Debug)]
pub struct Service {
    /// 16-bit SIG UUID.
    pub uuid16: u16,
    /// Object path.
    pub path: String,
    /// Its characteristics.
    pub chars: Vec<std::sync::Arc<Char>>,
}

/// A device's wall clock: how far it is from the true time (UTC), and how
/// fast it drifts. Measurements are stamped by it; Current Time (0x2A2B)
/// reads and sets it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceClock {
    /// Device time − true time when `since`, in milliseconds.
    pub offset_ms: i64,
    /// Drift in parts per million (positive: the clock runs fast).
    pub drift_ppm: f64,
    /// When `offset_ms` was true.
    pub since: Instant,
}

impl DeviceClock {
    /// A clock showing the true time, not drifting.
    pub fn correct() -> DeviceClock {
        DeviceClock {
            offset_ms: 0,
            drift_ppm: 0.0,
            since: Instant::now(),
        }
    }

    /// Device time − true time now, in milliseconds.
    pub fn offset_ms_now(&self) -> i64 {
        let drifted = self.since.elapsed().as_secs_f64() * 1000.0 * self.drift_ppm / 1e6;
        self.offset_ms + drifted as i64
    }

    /// The clock shows true time + `offset_ms` from now on (drift kept).
    pub fn set_offset(&mut self, offset_ms: i64) {
        self.offset_ms = offset_ms;
        self.since = Instant::now();
    }
}

/// The date a device's clock goes back to when it is reset (battery
/// change, factory reset): 2000-01-01T00:00:00.
pub const CLOCK_RESET_UNIX: i64 = 946_684_800;

/// A set of adapters by index (bit k = `hci{k}`; at most 32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adapters(u32);

impl Adapters {
    /// No adapter.
    pub const NONE: Adapters = Adapters(0);
    /// Is adapter `k` in the set?
    pub fn has(self, k: usize) -> bool {
        k < 32 && self.0 & (1 << k) != 0
    }
    /// Add adapter `k`.
    pub fn add(&mut self, k: usize) {
        if k < 32 {
            self.0 |= 1 << k;
        }
    }
    /// Remove adapter `k`.
    pub fn remove(&mut self, k: usize) {
        if k < 32 {
            self.0 &= !(1 << k);
        }
    }
    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The object path of adapter `k` (`/org/bluez/hci1`).
pub fn adapter_path(k: usize) -> String {
    format!("/org/bluez/hci{k}")
}

/// `path` (an object under `/org/bluez/hci0`) as seen under adapter `k`.
pub fn on_adapter(path: &str, k: usize) -> String {
    match path.strip_prefix("/org/bluez/hci0") {
        Some(rest) if k > 0 => format!("{}{rest}", adapter_path(k)),
        _ => path.to_string(),
    }
}

/// Connection and radio state.
#[derive(Debug)]
pub struct DevState {
    /// The adapters (bit k = `hci{k}`) that discovered it: its `Device1`
    /// object exists under each of them.
    pub exported: Adapters,
    /// The adapters under which its GATT objects exist.
    pub gatt_exported: Adapters,
    /// Connected (through adapter `link_on`).
    pub connected: bool,
    /// The adapter holding the link while `connected` (a peripheral takes
    /// one central at a time).
    pub link_on: usize,
    /// Services resolved.
    pub services_resolved: bool,
    /// The adapters it is paired (bonded) with: BlueZ keeps link keys per
    /// adapter, so a bond made through `hci0` is not one through `hci1`.
    pub paired: Adapters,
    /// Trusted.
    pub trusted: bool,
    /// RSSI, dBm.
    pub rssi: i16,
    /// RSSI set by a fault: no jitter until the next RSSI fault.
    pub rssi_pinned: bool,
    /// The next N connects drop before services resolve.
    pub drop_on_connect: u32,
    /// Connects refused until then.
    pub refuse_until: Option<Instant>,
    /// Battery, percent (fractional drain).
    pub battery: f64,
    /// Next N measurement notifications are malformed.
    pub malformed_next: u32,
    /// Next N measurements are out of range.
    pub out_of_range_next: u32,
    /// A measurement was asked for now.
    pub measure_now: bool,
    /// By this user (a shared device's slot), if asked for one.
    pub measure_user: Option<u8>,
    /// The user who consented on this link (User Control Point).
    pub uds_user: Option<u8>,
    /// Hands a user's queued measurements only to a link where that user
    /// consented (fault `consent-gated`), as some shared devices do.
    pub consent_gated: bool,
    /// A `Device1.Pair` is in progress.
    pub pairing: bool,
    /// The next pairing finds the device out of pairing mode (fault).
    pub pairing_mode_timeout: bool,
    /// The device forgot its bond (battery change, reset): BlueZ still
    /// says `Paired`, but the link's encryption fails (fault).
    pub bond_lost: Adapters,
    /// Its wall clock.
    pub clock: DeviceClock,
    /// How many times a client set its clock (Current Time written).
    pub clock_sets: u32,
}

impl DevState {
    /// Is the link up through adapter `k`?
    pub fn linked_on(&self, k: usize) -> bool {
        self.connected && self.link_on == k
    }
    /// Is the link up and encrypted with a bond both sides still hold?
    pub fn bonded_link(&self) -> bool {
        self.connected && self.paired.has(self.link_on) && !self.bond_lost.has(self.link_on)
    }
}

/// Model state (values waiting for delivery, stored records).
#[derive(Debug)]
pub struct ModelState {
    /// The seeded patient.
    pub phys: Physiology,
    /// Indicated measurements waiting for a subscriber (cuff, thermometer,
    /// scale, spot-check), each with its clock's offset (s) when taken.
    pub pending: VecDeque<(Measurement, i64)>,
    /// Stored glucose records, each with its clock's offset (s) when taken.
    pub glucose: Vec<(Measurement, i64)>,
    /// Spot-checks an oximeter took while no client listened, each with
    /// its clock's offset (s): fetched and deleted through RACP.
    pub spot_checks: Vec<(Measurement, i64)>,
    /// Next glucose sequence number.
    pub next_seq: u16,
    /// A shared device's user slots (User Data Service): index → the slot.
    /// The first is the seeded patient's (`phys.user`).
    pub users: std::collections::BTreeMap<u8, UserSlot>,
}

/// One user slot of a shared device.
#[derive(Debug)]
pub struct UserSlot {
    /// The consent code that lets a collector act for this user (0–9999).
    pub consent: u16,
    /// This user's body; `None` for the slot of the device's own patient
    /// ([`ModelState::phys`]).
    pub phys: Option<Physiology>,
}

/// A simulated device.
#[derive(Debug)]
pub struct Device {
    /// Public facts.
    pub info: DeviceInfo,
    /// Global index (seed stream, stagger).
    pub index: usize,
    /// State.
    pub st: Mutex<DevState>,
    /// GATT services.
    pub services: Vec<Service>,
    /// Model state.
    pub model: Mutex<ModelState>,
    /// Wakes the device's task (subscription, measure-now).
    pub wake: tokio::sync::Notify,
    /// Serialises connect/disconnect/pair.
    pub op: tokio::sync::Mutex<()>,
    /// Serialises what it puts on the air: one radio sends one value at a
    /// time, so the truth's order is the order clients receive.
    pub air: tokio::sync::Mutex<()>,
    /// `Device1.CancelPairing` wakes the pairing in progress.
    pub cancel_pairing: tokio::sync::Notify,
}

impl Device {
    /// Find a characteristic by 16-bit UUID.
    pub fn char(&self, uuid16: u16) -> Option<&std::sync::Arc<Char>> {
        self.services
            .iter()
            .flat_map(|s| s.chars.iter())
            .find(|c| c.uuid16 == uuid16)
    }

    /// Build a device with its GATT layout.
    pub fn new(kind: DeviceKind, kind_index: usize, index: usize, seed: u64) -> Device {
        let address = format!(
            "F0:4A:1A:{:02X}:{:02X}:{:02X}",
            kind.code(),
            (kind_index >> 8) & 0xFF,
            kind_index & 0xFF
        );
        let path = format!("/org/bluez/hci0/dev_{}", address.replace(':', "_"));
        let serial = format!("SIM{:02}{:06}", kind.code(), kind_index);
        let info = DeviceInfo {
            name: format!("{}{}", kind.as_str(), kind_index),
            kind,
            local_name: format!("HaiLan {} {:04}", kind.model_number(), kind_index),
            address,
            path: path.clone(),
            serial: serial.clone(),
            pairing: crate::pairing::Pairing::default_for(kind, seed, index),
        };
        let mut phys = Physiology::new(seed, index as u64);
        let battery = 60.0 + (index % 5) as f64 * 10.0;
        let secure = kind.requires_pairing();

        // GATT layout: (service, [(char, flags, secure, initial value)])
        type CharDef = (u16, Vec<&'static str>, bool, Vec<u8>);
        let mut layout: Vec<(u16, Vec<CharDef>)> = Vec::new();
        let pad = kind.pads_device_information();
        let r = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            if pad && b.len() < 20 {
                b.resize(20, 0);
            }
            b
        };
        let sw = "1.4.2";
        layout.push((
            0x180A,
            vec![
                (0x2A29, vec!["read"], false, r("HaiLan Sim Devices")),
                (0x2A24, vec!["read"], false, r(kind.model_number())),
                (0x2A25, vec!["read"], false, r(&serial)),
                (0x2A26, vec!["read"], false, r(&format!("fw-{sw}"))),
                (0x2A27, vec!["read"], false, r("rev-B")),
                (0x2A28, vec!["read"], false, r(crate::VERSION)),
            ],
        ));
        layout.push((
            0x180F,
            vec![(0x2A19, vec!["read", "notify"], false, vec![battery as u8])],
        ));
        let profile: Vec<CharDef> = match kind {
            DeviceKind::Hr => vec![
                (0x2A37, vec!["notify"], false, vec![]),
                (0x2A38, vec!["read"], false, vec![0x01]), // chest
            ],
            DeviceKind::Bp => vec![
                (0x2A35, vec!["indicate"], secure, vec![]),
                (0x2A36, vec!["notify"], secure, vec![]),
                // features: body movement, cuff fit, irregular pulse detection
                (0x2A49, vec!["read"], false, vec![0x07, 0x00]),
            ],
            DeviceKind::Spo2 => vec![
                (0x2A5E, vec!["indicate"], false, vec![]),
                (0x2A5F, vec!["notify"], false, vec![]),
                // features: measurement storage for spot-check measurements (bit 2)
                (0x2A60, vec!["read"], false, vec![0x04, 0x00]),
                // RACP: stored spot-checks ("all records" only, PLXS §3.5)
                (0x2A52, vec!["write", "indicate"], false, vec![]),
            ],
            DeviceKind::Temp => vec![
                (0x2A1C, vec!["indicate"], false, vec![]),
                (0x2A1D, vec!["read"], false, vec![0x02]), // body (general)
            ],
            DeviceKind::Glucose => vec![
                (0x2A18, vec!["notify"], secure, vec![]),
                (0x2A51, vec!["read"], false, vec![0x00, 0x00]),
                (0x2A52, vec!["write", "indicate"], secure, vec![]),
            ],
            DeviceKind::Scale => vec![
                (0x2A9D, vec!["indicate"], false, vec![]),
                // features: time stamp, multiple users, weight resolution 0.005 kg
                (0x2A9E, vec!["read"], false, vec![0x0B, 0x00, 0x00, 0x00]),
            ],
            DeviceKind::Bodycomp => vec![
                (0x2A9C, vec!["indicate"], false, vec![]),
                // Body Composition Feature: every optional field (bits 0–10),
                // mass resolution 0.005 kg (7 << 11), height 0.001 m (3 << 15)
                (0x2A9B, vec!["read"], false, vec![0xFF, 0xBF, 0x01, 0x00]),
            ],
        };
        layout.push((kind.service_uuid16(), profile));
        if kind.has_users() {
            // User Data Service: user slots behind consent codes.
            layout.push((
                0x181C,
                vec![
                    (0x2A99, vec!["read", "notify"], false, vec![0, 0, 0, 0]),
                    (0x2A9A, vec!["read"], false, vec![0xFF]),
                    (0x2A9F, vec!["write", "indicate"], false, vec![]),
                ],
            ));
        }
        if kind.stamps_time() {
            // Current Time Service: readable, settable, notified on change.
            layout.push((
                0x1805,
                vec![(0x2A2B, vec!["read", "write", "notify"], false, vec![])],
            ));
        }

        let mut handle: u16 = 0x000A;
        let services = layout
            .into_iter()
            .map(|(suuid, chars)| {
                let spath = format!("{path}/service{handle:04x}");
                handle += 1;
                let chars = chars
                    .into_iter()
                    .map(|(cuuid, flags, secure, value)| {
                        let cpath = format!("{spath}/char{handle:04x}");
                        handle += 2; // declaration + value
                        let cccd_path = if flags.contains(&"notify") || flags.contains(&"indicate")
                        {
                            let p = format!("{cpath}/desc{handle:04x}");
                            handle += 1;
                            Some(p)
                        } else {
                            None
                        };
                        std::sync::Arc::new(Char {
                            uuid16: cuuid,
                            path: cpath,
                            service_path: spath.clone(),
                            flags,
                            secure,
                            value: Mutex::new(value),
                            sessions: Mutex::new(BTreeSet::new()),
                            cccd_path,
                        })
                    })
                    .collect();
                Service {
                    uuid16: suuid,
                    path: spath,
                    chars,
                }
            })
            .collect();

        let mut glucose = Vec::new();
        let mut next_seq = 1u16;
        if kind == DeviceKind::Glucose {
            // Records already on the meter: one every 6 hours for the last days.
            let now = crate::model::unix_now();
            let n = 8;
            for i in 0..n {
                let t = crate::model::DateTime::from_unix(now - (n - i) * 6 * 3600);
                glucose.push((phys.glucose(next_seq, t), 0));
                next_seq += 1;
            }
        }
        let mut users = std::collections::BTreeMap::new();
        if kind.has_users() {
            // The seeded patient's slot, with a consent code from the seed.
            let consent = ((seed.wrapping_mul(31) + index as u64 * 97) % 9000 + 1000) as u16;
            users.insert(
                phys.user,
                UserSlot {
                    consent,
                    phys: None,
                },
            );
        }
        Device {
            info,
            index,
            st: Mutex::new(DevState {
                exported: Adapters::NONE,
                gatt_exported: Adapters::NONE,
                connected: false,
                link_on: 0,
                services_resolved: false,
                paired: Adapters::NONE,
                trusted: false,
                rssi: -50 - (index % 40) as i16,
                rssi_pinned: false,
                drop_on_connect: 0,
                refuse_until: None,
                battery,
                malformed_next: 0,
                out_of_range_next: 0,
                measure_now: false,
                measure_user: None,
                uds_user: None,
                consent_gated: false,
                pairing: false,
                pairing_mode_timeout: false,
                bond_lost: Adapters::NONE,
                clock: DeviceClock::correct(),
                clock_sets: 0,
            }),
            services,
            model: Mutex::new(ModelState {
                phys,
                pending: VecDeque::new(),
                glucose,
                spot_checks: Vec::new(),
                users,
                next_seq,
            }),
            wake: tokio::sync::Notify::new(),
            op: tokio::sync::Mutex::new(()),
            air: tokio::sync::Mutex::new(()),
            cancel_pairing: tokio::sync::Notify::new(),
        }
    }
}

/// Full 128-bit UUID string of a 16-bit SIG UUID.
pub fn uuid128(uuid16: u16) -> String {
    format!("0000{uuid16:04x}-0000-1000-8000-00805f9b34fb")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(d: &Device) -> Vec<u64> {
        d.model
            .lock()
            .map(|m| m.glucose.iter().flat_map(|(g, _)| g.slots()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn stored_records_follow_the_seed() {
        let a = Device::new(DeviceKind::Glucose, 0, 3, 11);
        let b = Device::new(DeviceKind::Glucose, 0, 3, 11);
        let c = Device::new(DeviceKind::Glucose, 0, 3, 12);
        assert_eq!(values(&a).len(), 8);
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&c));
    }

    /// Each simulated device is the kind proto (and so the gateway) takes it
    /// for: advertised service → kind, GATT table satisfies the kind.
    #[test]
    fn devices_satisfy_protos_device_kinds() {
        use hailan_proto::gatt::DeviceKind as P;
        for (i, kind) in DeviceKind::ALL.into_iter().enumerate() {
            let d = Device::new(kind, 0, i, 1);
            let want = match kind {
                DeviceKind::Hr => P::HeartRateMonitor,
                DeviceKind::Bp => P::BloodPressureMonitor,
                DeviceKind::Spo2 => P::PulseOximeter,
                DeviceKind::Temp => P::Thermometer,
                DeviceKind::Glucose => P::GlucoseMeter,
                DeviceKind::Scale => P::WeightScale,
                DeviceKind::Bodycomp => P::BodyCompositionScale,
            };
            assert_eq!(P::from_service(kind.service_uuid16()), Some(want));
            let chars: Vec<u16> = d
                .services
                .iter()
                .flat_map(|s| s.chars.iter().map(|c| c.uuid16))
                .collect();
            assert!(want.is_satisfied_by(&chars), "{kind:?}: {chars:04x?}");
            for u in want.characteristics() {
                let Some(c) = d.char(u.characteristic.uuid16()) else {
                    assert!(!u.required);
                    continue;
                };
                let flag = match u.delivery {
                    hailan_proto::gatt::Delivery::Notify => "notify",
                    hailan_proto::gatt::Delivery::Indicate => "indicate",
                    hailan_proto::gatt::Delivery::Read => "read",
                    hailan_proto::gatt::Delivery::WriteIndicate => "write",
                };
                assert!(c.has(flag), "{kind:?} {:04x} lacks {flag}", c.uuid16);
            }
        }
    }

    #[test]
    fn gatt_paths_are_bluez_shaped() {
        let d = Device::new(DeviceKind::Bp, 1, 0, 1);
        assert_eq!(d.info.path, "/org/bluez/hci0/dev_F0_4A_1A_02_00_01");
        let c = d.char(0x2A35).expect("bp measurement");
        assert!(c.path.starts_with(&format!("{}/service", d.info.path)));
        let tail = c.path.rsplit('/').next().unwrap_or_default();
        assert!(tail.starts_with("char") && tail.len() == 8, "{tail}");
        assert!(c.cccd_path.as_deref().is_some_and(|p| p.contains("/desc")));
        assert!(c.secure && c.indicates());
    }
}
