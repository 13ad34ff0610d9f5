//! Home Assistant MQTT discovery (off by default): each paired device's
//! battery and connectivity appear in Home Assistant — never a health value.
//!
//! Discovery configs go to `{prefix}/sensor/{gateway}/{device}_battery/config`
//! and `{prefix}/binary_sensor/{gateway}/{device}_link/config` (retained);
//! the state, `{"battery": 80, "connected": true}`, to
//! `hailan/v1/{gateway}/ha/{device}` (retained); availability follows the
//! gateway's `online`/`offline` status topic. The publisher sends them after
//! every connect and whenever a device's battery or link changes.

use crate::store::DeviceRow;
use serde_json::json;

/// Retained messages (topic, payload) announcing `devices`.
pub fn discovery(prefix: &str, gateway_id: &str, devices: &[DeviceRow]) -> Vec<(String, Vec<u8>)> {
    let status = hailan_proto::topic::status(gateway_id);
    let mut out = Vec::new();
    for d in devices {
        let state = state_topic(gateway_id, &d.device_id);
        let device = json!({
            "identifiers": [format!("hailan_{}", d.device_id)],
            "name": d.name.clone().unwrap_or_else(|| d.device_id.clone()),
            "manufacturer": d.manufacturer,
            "model": d.model,
            "sw_version": d.firmware,
            "via_device": format!("hailan_{gateway_id}"),
        });
        let common = |name: &str, uid: &str| {
            json!({
                "name": name,
                "unique_id": uid,
                "state_topic": state,
                "availability_topic": status,
                "payload_available": crate::publisher::ONLINE,
                "payload_not_available": crate::publisher::OFFLINE,
                "device": device,
            })
        };
        let mut battery = common("Battery", &format!("hailan_{}_battery", d.device_id));
        battery["device_class"] = json!("battery");
        battery["unit_of_measurement"] = json!("%");
        battery["value_template"] = json!("{{ value_json.battery }}");
        let mut link = common("Connected", &format!("hailan_{}_link", d.device_id));
        link["device_class"] = json!("connectivity");
        link["value_template"] = json!("{{ 'ON' if value_json.connected else 'OFF' }}");
        out.push((
            format!(
                "{prefix}/sensor/{gateway_id}/{}_battery/config",
                d.device_id
            ),
            battery.to_string().into_bytes(),
        ));
        out.push((
            format!(
                "{prefix}/binary_sensor/{gateway_id}/{}_link/config",
                d.device_id
            ),
            link.to_string().into_bytes(),
        ));
    }
    out
}

/// Where a device's battery/link state goes.
pub fn state_topic(gateway_id: &str, device_id: &str) -> String {
    format!("hailan/v1/{gateway_id}/ha/{device_id}")
}

/// The state payload: battery and link only.
pub fn state(d: &DeviceRow) -> Vec<u8> {
    json!({ "battery": d.battery, "connected": d.connected })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_carries_battery_and_link_only() {
        let d = DeviceRow {
            device_id: "hrm-1".into(),
            address: "AA:BB:CC:DD:EE:FF".into(),
            name: Some("strap".into()),
            kind: "heart_rate_monitor".into(),
            secret: hailan_proto::zk::DeviceSecret::from_bytes([1; 32]).expect("a valid scalar"),
            manufacturer: None,
            model: None,
            serial: None,
            firmware: None,
            hardware: None,
            paired_at_ms: 0,
            next_seq: 9,
            glucose_cursor: -1,
            battery: Some(70),
            rssi: Some(-60),
            connected: true,
            state_at_ms: None,
            last_reading_at_ms: None,
            needs_repair: false,
            bonded_at_ms: 0,
            outbox_depth: 0,
        };
        let msgs = discovery("homeassistant", "gw-1", std::slice::from_ref(&d));
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].0, "homeassistant/sensor/gw-1/hrm-1_battery/config");
        let cfg: serde_json::Value = serde_json::from_slice(&msgs[0].1).expect("json");
        assert_eq!(cfg["state_topic"], "hailan/v1/gw-1/ha/hrm-1");
        assert_eq!(cfg["availability_topic"], "hailan/v1/gw-1/status");
        let s: serde_json::Value = serde_json::from_slice(&state(&d)).expect("json");
        assert_eq!(s, json!({"battery": 70, "connected": true}));
    }
}
