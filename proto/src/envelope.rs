//! The versioned MQTT envelope of DESIGN §4: what a gateway publishes on
//! `hailan/v1/{gateway_id}/up`. One envelope carries a device registration,
//! a batch of readings of one device, or a device state.
//!
//! Encoding: CBOR (RFC 8949) through serde, maps with text keys; the bytes are
//! specified in `proto/WIRE.md`. [`encode`] and [`decode`] are the one encoder
//! and the one decoder; [`decode`] also enforces the limits below, so every
//! envelope it returns is structurally sound (ids well formed, proof sizes
//! right, windows consecutive) and a caller only has to judge its meaning.

use crate::columns::{self, Field};
use crate::header::{ReadingHeader, WindowHeader};
use serde::{Deserialize, Serialize};

/// The envelope version this crate writes and reads.
pub const WIRE_VERSION: u8 = 1;
/// Largest envelope accepted, in bytes; larger input is refused before decoding.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Longest gateway, device or key id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most readings one proven group (a window) may hold.
pub const MAX_GROUP_READINGS: usize = 64;
/// Most groups in one reading batch.
pub const MAX_GROUPS: usize = 256;
/// Largest ciphertext of one sealed value, in bytes.
pub const MAX_CIPHERTEXT: usize = 4096;
/// Size of a compressed Groth16 (BN254) proof.
pub const PROOF_LEN: usize = 128;
/// Size of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// One message from a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire version, [`WIRE_VERSION`].
    pub v: u8,
    /// The publishing gateway; must equal the `{gateway_id}` of the topic.
    pub gateway_id: String,
    /// When the gateway built this envelope (ms since the Unix epoch, UTC).
    pub sent_at_ms: i64,
    /// What the envelope carries: a registration, a reading batch or a device state.
    pub body: Body,
}

/// What an envelope carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A device paired on the gateway (`registration`, WIRE.md §2.2).
    Registration(Box<Registration>),
    /// Sealed readings of one device, in proof groups (`readings`, WIRE.md §2.3).
    Readings(ReadingBatch),
    /// A device's battery, signal and link state (`device_state`, WIRE.md §2.4).
    DeviceState(DeviceState),
}

/// A device paired on a gateway: pins its device commitment `D` at ingest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The device's id, unique across all gateways (an identifier, see [`is_valid_id`]).
    pub device_id: String,
    /// Device type: the name of its primary data type (`BLOOD_PRESSURE` …).
    pub device_type: String,
    /// Data types the device produces.
    pub data_types: Vec<String>,
    /// Bluetooth address, `AA:BB:CC:DD:EE:FF`.
    pub bluetooth_address: String,
    /// The device's name, from GATT Device Information or its advertisement; at most 100
    /// characters.
    #[serde(default)]
    pub name: Option<String>,
    /// Manufacturer Name String (GATT Device Information); at most 100 characters.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Model Number String (GATT Device Information); at most 100 characters.
    #[serde(default)]
    pub model: Option<String>,
    /// Serial Number String (GATT Device Information); at most 100 characters.
    #[serde(default)]
    pub serial: Option<String>,
    /// Firmware Revision String (GATT Device Information); at most 50 characters.
    #[serde(default)]
    pub firmware_version: Option<String>,
    /// Hardware Revision String (GATT Device Information); at most 50 characters.
    #[serde(default)]
    pub hardware_version: Option<String>,
    /// `D = Poseidon(tag_dev, s)`, 32 bytes (DESIGN §5.1).
    #[serde(with = "serde_bytes")]
    pub device_commitment: [u8; 32],
    /// When the owner paired the device (ms since the Unix epoch, UTC).
    pub paired_at_ms: i64,
    /// Whose readings these are, by DID, when not the gateway's owner's: one
    /// user slot of a shared device (User Data Service) registers as a device
    /// of its own for the patient the owner mapped it to. Ingest accepts it
    /// only from a gateway enrolled for that patient. `None`: the owner.
    #[serde(default)]
    pub patient: Option<String>,
    /// The device id of the shared device this registration is a user slot
    /// of (same hardware, same Bluetooth address): not a re-pairing of it.
    /// `None`: a device of its own.
    #[serde(default)]
    pub user_slot_of: Option<String>,
}

