//! Turning one batch of MQTT messages into the rows of one transaction.
//!
//! Every message ends in exactly one of: rows (readings, proofs,
//! verifications, device state, a registration) or quarantine rows with a
//! reason — never nowhere. Proofs are verified here, in one batch on the
//! blocking pool; the database is only read (gateways and devices), so a
//! plan can be thrown away and made again if its transaction fails.

use crate::fair_share::{Allowance, ProofUsage};
use crate::quarantine::Reason;
use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hailan_proto::DataType;
use hailan_proto::envelope::{
    self, Body, DecodeError, Envelope, MAX_ENVELOPE_BYTES, ProofKind, ProvenGroup, Registration,
};
use hailan_proto::topic::{self, Topic};
use hailan_proto::zk::{GroupClaim, Reject, Verifier};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// One MQTT message as received.
#[derive(Debug, Clone)]
pub struct Message {
    /// The MQTT topic it arrived on (`hailan/v1/{gateway_id}/up` when well formed).
    pub topic: String,
    /// Shared, not copied: every quarantine row of the message points at it.
    pub payload: Bytes,
    /// Set when the message is a replay of a quarantine row: that row is
    /// deleted in the same transaction as the message's new outcome.
    pub from_quarantine: Option<Uuid>,
    /// Set when the consumer found the message over its gateway's message
    /// limit (`fair_share`): it is quarantined as `rate_limited` undecoded.
    pub rate_limited: Option<String>,
}

/// An enrolled gateway, as planning needs it (from `gateways`).
#[derive(Debug, Clone)]
pub struct GatewayRow {
    /// The user who owns the gateway (`gateways.owner_id`): devices it registers belong to them.
    pub owner_id: Uuid,
    /// Whether `gateways.revoked_at` is set: a revoked gateway's messages are
    /// quarantined as `unknown_gateway`.
    pub revoked: bool,
    /// The patients it may register devices for, by DID: its owner and those
    /// enrolled in `gateway_patients` (a shared device's user slots).
    pub patients: HashMap<String, Uuid>,
}

/// A registered device, as planning needs it (from `iot_devices`).
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Row id (`iot_devices.id`), what readings and proofs reference.
    pub id: Uuid,
    /// The owner (`iot_devices.user_id`), whose rows its readings become.
    pub user_id: Uuid,
    /// The gateway it is registered to (`iot_devices.gateway_id`); another
    /// gateway's messages about it are quarantined as `device_gateway_mismatch`.
    pub gateway_id: String,
    /// The device commitment D pinned at registration
    /// (`iot_devices.zk_device_commitment`), the public input every proof of the
    /// device is checked against.
    pub commitment: [u8; 32],
}

/// A device registration to insert or refresh.
#[derive(Debug, Clone)]
pub struct DeviceUpsert {
    /// True for a first registration (a row inserted under a fresh `id`, and an
    /// older device at the same Bluetooth address on the gateway gives the address
    /// up); false to refresh an existing row's descriptive columns.
    pub new: bool,
    /// The device's row id (`iot_devices.id`): fresh when `new`, else the stored one.
    pub id: Uuid,
    /// The owner (`iot_devices.user_id`): the gateway's owner for a new device.
    pub user_id: Uuid,
    /// The registering gateway (`iot_devices.gateway_id`).
    pub gateway_id: String,
    /// The registration as the gateway sent it (name, type, address, Device
    /// Information, data types, device commitment).
    pub registration: envelope::Registration,
}

/// A device state (battery, RSSI, link, firmware) to write onto a device's
/// `iot_devices` row; an older observation never overwrites a newer one.
#[derive(Debug, Clone)]
pub struct StateUpdate {
    /// The device's row id (`iot_devices.id`).
    pub device: Uuid,
    /// The state as the gateway sent it, with when it observed it.
    pub state: envelope::DeviceState,
}

/// One reading to insert into `health_data` (idempotent on the reading key
/// `(user_id, device_id, data_type, seq)`).
#[derive(Debug, Clone)]
pub struct ReadingRow {
    /// The device owner (`health_data.user_id`).
    pub user_id: Uuid,
    /// The device's row id (`health_data.device_id` → `iot_devices.id`).
    pub device: Uuid,
    /// Data type name (`health_data.data_type`, the partition column), e.g.
    /// `HEART_RATE`; an unknown name lands in the DEFAULT partition.
    pub data_type: String,
    /// The sealed value (`kid`, nonce, ciphertext) as JSON (`health_data.value`);
    /// never plaintext.
    pub value: serde_json::Value,
    /// UCUM unit of the data type's first slot (`health_data.unit`); `None` for a
    /// data type this build does not know.
    pub unit: Option<String>,
    /// When the device took the reading (`health_data.recorded_at`).
    pub recorded_at: DateTime<Utc>,
    /// Hex SHA-256 of the proof covering the reading (`health_data.zk_proof_hash`),
    /// shared by a window's readings; `None` when the gateway sent no proof.
    pub proof_hash: Option<String>,
    /// Whether its proof verified (`health_data.verified`; `verified_at` is set
    /// with it). False when there was no proof or its data type has no policy.
    pub verified: bool,
    /// The device's sequence number of the reading (`health_data.seq`).
    pub seq: i64,
    /// The gateway that sent it (`health_data.gateway_id`).
    pub gateway_id: String,
    /// The group's 32-byte reading commitment C (`health_data.reading_commitment`),
    /// which the API re-opens with the decrypted value.
    pub commitment: Vec<u8>,
    /// CIDv1 (raw, sha2-256) of the sealed value's ciphertext bytes
    /// (`hailan_proto::cid`), stored in `ipfs_data_cid`.
    pub data_cid: String,
}

