//! Where a value came from, as FHIR R4 resources a record system can keep:
//! a `Device` for each sensor and one for the gateway (the HL7 Personal
//! Health Device guide's PhdDevice / PhgDevice shapes), and a `Provenance`
//! per proof that names the Observations it covers, the gateway that made
//! it, and the proof itself (hash, verifying key, bundle URL) so that the
//! receiving side can fetch the bundle and verify it again with snarkjs.
//!
//! Pure mapping: rows in, JSON out. The rows are read in
//! [`super::everything`].

use chrono::{DateTime, SecondsFormat, Utc};
use hailan_proto::DataType;
use hailan_proto::gatt::DeviceKind;
use serde_json::{Value, json};
use uuid::Uuid;

/// Continua's device identifier types (PHD guide, R4).
const CONTINUA_IDS: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers";
/// Bluetooth device addresses as identifiers (HL7 terminology's
/// `bluetooth-address-identifier` naming system).
const BLUETOOTH_ADDRESS: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// IEEE 11073-10101 nomenclature (device specialisations).
const MDC: &str = "urn:iso:std:iso:11073:10101";
/// The device's own id as its gateway registered it.
pub const DEVICE_ID_SYSTEM: &str = "urn:hailan:device";
/// A gateway's broker account.
pub const GATEWAY_ID_SYSTEM: &str = "urn:hailan:gateway";
/// The SHA-256 of a Groth16 proof's bytes.
pub const PROOF_HASH_SYSTEM: &str = "urn:hailan:zk-proof-sha256";
/// The SHA-256 of a verifying key.
pub const KEY_ID_SYSTEM: &str = "urn:hailan:zk-verifying-key-sha256";
/// On a Provenance entity: where the proof bundle (proof, public inputs,
/// verifying key id; what `snarkjs groth16 verify` takes) is fetched.
pub const PROOF_BUNDLE_EXTENSION: &str = "urn:hailan:fhir:StructureDefinition:proof-bundle";
/// The R4 core extension that names the gateway an Observation came through.
pub const GATEWAY_DEVICE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
/// The namespace of the gateways' Device ids (UUID v5 of the gateway id: a
/// gateway id may hold characters a FHIR id may not).
const GATEWAY_NAMESPACE: Uuid = Uuid::from_u128(0x6861_696c_616e_2d67_6174_6577_6179_0001);

/// A sensor as `iot_devices` holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SensorRow {
    /// Row id (`iot_devices.id`), the Device's id.
    pub id: Uuid,
    /// The owner (`iot_devices.user_id`), the Device's patient.
    pub user_id: Uuid,
    /// The device's own id (`iot_devices.device_id`), an identifier in [`DEVICE_ID_SYSTEM`].
    pub device_id: String,
    /// Its name (`iot_devices.device_name`), a user-friendly `deviceName`.
    pub device_name: Option<String>,
    /// Data type name of its primary measurement (`iot_devices.device_type`):
    /// the Device's type and 11073 specialisation.
    pub device_type: String,
    /// `iot_devices.manufacturer` (Device Information).
    pub manufacturer: Option<String>,
    /// `iot_devices.model`, the Device's `modelNumber`.
    pub model: Option<String>,
    /// `iot_devices.serial_number`, the Device's `serialNumber`.
    pub serial_number: Option<String>,
    /// `iot_devices.firmware_version`, a `version` of type firmware revision.
    pub firmware_version: Option<String>,
    /// `iot_devices.hardware_version`, a `version` of type hardware revision.
    pub hardware_version: Option<String>,
    /// `iot_devices.bluetooth_address`, a BTMAC identifier.
    pub bluetooth_address: Option<String>,
    /// The gateway it is paired with (`iot_devices.gateway_id`).
    pub gateway_id: String,
    /// `iot_devices.is_active`: the Device's status is `inactive` only when false.
    pub is_active: Option<bool>,
}

/// A proof as `zk_proofs` holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProofRow {
    /// Row id (`zk_proofs.id`), the Provenance's id.
    pub id: Uuid,
    /// Hex SHA-256 of the proof bytes (`zk_proofs.proof_hash`).
    pub proof_hash: String,
    /// Hex id of the verifying key (`zk_proofs.key_id`).
    pub key_id: String,
    /// `reading` or `window` (`zk_proofs.statement`).
    pub statement: String,
    /// When ingest stored it (`zk_proofs.created_at`), the Provenance's `recorded`.
    pub created_at: Option<DateTime<Utc>>,
}

/// How one resource refers to another: by `Type/id` (a search result, read
/// from this server), or by the `urn:uuid:` full URL of a transaction
/// Bundle's entry (the receiving server assigns its own ids and rewrites
/// them; the patient is found by identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refs {
    /// `Type/id`: resources as this server serves them (searches, reads).
    Server,
    /// `urn:uuid:{id}` of the entry in a transaction Bundle; the patient by identifier.
    Transaction,
}