/// Readings of one device, in proven groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadingBatch {
    /// The device all of these readings come from.
    pub device_id: String,
    /// 1..=256 groups, each covered by one proof (or by none, with a reason).
    pub groups: Vec<ProvenGroup>,
}

/// What one proof covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// One reading, all of its slots.
    Reading,
    /// W consecutive readings of one data type, one slot each.
    Window,
}

/// Readings covered by one proof (or by none, with a reason).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProvenGroup {
    /// Whether the proof covers one reading or a window of readings.
    pub kind: ProofKind,
    /// Id of the verifying key the proof was made for (SHA-256 of the key).
    #[serde(with = "serde_bytes")]
    pub key_id: [u8; 32],
    /// The reading (or window) commitment `C`, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub commitment: [u8; 32],
    /// Compressed Groth16 proof, 128 bytes; `null` when the gateway could not prove.
    #[serde(default, with = "serde_bytes")]
    pub proof: Option<Vec<u8>>,
    /// Why `proof` is null.
    #[serde(default)]
    pub no_proof_reason: Option<String>,
    /// One reading for `kind = reading`; 1..=64 consecutive ones for a window.
    pub readings: Vec<Reading>,
}

/// One sealed reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Per-device sequence number, strictly increasing, survives restarts.
    pub seq: u64,
    /// The data-type name (`HEART_RATE` …); an unknown name is valid and is stored
    /// unverified.
    pub data_type: String,
    /// When the device measured it (ms since the Unix epoch, UTC).
    pub recorded_at_ms: i64,
    /// The value, sealed with the reading header as associated data.
    pub sealed: Sealed,
}

/// An AES-256-GCM sealed value (see [`crate::seal`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Id of the owner's data key that sealed it.
    pub kid: String,
    /// The random 96-bit AES-GCM nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The state of a device as its gateway sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device this state is about.
    pub device_id: String,
    /// Battery level in percent, 0–100 (GATT Battery Level); `None` when unknown.
    #[serde(default)]
    pub battery_level: Option<u8>,
    /// Received signal strength in dBm; `None` when unknown.
    #[serde(default)]
    pub rssi: Option<i16>,
    /// Whether the gateway holds a connection to the device.
    pub connected: bool,
    /// The device's firmware revision, at most 50 characters; `None` when unknown.
    #[serde(default)]
    pub firmware_version: Option<String>,
    /// When the gateway saw this state (ms since the Unix epoch, UTC); ingest keeps the
    /// latest per device.
    pub observed_at_ms: i64,
    /// The device refused its bond and gets no link until the owner pairs
    /// it again (`hailan-gateway pair`). `None`: the gateway did not say
    /// (envelopes written before this field existed decode as `None`).
    #[serde(default)]
    pub needs_repair: Option<bool>,
}

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than [`MAX_ENVELOPE_BYTES`]; holds its length in bytes.
    #[error("envelope is {0} bytes, more than the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The envelope's `v` is not [`WIRE_VERSION`]; holds the version read.
    #[error("envelope version {0} is not supported (this build reads version {WIRE_VERSION})")]
    UnsupportedVersion(u64),
    /// The bytes are not CBOR of the envelope's shape; holds the decoder's error, prefixed
    /// with the field's path when known.
    #[error("not a valid CBOR envelope: {0}")]
    Malformed(String),
    /// Well-formed CBOR that breaks a rule of WIRE.md §6 (ids, counts, sizes, windows,
    /// column limits); holds the reason.
    #[error("invalid envelope: {0}")]
    Invalid(String),
}

/// Encode an envelope as CBOR.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail and every field type is serialisable.
    ciborium::into_writer(envelope, &mut out).expect("CBOR encoding into a Vec is infallible");
    out
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

/// Decode and validate an envelope. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let envelope: Envelope = match ciborium::from_reader(bytes) {
        Ok(e) => e,
        Err(err) => {
            // A future version may change the body's shape: say so rather
            // than report a confusing structural error.
            if let Ok(probe) = ciborium::from_reader::<VersionProbe, _>(bytes)
                && probe.v != u64::from(WIRE_VERSION)
            {
                return Err(DecodeError::UnsupportedVersion(probe.v));
            }
            return Err(DecodeError::Malformed(with_field_path(
                bytes,
                err.to_string(),
            )));
        }
    };
    if envelope.v != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(u64::from(envelope.v)));
    }
    envelope.validate().map_err(DecodeError::Invalid)?;
    Ok(envelope)
}