/// One proof to store in `zk_proofs` (once per proof: a window's readings
/// share it), with its `zk_verifications` row.
#[derive(Debug, Clone)]
pub struct ProofRow {
    /// The device owner (`zk_proofs.user_id`).
    pub user_id: Uuid,
    /// Hex SHA-256 of the proof bytes (`zk_proofs.proof_hash`).
    pub proof_hash: String,
    /// Hex id of the verifying key the proof names (`zk_proofs.key_id`).
    pub key_id: String,
    /// `reading` or `window` (`zk_proofs.statement`).
    pub statement: &'static str,
    /// The device's row id (`zk_proofs.device_id`).
    pub device: Uuid,
    /// Seq of the first reading the proof covers (`zk_proofs.first_seq`).
    pub first_seq: i64,
    /// How many readings the proof covers (`zk_proofs.reading_count`): 1 for a
    /// reading proof, up to 16 for a window.
    pub reading_count: i32,
    /// The compressed Groth16 proof, 128 bytes (`zk_proofs.proof`).
    pub proof: Vec<u8>,
    /// The statement's public inputs as decimal field elements in circuit order
    /// (`zk_proofs.public_inputs`); empty when they could not be rebuilt.
    pub public_inputs: serde_json::Value,
    /// The verdict recorded in `zk_verifications.verified`: false when the proof
    /// was not checked (its data type has no bounds policy); a proof that fails
    /// is quarantined instead.
    pub verified: bool,
    /// Why it is not verified (`zk_verifications.reason`); `None` when verified.
    pub reason: Option<String>,
}

/// One row to insert into `rejected_readings`: the message's raw payload with
/// a reason. At most one per message (topic and payload).
#[derive(Debug, Clone)]
pub struct QuarantineRow {
    /// The MQTT topic the message came on (`rejected_readings.topic`).
    pub topic: String,
    /// The gateway its topic names, when it names one (`rejected_readings.gateway_id`).
    pub gateway_id: Option<String>,
    /// The device the message is about, when known (`rejected_readings.device_id`):
    /// what replay after a registration selects on.
    pub device_id: Option<String>,
    /// Data type of the first reading concerned, when known (`rejected_readings.data_type`).
    pub data_type: Option<String>,
    /// Seq of the first reading concerned, when known (`rejected_readings.seq`).
    pub seq: Option<i64>,
    /// Why it is held (`rejected_readings.reason`, by its code).
    pub reason: Reason,
    /// Human-readable detail (`rejected_readings.detail`), NULs replaced when written.
    pub detail: String,
    /// The raw MQTT payload (`rejected_readings.payload`), cut to
    /// [`UNKNOWN_SENDER_PAYLOAD`] bytes for a sender that is not an enrolled gateway.
    pub payload: Bytes,
}

impl QuarantineRow {
    /// A row holding `m` whole, with the gateway its topic names.
    pub fn of_message(m: &Message, reason: Reason, detail: String) -> QuarantineRow {
        let gateway_id = match topic::parse(&m.topic) {
            Some(Topic::Up { gateway_id }) => Some(gateway_id.to_owned()),
            _ => None,
        };
        QuarantineRow {
            topic: m.topic.clone(),
            gateway_id,
            device_id: None,
            data_type: None,
            seq: None,
            reason,
            detail,
            payload: m.payload.clone(),
        }
    }
}

/// Most payload bytes kept of a message from an account that is not an
/// enrolled gateway.
pub const UNKNOWN_SENDER_PAYLOAD: usize = 4096;

/// Most bytes of reasons one quarantine row's detail collects from the
/// groups and readings of its message; the rest are counted.
pub const DETAIL_CAP: usize = 4096;

/// One quarantine row per message (the first reason found names it; the
/// others join its detail, capped at [`DETAIL_CAP`]), so a message of many
/// failing groups costs one row and one copy of its payload, never one each.
fn one_row_per_message(rows: Vec<QuarantineRow>) -> Vec<QuarantineRow> {
    let mut out: Vec<QuarantineRow> = Vec::with_capacity(rows.len());
    let mut omitted: Vec<usize> = Vec::with_capacity(rows.len());
    // A message's rows share its payload buffer: its address names the message.
    let mut index: HashMap<(usize, usize), usize> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = (row.payload.as_ptr() as usize, row.payload.len());
        match index.get(&key).copied() {
            Some(i) if out[i].detail.len() + row.detail.len() + 2 <= DETAIL_CAP => {
                out[i].detail.push_str("; ");
                out[i].detail.push_str(&row.detail);
            }
            Some(i) => omitted[i] += 1,
            None => {
                index.insert(key, out.len());
                out.push(row);
                omitted.push(0);
            }
        }
    }
    for (row, n) in out.iter_mut().zip(omitted) {
        if n > 0 {
            row.detail.push_str(&format!("; and {n} more"));
        }
    }
    out
}

/// Everything one batch writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Registrations to insert or refresh in `iot_devices`, in arrival order.
    pub devices: Vec<DeviceUpsert>,
    /// Device states to write onto `iot_devices`.
    pub states: Vec<StateUpdate>,
    /// Readings to insert into `health_data`, verified or not.
    pub readings: Vec<ReadingRow>,
    /// Proofs to insert into `zk_proofs`, each with a `zk_verifications` row.
    pub proofs: Vec<ProofRow>,
    /// Rows for `rejected_readings`, one per message at most.
    pub quarantine: Vec<QuarantineRow>,
    /// Quarantine rows this batch replayed (deleted on commit).
    pub replayed: Vec<Uuid>,
    /// Device ids registered by this batch (their quarantined readings are replayed next).
    pub registered: Vec<String>,
    /// Proven groups checked by the verifier.
    pub groups_verified: usize,
    /// Messages the plan covers.
    pub message_count: usize,
    /// Verification work per gateway (charged to its fair share after the commit).
    pub proof_usage: BTreeMap<String, ProofUsage>,
    /// Gateways of messages quarantined for their proof budget, one entry per message.
    pub proof_limited: Vec<String>,
    /// Pairing checks spent on the shared batch.
    pub pairing_checks_shared: usize,
    /// Pairing checks spent on suspect gateways' own batches.
    pub pairing_checks_isolated: usize,
}

