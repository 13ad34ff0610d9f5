//! Body composition end to end: four simulated body-composition scales (fake
//! BlueZ, every field of 0x2A9C, each measurement in the two packets of a
//! multiple-packet value) → hailan-gateway (production BLE code, joins the
//! packets, proves, seals) → Mosquitto → hailan-ingest → PostgreSQL
//! (BODY_COMPOSITION partition) → `hailan-api` FHIR. Every field the
//! simulator sent is compared with what FHIR shows (and the user id, which
//! FHIR does not show, with the sealed value).

use anyhow::{Context, Result, bail, ensure};
use hailan_proto::DataType;
use hailan_tests::api::{ApiProcess, ensure_api_login, validate_fhir, write_key_ring};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, count_readings, enrol_with_token, eventually};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// A gateway account of the development broker (xtask/src/services.rs).
const GW: &str = "gw-body-1";

/// One body-composition value the simulator put on the air.
struct Sent {
    device: String,
    address: String,
    m: Value,
}

fn body_compositions(truth_path: &std::path::Path) -> Result<Vec<Sent>> {
    let text = std::fs::read_to_string(truth_path)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("truth line {line}"))?;
        if v["characteristic"] == "2a9c" && v["malformed"] == false {
            out.push(Sent {
                device: v["device"].as_str().unwrap_or_default().to_owned(),
                address: v["address"].as_str().unwrap_or_default().to_owned(),
                m: v["measurement"].clone(),
            });
        }
    }
    Ok(out)
}

fn u(m: &Value, k: &str) -> Result<f64> {
    m[k].as_f64()
        .with_context(|| format!("truth field {k} in {m}"))
}

/// The device time of a truth measurement as FHIR writes it.
fn when(m: &Value) -> Result<String> {
    let t = &m["time"];
    let n = |k: &str| t[k].as_u64().with_context(|| format!("time.{k} in {t}"));
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
        n("year")?,
        n("month")?,
        n("day")?,
        n("hour")?,
        n("minute")?,
        n("second")?
    ))
}