/// An envelope decoded with the path of each field tracked, so that a
/// refusal names the field it is about (`body.device_state.rssi: …`).
struct PathTracked;

impl<'de> Deserialize<'de> for PathTracked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut track = serde_path_to_error::Track::new();
        match Envelope::deserialize(serde_path_to_error::Deserializer::new(d, &mut track)) {
            Ok(_) => Ok(PathTracked),
            Err(e) => match track.path().to_string() {
                root if root == "." => Err(serde::de::Error::custom(e)),
                path => Err(serde::de::Error::custom(format!("{path}: {e}"))),
            },
        }
    }
}

/// `error`, prefixed with the path of the field it is about when one can be
/// found. Decoding again with paths tracked costs only on refusal: the
/// accepted path stays untracked.
fn with_field_path(bytes: &[u8], error: String) -> String {
    match ciborium::from_reader::<PathTracked, _>(bytes) {
        Err(ciborium::de::Error::Semantic(_, tracked)) => tracked,
        _ => error,
    }
}

/// Whether `id` is a well-formed gateway, device or key id: 1..=64 bytes of
/// ASCII letters, digits, `-`, `_`, `.` or `:` (never an MQTT wildcard or `/`).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?} must be 1..={MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . :"
        ))
    }
}

fn check_optional(field: &Field, s: &Option<String>) -> Result<(), String> {
    s.as_deref().map_or(Ok(()), |s| field.check_text(s))
}

/// A data-type name at `path`: it must fit the data-type columns
/// ([`columns::DATA_TYPE`]) wherever it appears.
fn check_data_type(path: &str, name: &str) -> Result<(), String> {
    // Unknown names are allowed (stored in the DEFAULT partition) but must
    // look like a data-type name.
    let max = columns::DATA_TYPE.max_chars().unwrap_or(MAX_ID_LEN);
    if !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(format!(
            "{path} {name:?} must be 1..={max} characters of A-Z 0-9 _"
        ))
    }
}