/// Lower-case hex (faster-hex: the `hex` crate's per-character iterator was
/// a twentieth of ingest's own CPU, on every nonce, ciphertext and hash).
fn hex(bytes: &[u8]) -> String {
    faster_hex::hex_string(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A message that decoded: its index in the batch, its gateway (from the
/// topic, equal to the envelope's) and its envelope.
struct Decoded {
    index: usize,
    gateway: String,
    envelope: Envelope,
}

impl Decoded {
    /// The device the envelope is about.
    fn device_id(&self) -> &str {
        match &self.envelope.body {
            Body::Registration(r) => &r.device_id,
            Body::Readings(b) => &b.device_id,
            Body::DeviceState(s) => &s.device_id,
        }
    }
}

/// Owner, device, verdict and public inputs (decimal) of one proven group.
type Outcome = (Uuid, Uuid, Result<(), Reject>, Option<Vec<String>>);

/// A group waiting for verification.
struct Pending {
    msg: usize,
    group: usize,
    user_id: Uuid,
    device: Uuid,
    commitment: [u8; 32],
}

impl Plan {
    /// An empty plan for `messages` (their count, and the quarantine rows
    /// they replay).
    fn for_messages(messages: &[Message]) -> Plan {
        Plan {
            replayed: messages.iter().filter_map(|m| m.from_quarantine).collect(),
            message_count: messages.len(),
            ..Plan::default()
        }
    }

    /// Add what a later, separately written part of the same batch wrote.
    pub fn absorb(&mut self, other: Plan) {
        self.message_count += other.message_count;
        self.readings.extend(other.readings);
        self.registered.extend(other.registered);
        self.quarantine.extend(other.quarantine);
        self.replayed.extend(other.replayed);
        self.groups_verified += other.groups_verified;
        self.proof_limited.extend(other.proof_limited);
        for (g, u) in other.proof_usage {
            let mine = self.proof_usage.entry(g).or_default();
            mine.checked += u.checked;
            mine.bad += u.bad;
        }
    }

    fn quarantine(
        &mut self,
        msg: &Message,
        gateway: Option<&str>,
        reason: Reason,
        detail: impl Into<String>,
    ) {
        self.quarantine.push(QuarantineRow {
            topic: msg.topic.clone(),
            gateway_id: gateway.map(str::to_owned),
            device_id: None,
            data_type: None,
            seq: None,
            reason,
            detail: detail.into(),
            payload: msg.payload.clone(),
        });
    }

    /// [`Self::quarantine`] for a registration: the row names its device.
    fn quarantine_registration(
        &mut self,
        msg: &Message,
        gateway: &str,
        registration: &Registration,
        reason: Reason,
        detail: String,
    ) {
        self.quarantine(msg, Some(gateway), reason, detail);
        if let Some(row) = self.quarantine.last_mut() {
            row.device_id = Some(registration.device_id.clone());
        }
    }
}

/// What planning needs to know from the database: the gateways and devices
/// a batch names (by id). `lookup` reads it; a test builds it in memory
/// and plans against it with [`plan_against`].
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Gateways by id (their MQTT user name).
    pub gateways: HashMap<String, GatewayRow>,
    /// Devices by their own id (`iot_devices.device_id`).
    pub devices: HashMap<String, DeviceRow>,
}

/// Stage 2: load the gateways and devices the decoded messages name — the
/// only database read of planning.
async fn lookup(pool: &PgPool, decoded: &[Decoded]) -> Result<Known> {
    let gw_ids: Vec<String> = decoded
        .iter()
        .map(|d| d.gateway.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let dev_ids: Vec<String> = decoded
        .iter()
        .map(|d| d.device_id().to_owned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut gateways = sqlx::query_as::<_, (String, Uuid, bool)>(
        "SELECT id, owner_id, revoked_at IS NOT NULL FROM gateways WHERE id = ANY($1)",
    )
    .bind(&gw_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, owner_id, revoked)| {
        let patients = HashMap::new();
        (
            id,
            GatewayRow {
                owner_id,
                revoked,
                patients,
            },
        )
    })
    .collect::<HashMap<String, GatewayRow>>();
    let patients = sqlx::query_as::<_, (String, String, Uuid)>(
        "SELECT g.id, u.did, u.id FROM gateways g JOIN users u ON u.id = g.owner_id WHERE g.id = ANY($1)
         UNION ALL
         SELECT p.gateway_id, u.did, u.id FROM gateway_patients p JOIN users u ON u.id = p.user_id
         WHERE p.gateway_id = ANY($1)",
    )
    .bind(&gw_ids)
    .fetch_all(pool)
    .await?;
    for (gateway, did, user) in patients {
        if let Some(g) = gateways.get_mut(&gateway) {
            g.patients.insert(did, user);
        }
    }
    let devices = sqlx::query_as::<_, (Uuid, Uuid, String, String, Vec<u8>)>(
        "SELECT id, user_id, device_id, gateway_id, zk_device_commitment FROM iot_devices WHERE device_id = ANY($1)",
    )
    .bind(&dev_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .filter_map(|(id, user_id, device_id, gateway_id, c)| {
        let commitment: [u8; 32] = c.try_into().ok()?;
        Some((device_id, DeviceRow { id, user_id, gateway_id, commitment }))
    })
    .collect();
    Ok(Known { gateways, devices })
}

/// Build the plan for `messages`, without fair-share limits (replays).
pub async fn plan(pool: &PgPool, verifier: Arc<Verifier>, messages: &[Message]) -> Result<Plan> {
    plan_with(pool, verifier, messages, &Allowance::unlimited()).await
}

/// Build the plan for `messages` within the gateways' proof `allowance`:
/// decode, look the gateways and devices up, then `plan_decoded`.
pub async fn plan_with(
    pool: &PgPool,
    verifier: Arc<Verifier>,
    messages: &[Message],
    allowance: &Allowance,
) -> Result<Plan> {
    let mut plan = Plan::for_messages(messages);
    let decoded = decode(&mut plan, messages);
    let known = lookup(pool, &decoded).await?;
    plan_decoded(plan, known, verifier, messages, decoded, allowance).await
}

/// [`plan_with`] against gateways and devices given in memory instead of
/// read from the database: the same stages, for tests and tools.
pub async fn plan_against(
    known: Known,
    verifier: Arc<Verifier>,
    messages: &[Message],
    allowance: &Allowance,
) -> Result<Plan> {
    let mut plan = Plan::for_messages(messages);
    let decoded = decode(&mut plan, messages);
    plan_decoded(plan, known, verifier, messages, decoded, allowance).await
}

/// Stages 3–6, once the batch's gateways and devices are known.
async fn plan_decoded(
    mut plan: Plan,
    mut known: Known,
    verifier: Arc<Verifier>,
    messages: &[Message],
    decoded: Vec<Decoded>,
    allowance: &Allowance,
) -> Result<Plan> {
    let accepted = register(&mut plan, messages, decoded, &mut known);
    let admitted = admit(&mut plan, messages, accepted, &known, allowance);
    let keep = Arc::new(admitted.keep);
    let verdicts = verify(verifier, Arc::clone(&keep), &admitted.pending, allowance).await?;
    plan.groups_verified = admitted.pending.len();
    write_rows(
        &mut plan,
        messages,
        &keep,
        &admitted.pending,
        verdicts,
        admitted.unverifiable,
    );
    plan.quarantine = one_row_per_message(std::mem::take(&mut plan.quarantine));
    Ok(plan)
}

/// Stage 1: topic, rate limit, size, decoding and gateway consistency; what
/// fails is quarantined with its reason.
fn decode(plan: &mut Plan, messages: &[Message]) -> Vec<Decoded> {
    let mut decoded = Vec::with_capacity(messages.len());
    for (index, msg) in messages.iter().enumerate() {
        let Some(Topic::Up { gateway_id }) = topic::parse(&msg.topic) else {
            plan.quarantine(
                msg,
                None,
                Reason::BadTopic,
                format!("{:?} is not hailan/v1/{{gateway}}/up", msg.topic),
            );
            continue;
        };
        if let Some(detail) = &msg.rate_limited {
            plan.quarantine(msg, Some(gateway_id), Reason::RateLimited, detail.clone());
            continue;
        }
        if msg.payload.len() > MAX_ENVELOPE_BYTES {
            plan.quarantine(
                msg,
                Some(gateway_id),
                Reason::Oversize,
                format!("{} bytes, limit {MAX_ENVELOPE_BYTES}", msg.payload.len()),
            );
            continue;
        }
        let envelope = match envelope::decode(&msg.payload) {
            Ok(e) => e,
            Err(e @ DecodeError::UnsupportedVersion(_)) => {
                plan.quarantine(
                    msg,
                    Some(gateway_id),
                    Reason::UnsupportedVersion,
                    e.to_string(),
                );
                continue;
            }
            Err(e) => {
                plan.quarantine(msg, Some(gateway_id), Reason::Undecodable, e.to_string());
                continue;
            }
        };
        if envelope.gateway_id != gateway_id {
            plan.quarantine(
                msg,
                Some(gateway_id),
                Reason::GatewayMismatch,
                format!(
                    "published on {gateway_id}'s topic by envelope of {}",
                    envelope.gateway_id
                ),
            );
            continue;
        }
        decoded.push(Decoded {
            index,
            gateway: gateway_id.to_owned(),
            envelope,
        });
    }

    decoded
}

/// Stage 3: gateways must be enrolled and not revoked; registrations are
/// taken first (in arrival order), so a batch holding a device's
/// registration and its first readings stores both. Returns the rest.
fn register(
    plan: &mut Plan,
    messages: &[Message],
    decoded: Vec<Decoded>,
    known: &mut Known,
) -> Vec<Decoded> {
    let (gateways, devices) = (&known.gateways, &mut known.devices);
    let mut accepted = Vec::with_capacity(decoded.len());
    for d in decoded {
        let msg = &messages[d.index];
        let gw = match gateways.get(&d.gateway) {
            Some(g) if !g.revoked => g.clone(),
            Some(_) => {
                plan.quarantine(
                    msg,
                    Some(&d.gateway),
                    Reason::UnknownGateway,
                    "gateway is revoked",
                );
                continue;
            }
            None => {
                // Not one of ours: hold enough to see what it was, not
                // whatever an unknown account cares to fill the disk with.
                let mut row = QuarantineRow::of_message(
                    msg,
                    Reason::UnknownGateway,
                    "gateway is not enrolled".into(),
                );
                if row.payload.len() > UNKNOWN_SENDER_PAYLOAD {
                    row.detail = format!(
                        "gateway is not enrolled (payload cut to its first {UNKNOWN_SENDER_PAYLOAD} of {} bytes)",
                        row.payload.len()
                    );
                    row.payload.truncate(UNKNOWN_SENDER_PAYLOAD);
                }
                plan.quarantine.push(row);
                continue;
            }
        };
        if let Body::Registration(r) = &d.envelope.body {
            // Whose readings the device's are: the owner's, or the enrolled
            // patient a shared device's user slot names.
            let user_id = match &r.patient {
                None => gw.owner_id,
                Some(did) => match gw.patients.get(did) {
                    Some(user) => *user,
                    None => {
                        let detail = format!(
                            "gateway {} is not enrolled for patient {did} (hailan-ingest admin enrol-gateway {} --owner … --patient {did})",
                            d.gateway, d.gateway
                        );
                        plan.quarantine_registration(
                            msg,
                            &d.gateway,
                            r,
                            Reason::UnknownPatient,
                            detail,
                        );
                        continue;
                    }
                },
            };
            match devices.get(&r.device_id) {
                Some(existing) if existing.gateway_id != d.gateway => {
                    let detail = format!(
                        "device {} is registered to gateway {}",
                        r.device_id, existing.gateway_id
                    );
                    plan.quarantine_registration(
                        msg,
                        &d.gateway,
                        r,
                        Reason::DeviceGatewayMismatch,
                        detail,
                    );
                }
                Some(existing) if existing.commitment != r.device_commitment => {
                    let detail = format!(
                        "device {} re-registered with another device commitment",
                        r.device_id
                    );
                    plan.quarantine_registration(
                        msg,
                        &d.gateway,
                        r,
                        Reason::DeviceKeyMismatch,
                        detail,
                    );
                }
                Some(existing) if existing.user_id != user_id => {
                    let detail = format!(
                        "device {} is registered under another patient than the registration names",
                        r.device_id
                    );
                    plan.quarantine_registration(
                        msg,
                        &d.gateway,
                        r,
                        Reason::UnknownPatient,
                        detail,
                    );
                }
                Some(existing) => plan.devices.push(DeviceUpsert {
                    new: false,
                    id: existing.id,
                    user_id: existing.user_id,
                    gateway_id: d.gateway.clone(),
                    registration: (**r).clone(),
                }),
                None => {
                    let row = DeviceRow {
                        id: Uuid::new_v4(),
                        user_id,
                        gateway_id: d.gateway.clone(),
                        commitment: r.device_commitment,
                    };
                    plan.devices.push(DeviceUpsert {
                        new: true,
                        id: row.id,
                        user_id: row.user_id,
                        gateway_id: d.gateway.clone(),
                        registration: (**r).clone(),
                    });
                    plan.registered.push(r.device_id.clone());
                    devices.insert(r.device_id.clone(), row);
                }
            }
            continue;
        }
        accepted.push(d);
    }

    accepted
}

/// What stage 4 admits: the messages kept (indexed by `pending` and
/// `unverifiable`), the proven groups to verify, and the groups stored
/// unverified without verification (no proof, or a data type this build
/// does not know).
struct Admitted {
    keep: Vec<Decoded>,
    pending: Vec<Pending>,
    unverifiable: Vec<Unverified>,
}

/// A group stored unverified: (message in `keep`, group, owner, device, why).
type Unverified = (usize, usize, Uuid, Uuid, Reject);

/// Stage 4: device states and readings of known devices of the sending
/// gateway, within its proof budget; the groups to verify.
fn admit(
    plan: &mut Plan,
    messages: &[Message],
    accepted: Vec<Decoded>,
    known: &Known,
    allowance: &Allowance,
) -> Admitted {
    let devices = &known.devices;
    let mut pending: Vec<Pending> = Vec::new();
    let mut proofs_left: HashMap<String, f64> = HashMap::new();
    let mut unverifiable: Vec<(usize, usize, Uuid, Uuid, Reject)> = Vec::new();
    let mut keep = Vec::with_capacity(accepted.len());
    for d in accepted {
        // The index `d` will have in `keep`, which steps 5 and 6 use.
        let pos = keep.len();
        let msg = &messages[d.index];
        let device_id = match &d.envelope.body {
            Body::Readings(b) => &b.device_id,
            Body::DeviceState(s) => &s.device_id,
            Body::Registration(_) => continue,
        };
        let Some(dev) = devices.get(device_id) else {
            let mut q = QuarantineRow {
                topic: msg.topic.clone(),
                gateway_id: Some(d.gateway.clone()),
                device_id: Some(device_id.clone()),
                data_type: None,
                seq: None,
                reason: Reason::UnknownDevice,
                detail: format!(
                    "device {device_id} is not registered (replayed when its registration arrives)"
                ),
                payload: msg.payload.clone(),
            };
            if let Body::Readings(b) = &d.envelope.body {
                let first = b.groups.first().and_then(|g| g.readings.first());
                q.data_type = first.map(|r| r.data_type.clone());
                q.seq = first.and_then(|r| i64::try_from(r.seq).ok());
            }
            plan.quarantine.push(q);
            continue;
        };
        if dev.gateway_id != d.gateway {
            let detail = format!("device {device_id} belongs to gateway {}", dev.gateway_id);
            plan.quarantine(msg, Some(&d.gateway), Reason::DeviceGatewayMismatch, detail);
            continue;
        }
        // A user slot's patient whom the gateway no longer serves
        // (`admin withdraw-patient`): nothing more lands under them.
        if let Some(gw) = known.gateways.get(&d.gateway)
            && dev.user_id != gw.owner_id
            && !gw.patients.values().any(|u| *u == dev.user_id)
        {
            let detail = format!(
                "device {device_id} belongs to a patient gateway {} is no longer enrolled for",
                d.gateway
            );
            plan.quarantine(msg, Some(&d.gateway), Reason::UnknownPatient, detail);
            if let Some(row) = plan.quarantine.last_mut() {
                row.device_id = Some(device_id.clone());
            }
            continue;
        }
        match &d.envelope.body {
            Body::DeviceState(s) => plan.states.push(StateUpdate {
                device: dev.id,
                state: s.clone(),
            }),
            Body::Readings(b) => {
                // Admitted while the gateway's proof budget is positive; the
                // whole message waits in quarantine otherwise.
                let proven = b.groups.iter().filter(|g| g.proof.is_some()).count() as f64;
                if proven > 0.0 {
                    let left = proofs_left
                        .entry(d.gateway.clone())
                        .or_insert_with(|| allowance.proofs_left(&d.gateway));
                    if *left <= 0.0 {
                        plan.proof_limited.push(d.gateway.clone());
                        let detail = format!(
                            "proof rate: gateway {} is over its verification budget",
                            d.gateway
                        );
                        plan.quarantine(msg, Some(&d.gateway), Reason::RateLimited, detail);
                        continue;
                    }
                    *left -= proven;
                }
                for (gi, g) in b.groups.iter().enumerate() {
                    let known = DataType::from_name(&g.readings[0].data_type).is_some();
                    match (&g.proof, known) {
                        (Some(_), true) => pending.push(Pending {
                            msg: pos,
                            group: gi,
                            user_id: dev.user_id,
                            device: dev.id,
                            commitment: dev.commitment,
                        }),
                        (None, _) => unverifiable.push((
                            pos,
                            gi,
                            dev.user_id,
                            dev.id,
                            Reject::NoProof(g.no_proof_reason.clone().unwrap_or_default()),
                        )),
                        (Some(_), false) => unverifiable.push((
                            pos,
                            gi,
                            dev.user_id,
                            dev.id,
                            Reject::UnknownDataType(g.readings[0].data_type.clone()),
                        )),
                    }
                }
            }
            Body::Registration(_) => {}
        }
        keep.push(d);
    }

    Admitted {
        keep,
        pending,
        unverifiable,
    }
}

/// Verdicts of stage 5: per pending group, its verdict and public inputs;
/// the pairing checks spent on the shared batch and on suspects' batches.
type Verdicts = (
    Vec<Result<(), Reject>>,
    Vec<Option<Vec<String>>>,
    usize,
    usize,
);

/// Stage 5: verify every proven group in one batch, off the async runtime
/// (suspect gateways' groups in batches of their own).
async fn verify(
    verifier: Arc<Verifier>,
    keep: Arc<Vec<Decoded>>,
    pending: &[Pending],
    allowance: &Allowance,
) -> Result<Verdicts> {
    let claims_of: Vec<(usize, usize, [u8; 32])> = pending
        .iter()
        .map(|p| (p.msg, p.group, p.commitment))
        .collect();
    // Suspect gateways' proofs are verified in batches of their own:
    // bisecting their bad proofs costs nobody else a pairing check.
    // Key None = the shared batch.
    let mut partitions: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        let gw = &keep[p.msg].gateway;
        let key = allowance.is_suspect(gw).then(|| gw.clone());
        partitions.entry(key).or_default().push(i);
    }
    tokio::task::spawn_blocking(move || {
        let claims: Vec<GroupClaim<'_>> = claims_of
            .iter()
            .map(|(m, g, c)| {
                let d = &keep[*m];
                let Body::Readings(b) = &d.envelope.body else {
                    unreachable!("pending groups are readings")
                };
                GroupClaim {
                    gateway_id: &d.gateway,
                    device_id: &b.device_id,
                    device_commitment: c,
                    group: &b.groups[*g],
                }
            })
            .collect();
        let mut verdicts: Vec<Result<(), Reject>> = vec![Ok(()); claims.len()];
        let (mut shared, mut isolated) = (0, 0);
        for (key, indices) in &partitions {
            let part: Vec<GroupClaim<'_>> = indices.iter().map(|&i| claims[i]).collect();
            let (v, checks) = verifier.verify_batch_counted(&part, &mut rand_core::OsRng);
            if key.is_some() {
                isolated += checks;
            } else {
                shared += checks;
            }
            for (&i, v) in indices.iter().zip(v) {
                verdicts[i] = v;
            }
        }
        let inputs: Vec<Option<Vec<String>>> = claims
            .iter()
            .map(|c| verifier.bundle(c).ok().map(|b| b.public_inputs))
            .collect();
        (verdicts, inputs, shared, isolated)
    })
    .await
    .map_err(anyhow::Error::from)
}

/// Stage 6: the rows — proofs, readings (verified or stored unverified) —
/// and quarantine rows for groups whose proof failed.
fn write_rows(
    plan: &mut Plan,
    messages: &[Message],
    keep: &[Decoded],
    pending: &[Pending],
    verdicts: Verdicts,
    unverifiable: Vec<Unverified>,
) {
    let (verdicts, inputs, shared, isolated) = verdicts;
    plan.pairing_checks_shared = shared;
    plan.pairing_checks_isolated = isolated;
    for (p, v) in pending.iter().zip(&verdicts) {
        let u = plan
            .proof_usage
            .entry(keep[p.msg].gateway.clone())
            .or_default();
        u.checked += 1;
        u.bad += u64::from(v.is_err());
    }
    // (message, group) → what became of that group.
    let mut outcome: BTreeMap<(usize, usize), Outcome> = BTreeMap::new();
    for ((p, v), i) in pending.iter().zip(verdicts).zip(inputs) {
        outcome.insert((p.msg, p.group), (p.user_id, p.device, v, i));
    }
    for (m, g, user, device, reject) in unverifiable {
        outcome.insert((m, g), (user, device, Err(reject), None));
    }
    for ((m, gi), (user_id, device, verdict, inputs)) in outcome {
        let d = &keep[m];
        let msg = &messages[d.index];
        let Body::Readings(b) = &d.envelope.body else {
            continue;
        };
        let g: &ProvenGroup = &b.groups[gi];
        let stored_unverified = matches!(
            verdict,
            Err(Reject::NoProof(_) | Reject::UnknownDataType(_))
        );
        if let Err(reject) = &verdict
            && !stored_unverified
        {
            plan.quarantine.push(QuarantineRow {
                topic: msg.topic.clone(),
                gateway_id: Some(d.gateway.clone()),
                device_id: Some(b.device_id.clone()),
                data_type: Some(g.readings[0].data_type.clone()),
                seq: i64::try_from(g.readings[0].seq).ok(),
                reason: Reason::from_reject(reject),
                detail: format!("group {gi} ({} readings): {reject}", g.readings.len()),
                payload: msg.payload.clone(),
            });
            continue;
        }
        let verified = verdict.is_ok();
        let proof_hash = g.proof.as_ref().map(|p| sha256_hex(p));
        if let (Some(proof), Some(hash)) = (&g.proof, &proof_hash) {
            plan.proofs.push(ProofRow {
                user_id,
                proof_hash: hash.clone(),
                key_id: hex(&g.key_id),
                statement: match g.kind {
                    ProofKind::Reading => "reading",
                    ProofKind::Window => "window",
                },
                device,
                first_seq: i64::try_from(g.readings[0].seq).unwrap_or(i64::MAX),
                reading_count: g.readings.len() as i32,
                proof: proof.clone(),
                public_inputs: serde_json::json!(inputs.unwrap_or_default()),
                verified,
                reason: verdict.as_ref().err().map(|r| r.to_string()),
            });
        }
        for r in &g.readings {
            let (Ok(seq), Some(recorded_at)) = (
                i64::try_from(r.seq),
                DateTime::from_timestamp_millis(r.recorded_at_ms),
            ) else {
                plan.quarantine.push(QuarantineRow {
                    topic: msg.topic.clone(),
                    gateway_id: Some(d.gateway.clone()),
                    device_id: Some(b.device_id.clone()),
                    data_type: Some(r.data_type.clone()),
                    seq: None,
                    reason: Reason::Undecodable,
                    detail: format!("seq {} or time {} out of range", r.seq, r.recorded_at_ms),
                    payload: msg.payload.clone(),
                });
                continue;
            };
            plan.readings.push(ReadingRow {
                user_id,
                device,
                data_type: r.data_type.clone(),
                value: hailan_proto::stored::encode(&r.sealed),
                data_cid: hailan_proto::cid::sealed_value_cid(&r.sealed.ciphertext),
                unit: DataType::from_name(&r.data_type).map(|t| t.spec().slots[0].unit.to_owned()),
                recorded_at,
                proof_hash: proof_hash.clone(),
                verified,
                seq,
                gateway_id: d.gateway.clone(),
                commitment: g.commitment.to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    //! Planning against gateways and devices given in memory ([`plan_against`]):
    //! every stage but the database read, without PostgreSQL or proofs (an
    //! empty verifier: the groups here carry none).
    use super::*;
    use hailan_proto::zk::{DevKeys, Policy};
    use hailan_tests::TestDevice;

    const GW: &str = "gw-plan";

    fn message(topic: String, e: &Envelope) -> Message {
        Message {
            topic,
            payload: Bytes::from(envelope::encode(e)),
            from_quarantine: None,
            rate_limited: None,
        }
    }

    fn up(e: &Envelope) -> Message {
        message(topic::up(&e.gateway_id), e)
    }

    fn known(gateways: &[(&str, Uuid, bool)]) -> Known {
        Known {
            gateways: gateways
                .iter()
                .map(|(id, owner_id, revoked)| {
                    (
                        (*id).to_owned(),
                        GatewayRow {
                            owner_id: *owner_id,
                            revoked: *revoked,
                            patients: HashMap::new(),
                        },
                    )
                })
                .collect(),
            devices: HashMap::new(),
        }
    }

    async fn plan_of(known: Known, messages: &[Message]) -> Plan {
        let verifier = Verifier::new(Vec::new(), Policy::from_spec(), DevKeys::Allow)
            .expect("an empty verifier");
        plan_against(known, Arc::new(verifier), messages, &Allowance::unlimited())
            .await
            .expect("planning in memory does not fail")
    }

    fn reasons(plan: &Plan) -> Vec<(Option<&str>, Reason)> {
        plan.quarantine
            .iter()
            .map(|q| (q.device_id.as_deref(), q.reason))
            .collect()
    }

    #[tokio::test]
    async fn a_registration_and_its_readings_in_one_batch_are_stored_together() {
        let owner = Uuid::new_v4();
        let mut hr = TestDevice::new(GW, "hr-plan", DataType::HeartRate, 1);
        let mut stranger = TestDevice::new(GW, "hr-unregistered", DataType::HeartRate, 2);
        let messages = [
            up(&hr.unproven_reading(&[70])),
            up(&hr.registration()),
            up(&hr.state(80, 1_000)),
            up(&stranger.unproven_reading(&[71])),
            message("hailan/v1/gw-plan/down".into(), &hr.registration()),
        ];
        let plan = plan_of(known(&[(GW, owner, false)]), &messages).await;
        assert_eq!(plan.message_count, 5);
        // The registration is taken first, whatever its place in the batch.
        assert_eq!(plan.registered, ["hr-plan"]);
        let dev = &plan.devices[0];
        assert!(dev.new);
        assert_eq!(
            dev.user_id, owner,
            "a new device belongs to its gateway's owner"
        );
        assert_eq!(plan.readings.len(), 1);
        let r = &plan.readings[0];
        assert_eq!((r.device, r.user_id, r.verified), (dev.id, owner, false));
        let Body::Readings(b) = envelope::decode(&messages[0].payload)
            .expect("decodes")
            .body
        else {
            panic!("the first message is a reading")
        };
        let sealed = &b.groups[0].readings[0].sealed;
        assert_eq!(
            r.value,
            hailan_proto::stored::encode(sealed),
            "stored sealed, never opened"
        );
        assert_eq!(plan.states.len(), 1);
        assert_eq!(
            reasons(&plan),
            [
                (None, Reason::BadTopic),
                (Some("hr-unregistered"), Reason::UnknownDevice)
            ]
        );
    }

    #[tokio::test]
    async fn gateways_and_devices_that_do_not_match_are_quarantined_with_their_reason() {
        let owner = Uuid::new_v4();
        let theirs = TestDevice::new("gw-other", "bp-theirs", DataType::BloodPressure, 3);
        let mine = TestDevice::new(GW, "bp-theirs", DataType::BloodPressure, 3);
        let rekeyed = TestDevice::new(GW, "bp-mine", DataType::BloodPressure, 4);
        let revoked = TestDevice::new("gw-revoked", "t-1", DataType::BodyTemperature, 5);
        let unknown = TestDevice::new("gw-unknown", "t-2", DataType::BodyTemperature, 6);
        let mut k = known(&[(GW, owner, false), ("gw-revoked", owner, true)]);
        for (dev, gw, seed) in [("bp-theirs", "gw-other", 3), ("bp-mine", GW, 7)] {
            let commitment = match TestDevice::new(gw, dev, DataType::BloodPressure, seed)
                .registration()
                .body
            {
                Body::Registration(r) => r.device_commitment,
                _ => unreachable!("a registration"),
            };
            k.devices.insert(
                dev.to_owned(),
                DeviceRow {
                    id: Uuid::new_v4(),
                    user_id: owner,
                    gateway_id: gw.to_owned(),
                    commitment,
                },
            );
        }
        let messages = [
            up(&mine.registration()),
            up(&mine.state(50, 0)),
            up(&rekeyed.registration()),
            up(&revoked.registration()),
            up(&unknown.registration()),
            // Published on our gateway's topic by another gateway's envelope.
            message(topic::up(GW), &theirs.registration()),
        ];
        let plan = plan_of(k, &messages).await;
        assert!(
            plan.devices.is_empty() && plan.states.is_empty(),
            "{:?}",
            plan.devices
        );
        let mut got: Vec<Reason> = plan.quarantine.iter().map(|q| q.reason).collect();
        got.sort();
        let mut want = vec![
            Reason::DeviceGatewayMismatch,
            Reason::DeviceGatewayMismatch,
            Reason::DeviceKeyMismatch,
            Reason::UnknownGateway,
            Reason::UnknownGateway,
            Reason::GatewayMismatch,
        ];
        want.sort();
        assert_eq!(got, want, "{:?}", plan.quarantine);
        assert_eq!(
            plan.quarantine.len(),
            messages.len(),
            "each message ends in exactly one place"
        );
    }

    /// A registration for one patient of a shared device (WIRE.md §2.2
    /// `patient`): its rows belong to that patient only if the gateway is
    /// enrolled for them.
    fn for_patient(dev: &TestDevice, did: &str) -> Envelope {
        let mut e = dev.registration();
        if let Body::Registration(r) = &mut e.body {
            r.patient = Some(did.into());
        }
        e
    }

    /// `dev` as registered on gateway `GW` under `user_id`.
    fn registered(dev: &TestDevice, user_id: Uuid) -> DeviceRow {
        DeviceRow {
            id: Uuid::new_v4(),
            user_id,
            gateway_id: GW.into(),
            commitment: match dev.registration().body {
                Body::Registration(r) => r.device_commitment,
                _ => unreachable!("a registration"),
            },
        }
    }

    #[tokio::test]
    async fn a_withdrawn_patients_user_slot_lands_nothing_more() {
        let (owner, spouse) = (Uuid::new_v4(), Uuid::new_v4());
        let mut slot = TestDevice::new(GW, "sc-plan-w2", DataType::BodyWeight, 12);
        let row = registered(&slot, spouse);
        let messages = [up(&slot.unproven_reading(&[70_000]))];
        let mut enrolled = known(&[(GW, owner, false)]);
        enrolled.devices.insert("sc-plan-w2".into(), row.clone());
        let mut withdrawn = known(&[(GW, owner, false)]);
        withdrawn.devices.insert("sc-plan-w2".into(), row);
        if let Some(gw) = enrolled.gateways.get_mut(GW) {
            gw.patients.insert("did:example:spouse".into(), spouse);
        }
        let plan = plan_of(enrolled, &messages).await;
        assert!(reasons(&plan).is_empty(), "{:?}", reasons(&plan));
        assert_eq!(plan.readings.len(), 1);
        let plan = plan_of(withdrawn, &messages).await;
        assert!(plan.readings.is_empty());
        assert_eq!(
            reasons(&plan),
            [(Some("sc-plan-w2"), Reason::UnknownPatient)]
        );
    }

    #[tokio::test]
    async fn a_user_slot_registers_under_its_patient_only_where_the_gateway_is_enrolled_for_them() {
        let (owner, spouse) = (Uuid::new_v4(), Uuid::new_v4());
        let mut k = known(&[(GW, owner, false)]);
        let gw = k.gateways.get_mut(GW).expect("the gateway");
        gw.patients.insert("did:example:owner".into(), owner);
        gw.patients.insert("did:example:spouse".into(), spouse);
        let slot2 = TestDevice::new(GW, "sc-plan-u2", DataType::BodyWeight, 8);
        let owners = TestDevice::new(GW, "sc-plan-u1", DataType::BodyWeight, 9);
        let stranger = TestDevice::new(GW, "sc-plan-u3", DataType::BodyWeight, 10);
        let moved = TestDevice::new(GW, "sc-plan-u4", DataType::BodyWeight, 11);
        k.devices
            .insert("sc-plan-u4".into(), registered(&moved, owner));
        let messages = [
            up(&for_patient(&slot2, "did:example:spouse")),
            up(&for_patient(&owners, "did:example:owner")),
            up(&for_patient(&stranger, "did:example:neighbour")),
            up(&for_patient(&moved, "did:example:spouse")),
        ];
        let plan = plan_of(k, &messages).await;
        let users: Vec<(&str, Uuid)> = plan
            .devices
            .iter()
            .map(|d| (d.registration.device_id.as_str(), d.user_id))
            .collect();
        assert_eq!(users, [("sc-plan-u2", spouse), ("sc-plan-u1", owner)]);
        assert_eq!(
            reasons(&plan),
            [
                (Some("sc-plan-u3"), Reason::UnknownPatient),
                (Some("sc-plan-u4"), Reason::UnknownPatient)
            ],
            "a patient the gateway is not enrolled for, and a device moved to another patient, are held"
        );
    }
}
