//! `hailan-gateway decode` end to end: the real binary, one good and one bad input.

use std::process::Command;

fn decode(uuid: &str, hex: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hailan-gateway"))
        .args(["decode", uuid, hex])
        .output()
        .expect("run hailan-gateway")
}

#[test]
fn good_heart_rate_prints_json_and_exits_0() {
    let out = decode("2A37", "1E5532002100");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["heart_rate_bpm"], 85);
    assert_eq!(json["flags"], 30);
    assert_eq!(json["energy_expended_kj"], 50);
    assert_eq!(json["rr_intervals_1024"], serde_json::json!([33]));
    assert_eq!(json["sensor_contact_detected"], true);
}

#[test]
fn truncated_blood_pressure_exits_1_with_one_line_reason() {
    let out = decode("0x2a35", "03020304050607");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("timestamp"), "{err}");
}

#[test]
fn unknown_uuid_and_bad_hex_exit_1() {
    assert_eq!(decode("2A00", "00").status.code(), Some(1));
    assert_eq!(decode("2A37", "0G").status.code(), Some(1));
}