impl Envelope {
    /// The structural rules of WIRE.md §"Validation".
    pub fn validate(&self) -> Result<(), String> {
        check_id("gateway_id", &self.gateway_id)?;
        columns::SENT_AT.check_time(self.sent_at_ms)?;
        match &self.body {
            Body::Registration(r) => {
                check_id("device_id", &r.device_id)?;
                check_data_type(columns::DEVICE_TYPE.path, &r.device_type)?;
                columns::DEVICE_TYPE.check_text(&r.device_type)?;
                if r.data_types.is_empty() || r.data_types.len() > 8 {
                    return Err("registration must list 1..=8 data types".into());
                }
                for t in &r.data_types {
                    check_data_type(columns::DATA_TYPES.path, t)?;
                }
                columns::BLUETOOTH_ADDRESS.check_text(&r.bluetooth_address)?;
                for (field, s) in [
                    (&columns::NAME, &r.name),
                    (&columns::MANUFACTURER, &r.manufacturer),
                    (&columns::MODEL, &r.model),
                    (&columns::SERIAL, &r.serial),
                    (&columns::FIRMWARE_VERSION, &r.firmware_version),
                    (&columns::HARDWARE_VERSION, &r.hardware_version),
                ] {
                    check_optional(field, s)?;
                }
                if let Some(of) = &r.user_slot_of {
                    check_id(columns::USER_SLOT_OF.path, of)?;
                }
                if let Some(did) = &r.patient {
                    columns::PATIENT.check_text(did)?;
                    if did.is_empty() {
                        return Err(format!("{}: empty", columns::PATIENT.path));
                    }
                }
                columns::PAIRED_AT.check_time(r.paired_at_ms)
            }
            Body::DeviceState(s) => {
                check_id("device_id", &s.device_id)?;
                if let Some(b) = s.battery_level
                    && b > 100
                {
                    return Err(format!(
                        "{} {b} is more than 100",
                        columns::BATTERY_LEVEL.path
                    ));
                }
                check_optional(&columns::FIRMWARE_VERSION, &s.firmware_version)?;
                columns::OBSERVED_AT.check_time(s.observed_at_ms)
            }
            Body::Readings(batch) => {
                check_id("device_id", &batch.device_id)?;
                if batch.groups.is_empty() || batch.groups.len() > MAX_GROUPS {
                    return Err(format!("a reading batch holds 1..={MAX_GROUPS} groups"));
                }
                for (i, g) in batch.groups.iter().enumerate() {
                    g.validate().map_err(|e| format!("group {i}: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

impl ProvenGroup {
    fn validate(&self) -> Result<(), String> {
        match (&self.proof, &self.no_proof_reason) {
            (Some(p), None) if p.len() == PROOF_LEN => {}
            (Some(p), None) => return Err(format!("proof is {} bytes, not {PROOF_LEN}", p.len())),
            (None, Some(reason)) if !reason.is_empty() && reason.len() <= 256 => {
                columns::NO_PROOF_REASON.check_text(reason)?;
            }
            (None, _) => return Err("no proof and no (1..=256-byte) reason".into()),
            (Some(_), Some(_)) => return Err("both a proof and a no_proof_reason".into()),
        }
        let n = self.readings.len();
        match self.kind {
            ProofKind::Reading if n != 1 => {
                return Err(format!("a reading proof covers exactly 1 reading, not {n}"));
            }
            ProofKind::Window if n == 0 || n > MAX_GROUP_READINGS => {
                return Err(format!(
                    "a window covers 1..={MAX_GROUP_READINGS} readings, not {n}"
                ));
            }
            _ => {}
        }
        let first = &self.readings[0];
        // The last seq of the group must fit the seq columns too.
        columns::SEQ.check_integer(i128::from(first.seq) + n as i128 - 1)?;
        for (i, r) in self.readings.iter().enumerate() {
            check_data_type(columns::DATA_TYPE.path, &r.data_type)?;
            check_id("kid", &r.sealed.kid)?;
            columns::RECORDED_AT
                .check_time(r.recorded_at_ms)
                .map_err(|e| format!("reading {i}: {e}"))?;
            if r.sealed.ciphertext.len() < 16 || r.sealed.ciphertext.len() > MAX_CIPHERTEXT {
                return Err(format!(
                    "reading {i}: ciphertext is {} bytes, not 16..={MAX_CIPHERTEXT}",
                    r.sealed.ciphertext.len()
                ));
            }
            if i > 0 {
                if r.data_type != first.data_type {
                    return Err("a window mixes data types".into());
                }
                if Some(r.seq) != first.seq.checked_add(i as u64) {
                    return Err("window sequence numbers are not consecutive".into());
                }
                let off = r.recorded_at_ms.checked_sub(first.recorded_at_ms);
                if !off.is_some_and(|o| (0..=i64::from(u32::MAX)).contains(&o)) {
                    return Err("window times go backwards or span more than 2^32 ms".into());
                }
            }
        }
        Ok(())
    }

    /// The canonical header of reading `index` of this group.
    pub fn reading_header<'a>(
        &'a self,
        gateway_id: &'a str,
        device_id: &'a str,
        index: usize,
    ) -> Option<ReadingHeader<'a>> {
        self.readings
            .get(index)
            .map(|r| r.header(gateway_id, device_id))
    }

    /// The window header of this group (for `kind = window`): the first
    /// reading's seq and time, and each reading's offset from that time.
    /// `None` if the group is empty or its times are out of order (which a
    /// decoded envelope never is).
    pub fn window_header<'a>(
        &'a self,
        gateway_id: &'a str,
        device_id: &'a str,
    ) -> Option<WindowHeader<'a>> {
        let first = self.readings.first()?;
        let offsets_ms = self
            .readings
            .iter()
            .map(|r| u32::try_from(r.recorded_at_ms.checked_sub(first.recorded_at_ms)?).ok())
            .collect::<Option<Vec<u32>>>()?;
        Some(WindowHeader {
            gateway_id,
            device_id,
            data_type: &first.data_type,
            first_seq: first.seq,
            start_ms: first.recorded_at_ms,
            offsets_ms,
        })
    }
}

impl Reading {
    /// This reading's canonical header, given who sent it.
    pub fn header<'a>(&'a self, gateway_id: &'a str, device_id: &'a str) -> ReadingHeader<'a> {
        ReadingHeader {
            gateway_id,
            device_id,
            data_type: &self.data_type,
            seq: self.seq,
            recorded_at_ms: self.recorded_at_ms,
        }
    }
}