/// The component of `o` coded `code`, (value, unit, marked unproven).
fn component(o: &Value, code: &str) -> Result<(f64, String, bool)> {
    let comps = o["component"].as_array().context("components")?;
    let c = comps
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == code)
        .with_context(|| format!("no component {code} in {o}"))?;
    let unproven = c["extension"].as_array().is_some_and(|e| {
        e.iter().any(|x| {
            x["url"] == "urn:hailan:fhir:StructureDefinition:unproven" && x["valueBoolean"] == true
        })
    });
    Ok((
        c["valueQuantity"]["value"]
            .as_f64()
            .context("component value")?,
        c["valueQuantity"]["unit"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        unproven,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_composition_field_arrives_through_fhir() -> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let (patient, token) = enrol_with_token(&db.pool, GW).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[GW], logs.path())?;
    let truth_path = logs.path().join("truth.jsonl");
    let broker = Broker::shared();
    let (mut sim, rig, devices) =
        sim_and_pair("bodycomp=4", &truth_path, GW, &broker, &zk, "", &[])?;
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    for round in 0..2 {
        for name in ["bodycomp0", "bodycomp1", "bodycomp2", "bodycomp3"] {
            sim.sim.command(&format!("measure {name}"))?;
        }
        if round == 0 {
            // Device time stamps have whole seconds: one measurement per second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let ids = ids_of_kind(&devices, "bodycomp");
    ensure!(
        ids.len() == 4,
        "four body-composition scales paired: {ids:?}"
    );
    collector
        .wait_for(Duration::from_secs(60), "body composition readings", |e| {
            ids.iter().all(|id| readings_of(e, id).len() >= 2)
        })
        .await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    check_against_truth(&rig, &envelopes, &devices, &truth, 0..truth.len())?;
    let sent = body_compositions(&truth_path)?;
    ensure!(sent.len() >= 8, "{} measurements sent", sent.len());

    // What the gateway sealed: one reading per measurement (two packets
    // joined), with the user id and the two-packet mark among the extras.
    let mut sealed_users: HashMap<(String, i64), i128> = HashMap::new();
    for (address, id) in &devices {
        for (_, (_, r)) in by_seq(&envelopes, id)? {
            ensure!(r.data_type == DataType::BodyComposition.as_str());
            let v = open_sealed(&rig, id, r)?;
            let user = v
                .extras
                .get("user_id")
                .and_then(|x| x.as_integer())
                .map(i128::from)
                .with_context(|| format!("{id} seq {}: no user id", r.seq))?;
            ensure!(
                v.extras.get("multiple_packet") == Some(&ciborium::Value::Bool(true)),
                "{id} seq {}: not marked as joined from two packets",
                r.seq
            );
            sealed_users.insert((address.to_ascii_uppercase(), r.recorded_at_ms), user);
        }
    }
    let published: usize = ids.iter().map(|id| readings_of(&envelopes, id).len()).sum();
    ensure!(
        published == sent.len(),
        "{published} readings published for {} measurements sent",
        sent.len()
    );

    eventually(Duration::from_secs(60), "every reading stored", || async {
        Ok(
            (count_readings(&db.pool, "AND data_type = 'BODY_COMPOSITION' AND verified").await?
                >= published as i64)
                .then_some(()),
        )
    })
    .await?;
    let in_partition: i64 =
        sqlx::query_scalar("SELECT count(*) FROM health_data_body_composition WHERE verified")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(in_partition, published as i64);

    // Through FHIR, as the patient.
    ensure_api_login(&db.pool).await?;
    let ring = write_key_ring(logs.path())?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
    let path = format!("/fhir/Observation?patient={patient}&code=http://loinc.org|41982-0");
    let (code, body) = api.get(&token, &path).await?;
    ensure!(code == 200, "GET {path}: {code} {body}");
    // Valid FHIR R4 (the `fhir.resources` models), components with their
    // extensions included.
    assert_eq!(
        validate_fhir(&body, logs.path())?,
        format!("valid {}", sent.len())
    );
    let bundle: Value = serde_json::from_str(&body)?;
    let entries = bundle["entry"].as_array().context("entries")?;
    ensure!(
        entries.len() == sent.len(),
        "{} observations for {} measurements",
        entries.len(),
        sent.len()
    );
    let mut units = Vec::new();
    for s in &sent {
        let m = &s.m;
        let t = when(m)?;
        let device: uuid::Uuid = sqlx::query_scalar(
            "SELECT id FROM iot_devices WHERE upper(bluetooth_address) = upper($1)",
        )
        .bind(&s.address)
        .fetch_one(&db.pool)
        .await
        .with_context(|| format!("iot_devices row of {}", s.address))?;
        let reference = format!("Device/{device}");
        let o = entries
            .iter()
            .map(|e| &e["resource"])
            .find(|o| {
                o["effectiveDateTime"] == t.as_str()
                    && o["device"]["reference"] == reference.as_str()
            })
            .with_context(|| format!("no observation at {t} for {}", s.device))?;
        ensure!(o["code"]["coding"][0]["code"] == "41982-0", "{o}");
        let zk_state = &o["extension"][0]["extension"][0];
        ensure!(zk_state["valueCode"] == "verified", "{o}");
        let lb = m["unit"] == "pound";
        units.push(if lb { "lb" } else { "kg" });
        // Masses within the lb wire's rounding (≤ 5 g), exact in kg.
        let mass_tol = if lb { 0.005 + 1e-9 } else { 1e-9 };
        let close = |got: f64, want: f64, tol: f64, what: &str| -> Result<()> {
            if (got - want).abs() > tol {
                bail!("{} at {t}: {what} {got}, sent {want}", s.device);
            }
            Ok(())
        };
        // Proven: body fat (the value), muscle %, muscle mass, body water.
        close(
            o["valueQuantity"]["value"].as_f64().context("value")?,
            u(m, "body_fat_x10")? / 10.0,
            1e-9,
            "body fat %",
        )?;
        ensure!(o["valueQuantity"]["unit"] == "%");
        for (code, key, scale, tol, unit) in [
            ("73965-6", "muscle_pct_x10", 10.0, 1e-9, "%"),
            ("73964-9", "muscle_mass_g", 1000.0, mass_tol, "kg"),
            ("101683-1", "body_water_mass_g", 1000.0, mass_tol, "kg"),
        ] {
            let (v, un, unproven) = component(o, code)?;
            close(v, u(m, key)? / scale, tol, key)?;
            ensure!(un == unit && !unproven, "{key}: {un}, unproven {unproven}");
        }
        // Sealed, not proven: shown, and marked so.
        for (code, key, scale, tol, unit) in [
            ("fat_free_mass_g", "fat_free_mass_g", 1000.0, mass_tol, "kg"),
            (
                "soft_lean_mass_g",
                "soft_lean_mass_g",
                1000.0,
                mass_tol,
                "kg",
            ),
            (
                "basal_metabolism_kj",
                "basal_metabolism_kj",
                1.0,
                1e-9,
                "kJ/d",
            ),
            ("impedance_ohm_x10", "impedance_x10", 10.0, 1e-9, "Ohm"),
            ("29463-7", "weight_g", 1000.0, mass_tol, "kg"),
            // 0.1 in on lb scales: within 1.3 mm
            (
                "8302-2",
                "height_mm",
                1000.0,
                if lb { 0.0013 } else { 1e-9 },
                "m",
            ),
        ] {
            let (v, un, unproven) = component(o, code)?;
            close(v, u(m, key)? / scale, tol, key)?;
            ensure!(un == unit && unproven, "{key}: {un}, unproven {unproven}");
        }
        // The user id travels sealed (FHIR's subject is the patient).
        let at = chrono::DateTime::parse_from_rfc3339(&t)?.timestamp_millis();
        let user = sealed_users
            .get(&(s.address.to_ascii_uppercase(), at))
            .with_context(|| format!("no sealed reading of {} at {t}", s.device))?;
        ensure!(
            Some(*user) == m["user"].as_i64().map(i128::from),
            "{}: sealed user {user}, sent {}",
            s.device,
            m["user"]
        );
    }
    // Under seed 7 devices 0–2 weigh in kg and device 3 in lb
    // (`Physiology::new`): both unit systems went through.
    ensure!(
        units.contains(&"kg") && units.contains(&"lb"),
        "units {units:?}"
    );
    eprintln!(
        "{} body-composition measurements ({units:?}) checked field by field through FHIR",
        sent.len()
    );
    drop(api);
    drop(sim);
    db.drop().await
}