/// The patient identifier system: the user's id in hailan.
pub const PATIENT_ID_SYSTEM: &str = "urn:hailan:patient";

impl Refs {
    /// A reference to resource `kind` with id `id`.
    pub fn to(self, kind: &str, id: impl std::fmt::Display) -> String {
        match self {
            Refs::Server => format!("{kind}/{id}"),
            Refs::Transaction => format!("urn:uuid:{id}"),
        }
    }

    /// The reference to a patient (not in a transaction Bundle: a
    /// conditional reference the receiving server resolves).
    pub fn patient(self, id: Uuid) -> String {
        match self {
            Refs::Server => format!("Patient/{id}"),
            Refs::Transaction => format!("Patient?identifier={PATIENT_ID_SYSTEM}|{id}"),
        }
    }
}

/// The Device id of gateway `gateway_id`.
pub fn gateway_device_id(gateway_id: &str) -> Uuid {
    Uuid::new_v5(&GATEWAY_NAMESPACE, gateway_id.as_bytes())
}

/// The IEEE 11073 specialisation of a device whose primary data type is
/// `data_type` (`iot_devices.device_type`; PHD guide,
/// `Device.specialization`), where 11073 has a device profile for it.
fn specialization(data_type: DataType) -> Option<(&'static str, &'static str)> {
    Some(match data_type {
        DataType::Spo2 => ("528388", "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
        DataType::BloodPressure => ("528391", "MDC_DEV_SPEC_PROFILE_BPM"),
        DataType::BodyTemperature => ("528392", "MDC_DEV_SPEC_PROFILE_TEMP"),
        DataType::BodyWeight => ("528399", "MDC_DEV_SPEC_PROFILE_SCALE"),
        DataType::Glucose => ("528401", "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
        DataType::HeartRate | DataType::BodyComposition => return None,
    })
}

/// A sensor's `Device`: identified by its Bluetooth address and its own
/// id; manufacturer, model, serial and revisions from its Device
/// Information service.
pub fn sensor_device(d: &SensorRow, refs: Refs) -> Value {
    let data_type = DataType::from_name(&d.device_type);
    let kind = data_type.map(DeviceKind::for_data_type);
    let mut identifier = vec![json!({ "system": DEVICE_ID_SYSTEM, "value": d.device_id })];
    if let Some(addr) = &d.bluetooth_address {
        identifier.push(json!({
            "type": { "coding": [{ "system": CONTINUA_IDS, "code": "BTMAC", "display": "Bluetooth MAC address" }] },
            "system": BLUETOOTH_ADDRESS,
            "value": addr,
        }));
    }
    let mut dev = json!({
        "resourceType": "Device",
        "id": d.id,
        "identifier": identifier,
        "status": if d.is_active.unwrap_or(true) { "active" } else { "inactive" },
        "type": { "text": kind.map_or_else(|| d.device_type.clone(), |k| k.as_str().replace('_', " ")) },
        "patient": { "reference": refs.patient(d.user_id) },
    });
    let set = |dev: &mut Value, k: &str, v: &Option<String>| {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            dev[k] = json!(v);
        }
    };
    set(&mut dev, "manufacturer", &d.manufacturer);
    set(&mut dev, "modelNumber", &d.model);
    set(&mut dev, "serialNumber", &d.serial_number);
    if let Some(name) = d.device_name.as_deref().filter(|n| !n.is_empty()) {
        dev["deviceName"] = json!([{ "name": name, "type": "user-friendly-name" }]);
    }
    let versions: Vec<Value> = [
        ("firmware revision", &d.firmware_version),
        ("hardware revision", &d.hardware_version),
    ]
    .into_iter()
    .filter_map(|(what, v)| {
        let v = v.as_deref().filter(|v| !v.is_empty())?;
        Some(json!({ "type": { "text": what }, "value": v }))
    })
    .collect();
    if !versions.is_empty() {
        dev["version"] = Value::Array(versions);
    }
    if let Some((code, display)) = data_type.and_then(specialization) {
        dev["specialization"] = json!([{
            "systemType": { "coding": [{ "system": MDC, "code": code, "display": display }] },
        }]);
    }
    dev
}

/// A gateway's `Device` (the PHD guide's personal health gateway).
pub fn gateway_device(gateway_id: &str) -> Value {
    json!({
        "resourceType": "Device",
        "id": gateway_device_id(gateway_id),
        "identifier": [{ "system": GATEWAY_ID_SYSTEM, "value": gateway_id }],
        "status": "active",
        "manufacturer": "hailan",
        "deviceName": [{ "name": format!("hailan gateway {gateway_id}"), "type": "model-name" }],
        "type": { "text": "personal health gateway" },
    })
}

/// The `Provenance` of the Observations `targets` (ids) that `proof`
/// covers, made by gateway `gateway_id`; `bundle_url` is where its proof
/// bundle is read.
pub fn provenance(
    proof: &ProofRow,
    targets: &[Uuid],
    gateway_id: &str,
    bundle_url: &str,
    refs: Refs,
) -> Value {
    let recorded = proof
        .created_at
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "resourceType": "Provenance",
        "id": proof.id,
        "target": targets.iter().map(|t| json!({ "reference": refs.to("Observation", t) })).collect::<Vec<_>>(),
        "recorded": recorded,
        "activity": { "text": format!("Groth16 (BN254) {} proof of the sealed values' range", proof.statement) },
        "agent": [{
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "assembler", "display": "Assembler" }] },
            "who": { "reference": refs.to("Device", gateway_device_id(gateway_id)), "display": gateway_id },
        }],
        "entity": [
            {
                "extension": [{ "url": PROOF_BUNDLE_EXTENSION, "valueUrl": bundle_url }],
                "role": "source",
                "what": {
                    "identifier": { "system": PROOF_HASH_SYSTEM, "value": proof.proof_hash },
                    "display": format!("{} proof {}", proof.statement, proof.proof_hash),
                },
            },
            {
                "role": "source",
                "what": {
                    "identifier": { "system": KEY_ID_SYSTEM, "value": proof.key_id },
                    "display": "verifying key",
                },
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor() -> SensorRow {
        SensorRow {
            id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(2),
            device_id: "po-1".into(),
            device_name: Some("Finger clip".into()),
            device_type: "SPO2".into(),
            manufacturer: Some("Acme".into()),
            model: Some("PO-3".into()),
            serial_number: Some("SN9".into()),
            firmware_version: Some("1.2".into()),
            hardware_version: None,
            bluetooth_address: Some("F0:4A:1A:01:00:00".into()),
            gateway_id: "gw_1:a".into(),
            is_active: Some(true),
        }
    }

    #[test]
    fn a_sensor_device_carries_its_device_information_and_address() {
        let d = sensor_device(&sensor(), Refs::Server);
        assert_eq!(d["manufacturer"], "Acme");
        assert_eq!(d["modelNumber"], "PO-3");
        assert_eq!(d["serialNumber"], "SN9");
        assert_eq!(d["version"][0]["value"], "1.2");
        assert_eq!(d["version"].as_array().map(Vec::len), Some(1));
        assert_eq!(d["identifier"][1]["value"], "F0:4A:1A:01:00:00");
        assert_eq!(d["type"]["text"], "pulse oximeter");
        assert_eq!(d["identifier"][1]["type"]["coding"][0]["code"], "BTMAC");
        assert_eq!(
            d["specialization"][0]["systemType"]["coding"][0]["code"],
            "528388"
        );
        assert_eq!(
            d["patient"]["reference"],
            format!("Patient/{}", Uuid::from_u128(2))
        );
        let t = sensor_device(&sensor(), Refs::Transaction);
        assert_eq!(
            t["patient"]["reference"],
            format!(
                "Patient?identifier=urn:hailan:patient|{}",
                Uuid::from_u128(2)
            )
        );
    }

    #[test]
    fn gateway_ids_become_valid_fhir_ids_that_do_not_collide() {
        let a = gateway_device_id("gw_1:a");
        assert_eq!(a, gateway_device_id("gw_1:a"));
        assert_ne!(a, gateway_device_id("gw_1-a"));
        let g = gateway_device("gw_1:a");
        assert_eq!(g["id"], json!(a));
        assert_eq!(g["identifier"][0]["value"], "gw_1:a");
    }

    #[test]
    fn provenance_names_targets_gateway_proof_and_key() {
        let p = ProofRow {
            id: Uuid::from_u128(7),
            proof_hash: "ab".repeat(32),
            key_id: "cd".repeat(32),
            statement: "window".into(),
            created_at: None,
        };
        let targets = [Uuid::from_u128(3), Uuid::from_u128(4)];
        let v = provenance(&p, &targets, "gw", "/proof", Refs::Transaction);
        assert_eq!(
            v["target"][1]["reference"],
            format!("urn:uuid:{}", Uuid::from_u128(4))
        );
        assert_eq!(
            v["agent"][0]["who"]["reference"],
            format!("urn:uuid:{}", gateway_device_id("gw"))
        );
        assert_eq!(
            v["entity"][0]["what"]["identifier"]["value"],
            "ab".repeat(32)
        );
        assert_eq!(v["entity"][0]["extension"][0]["valueUrl"], "/proof");
        assert_eq!(
            v["entity"][1]["what"]["identifier"]["value"],
            "cd".repeat(32)
        );
    }
}
