//! A family scale shared by a household, end to end (issue 19): the fake
//! BlueZ's scale has three user slots (User Data Service). The owner maps
//! the scale's first user to themself by its consent code, registers a new
//! user on the scale for their spouse (another patient, with a data key of
//! their own), and leaves a third user unmapped. Through hailan-gateway
//! (production BLE code, the User Control Point) → Mosquitto →
//! hailan-ingest → PostgreSQL → hailan-api:
//! - each mapped user's readings land under their patient only: neither the
//!   other patient nor the spouse's clinician sees them (RLS);
//! - the unmapped user's reading is held on the gateway, never guessed,
//!   and after `assign` it is stored once, under the patient it was
//!   assigned to, with its original time;
//! - a wrong consent code is refused by the device and maps nothing;
//! - a bonded cuff's user mapped to the spouse: its reading is theirs.

use anyhow::{Context, Result, bail, ensure};
use hailan_proto::envelope::{Envelope, Reading};
use hailan_proto::header::ReadingHeader;
use hailan_proto::seal::DataKey;
use hailan_tests::api::{ApiProcess, User, ensure_api_login, user};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, IngestProcess, TestDb, enrol_with_token, eventually, or_quarantined};
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A gateway account of the development broker (xtask/src/services.rs).
const GW: &str = "gw-shared-1";
/// The spouse's data key and its id (in the gateway's `[[keys.patients]]`
/// and the API's key ring).
const SPOUSE_KEY: [u8; 32] = [0x5A; 32];
const SPOUSE_KEY_ID: &str = "spouse-key-test";

/// `users NAME` → (user index, consent code) of each slot of a simulated device.
fn users(sim: &mut hailan_firmware_sim::harness::SimHarness, name: &str) -> Result<Vec<(u8, u16)>> {
    // "users scale0 1:4321 2:2222"
    let line = sim.sim.ask(&format!("users {name}"))?;
    line.split_whitespace()
        .skip(2)
        .map(|slot| {
            let (i, c) = slot.split_once(':').context("index:consent")?;
            Ok((i.parse()?, c.parse()?))
        })
        .collect()
}

/// `pair ADDRESS [--user-index N] --consent C [--patient DID] --json`: the
/// user slot's id and user index.
fn map_user(
    rig: &GatewayRig,
    address: &str,
    user_index: Option<u8>,
    consent: u16,
    patient: Option<&str>,
) -> Result<(String, u8)> {
    let (index, consent) = (user_index.map(|i| i.to_string()), consent.to_string());
    let mut args = vec!["pair", address, "--consent", &consent, "--json"];
    if let Some(i) = &index {
        args.extend(["--user-index", i]);
    }
    if let Some(p) = patient {
        args.extend(["--patient", p]);
    }
    let v: Value = serde_json::from_str(&rig.cli(&args)?)?;
    Ok((
        v["slot_id"].as_str().context("slot_id")?.to_owned(),
        u8::try_from(v["user_index"].as_u64().context("user_index")?)?,
    ))
}

/// The slots of a reading sealed with `key`.
fn open_with(key: &DataKey, gateway_id: &str, device_id: &str, r: &Reading) -> Result<Vec<u32>> {
    let header = ReadingHeader {
        gateway_id,
        device_id,
        data_type: &r.data_type,
        seq: r.seq,
        recorded_at_ms: r.recorded_at_ms,
    };
    Ok(hailan_proto::seal::open(key, &header, &r.sealed)
        .with_context(|| format!("opening {device_id} seq {}", r.seq))?
        .slots)
}

/// The measurements of simulated device `device` by its user `index`.
fn measured_by<'a>(truth: &'a [Truth], device: &str, index: u8) -> Vec<&'a Truth> {
    truth
        .iter()
        .filter(|t| t.device == device && t.makes_reading() && t.measurement["user"] == index)
        .collect()
}

/// Each reading of `slot` opened with `key` is a measurement of `device`'s
/// user `index`, recorded at its true time (within 2 s); returns their times.
fn check_slot(
    envelopes: &[Envelope],
    gateway_id: &str,
    slot: &str,
    key: &DataKey,
    truth: &[Truth],
    (device, index): (&str, u8),
) -> Result<Vec<i64>> {
    let sent = measured_by(truth, device, index);
    let mut times = Vec::new();
    for (seq, (_, r)) in by_seq(envelopes, slot)? {
        let slots = open_with(key, gateway_id, slot, r)?;
        let at = sent
            .iter()
            .find(|t| t.matches(&slots))
            .and_then(|t| t.true_time_ms())
            .with_context(|| {
                format!("{slot} seq {seq}: {slots:?} is no measurement of {device}'s user {index}")
            })?;
        ensure!(
            (r.recorded_at_ms - at).abs() <= 2_000,
            "{slot} seq {seq}: recorded at {}, taken at {at}",
            r.recorded_at_ms
        );
        times.push(r.recorded_at_ms);
    }
    Ok(times)
}

/// How many observations `who` reads of `patient` through the API; `None`
/// when refused.
async fn observations(api: &ApiProcess, who: &User, patient: uuid::Uuid) -> Result<Option<usize>> {
    let path = format!("/api/v1/patients/{patient}/observations?limit=1000");
    let (code, body) = api.get(&who.token, &path).await?;
    match code {
        200 => {
            let v: Value = serde_json::from_str(&body)?;
            Ok(Some(v["observations"].as_array().map_or(0, Vec::len)))
        }
        403 | 404 => Ok(None),
        other => bail!("GET {path} as {}: {other} {body}", who.did),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_of_a_family_scale_reaches_their_patient_only_and_the_unmapped_waits()
-> Result<()> {
    let db = TestDb::create().await?;
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let (owner_id, owner_token) = enrol_with_token(&db.pool, GW).await?;
    let spouse = user(&db.pool, "PATIENT", "spouse").await?;
    hailan_ingest::admin::enrol_patient(&db.pool, GW, &spouse.did).await?;
    let ingest_bin = workspace_binary("hailan-ingest")?;
    let _ingest = IngestProcess::start(&ingest_bin, &db, &zk, &[GW], logs.path())?;

    let spouse_key_file = logs.path().join("spouse.key");
    std::fs::write(&spouse_key_file, hex::encode(SPOUSE_KEY))?;
    std::fs::set_permissions(&spouse_key_file, std::fs::Permissions::from_mode(0o600))?;
    let extra = format!(
        "[[keys.patients]]\ndid = \"{}\"\ndata_key_file = \"{}\"\ndata_key_id = \"{SPOUSE_KEY_ID}\"\n",
        spouse.did,
        spouse_key_file.display()
    );
    let truth_path = logs.path().join("truth.jsonl");
    let broker = Broker::shared();
    let (mut sim, rig, devices) =
        sim_and_pair("scale=1,bp=1", &truth_path, GW, &broker, &zk, &extra, &[])?;
    let address_of = |id: &str| -> Result<String> {
        devices
            .iter()
            .find_map(|(a, d)| (d == id).then(|| a.clone()))
            .with_context(|| format!("the address of {id}"))
    };
    let scale = id_of_kind(&devices, "scale")?;
    let cuff = id_of_kind(&devices, "bp")?;
    let address = &address_of(&scale)?;

    // The scale's own user (1), the spouse's made on the scale by the
    // gateway (2), a guest the owner never maps (3).
    let [(first, first_consent)] = users(&mut sim, "scale0")?[..] else {
        bail!(
            "the scale starts with one user: {:?}",
            users(&mut sim, "scale0")?
        );
    };
    let wrong = (first_consent + 1) % 10_000;
    let refused = map_user(&rig, address, Some(first), wrong, None);
    let err = format!(
        "{:#}",
        refused.err().context("a wrong consent code is refused")?
    );
    ensure!(err.contains("User Not Authorized"), "{err}");
    let (owner_slot, _) = map_user(&rig, address, Some(first), first_consent, None)?;
    let (spouse_slot, second) = map_user(&rig, address, None, 2222, Some(&spouse.did))?;
    let guest = sim.sim.ask("user-add scale0 3333")?;
    let guest: u8 = guest
        .split_whitespace()
        .find_map(|w| w.strip_prefix("index="))
        .context("user-add answers index=")?
        .parse()?;
    ensure!(
        users(&mut sim, "scale0")?.contains(&(second, 2222)),
        "the gateway registered the spouse's user on the scale"
    );
    // The cuff (bonded) is the spouse's alone: its own user goes to them.
    let [(cuff_user, cuff_consent)] = users(&mut sim, "bp0")?[..] else {
        bail!("the cuff starts with one user");
    };
    let (cuff_slot, _) = map_user(
        &rig,
        &address_of(&cuff)?,
        Some(cuff_user),
        cuff_consent,
        Some(&spouse.did),
    )?;
    let listed: Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    let listed = listed
        .as_array()
        .context("devices")?
        .iter()
        .find(|d| d["device_id"] == scale.as_str())
        .and_then(|d| d["user_slots"].as_array())
        .map_or(0, Vec::len);
    ensure!(
        listed == 2,
        "`devices` lists the scale's 2 mapped users, not {listed}"
    );

    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    sim.sim.command(&format!("measure bp0 {cuff_user}"))?;
    for by in [first, second, guest] {
        sim.sim.command(&format!("measure scale0 {by}"))?;
        // Time stamps have whole seconds: one measurement per second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    collector
        .wait_for(Duration::from_secs(60), "the mapped users' readings", |e| {
            !readings_of(e, &owner_slot).is_empty()
                && !readings_of(e, &spouse_slot).is_empty()
                && !readings_of(e, &cuff_slot).is_empty()
        })
        .await?;
    let held = eventually(Duration::from_secs(60), "the guest's reading held", || {
        let out = rig.cli(&["unassigned", "--json"]);
        async move {
            let rows: Vec<Value> = serde_json::from_str(&out?)?;
            Ok((!rows.is_empty()).then_some(rows))
        }
    })
    .await?;
    ensure!(held.len() == 1, "one reading held: {held:?}");
    ensure!(
        rig.status()?["unassigned"] == 1,
        "`status` counts the held reading"
    );
    ensure!(held[0]["user_index"] == guest, "{held:?}");
    let held_at = held[0]["recorded_at_ms"]
        .as_i64()
        .context("recorded_at_ms")?;
    // Some time passes before the owner assigns it: the original time stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let assigned_at = now_ms();
    rig.cli(&["assign", &held[0]["id"].to_string(), &spouse.did])?;
    collector
        .wait_for(Duration::from_secs(60), "the assigned reading", |e| {
            readings_of(e, &spouse_slot).len() >= 2
        })
        .await?;
    // On every link the gateway proves each mapped user's consent code (a
    // shared device sends a user's data only to a collector that did).
    let log = gw.log_text();
    ensure!(
        log.matches("user consent given").count() >= 3 && !log.contains("user consent refused"),
        "consent for both mapped users on the link"
    );
    let left: Vec<Value> = serde_json::from_str(&rig.cli(&["unassigned", "--json"])?)?;
    ensure!(left.is_empty(), "nothing held once sent: {left:?}");
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, _) = after_stop(&rig, &collector).await?;

    // Each slot's readings are its user's, sealed with its patient's key,
    // at their true times; the scale itself sends none.
    let truth = read_truth(&truth_path)?;
    let spouse_key = DataKey::new(SPOUSE_KEY_ID, SPOUSE_KEY);
    ensure!(
        check_slot(
            &envelopes,
            &rig.gateway_id,
            &owner_slot,
            &rig.data_key,
            &truth,
            ("scale0", first)
        )?
        .len()
            == 1,
        "one reading of the owner's user"
    );
    let spouse_times: Vec<i64> = by_seq(&envelopes, &spouse_slot)?
        .into_iter()
        .map(|(_, (_, r))| r.recorded_at_ms)
        .collect();
    ensure!(spouse_times.len() == 2, "{spouse_times:?}");
    ensure!(
        check_slot(
            &envelopes,
            &rig.gateway_id,
            &cuff_slot,
            &spouse_key,
            &truth,
            ("bp0", cuff_user)
        )?
        .len()
            == 1,
        "one reading of the cuff's user"
    );
    let sent_by_second = measured_by(&truth, "scale0", second);
    let sent_by_guest = measured_by(&truth, "scale0", guest);
    ensure!(sent_by_second.len() == 1 && sent_by_guest.len() == 1);
    let mut spouse_truth = truth.clone();
    for t in &mut spouse_truth {
        if t.measurement["user"] == guest {
            t.measurement["user"] = second.into();
        }
    }
    check_slot(
        &envelopes,
        &rig.gateway_id,
        &spouse_slot,
        &spouse_key,
        &spouse_truth,
        ("scale0", second),
    )?;
    let guest_at = sent_by_guest[0].true_time_ms().context("a time stamp")?;
    ensure!(
        spouse_times.contains(&held_at)
            && (held_at - guest_at).abs() <= 2_000
            && held_at < assigned_at - 2_000,
        "the assigned reading keeps its original time {} (held at {held_at}, assigned at {assigned_at}): {spouse_times:?}",
        guest_at
    );
    ensure!(
        readings_of(&envelopes, &scale).is_empty() && readings_of(&envelopes, &cuff).is_empty(),
        "a shared scale's readings go to its users, never to the scale"
    );

    // Stored under exactly one patient each.
    let stored = eventually(Duration::from_secs(60), "four readings stored", || async {
        let rows: Vec<(String, uuid::Uuid)> = sqlx::query_as(
            "SELECT d.device_id, h.user_id FROM (SELECT * FROM health_data_body_weight
                     UNION ALL SELECT * FROM health_data_blood_pressure) h
               JOIN iot_devices d ON d.id = h.device_id WHERE h.verified",
        )
        .fetch_all(&db.pool)
        .await?;
        Ok((rows.len() >= 4).then_some(rows))
    })
    .await;
    let rows = or_quarantined(&db.pool, stored).await?;
    let mut under: HashMap<(String, uuid::Uuid), usize> = HashMap::new();
    for r in rows {
        *under.entry(r).or_default() += 1;
    }
    ensure!(
        under
            == HashMap::from([
                ((owner_slot.clone(), owner_id), 1),
                ((spouse_slot.clone(), spouse.id), 2),
                ((cuff_slot.clone(), spouse.id), 1),
            ]),
        "{under:?}"
    );

    // The scale, the cuff and their user slots share one address: none of
    // them is taken for a re-pairing of another.
    let inactive: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT device_id, bluetooth_address FROM iot_devices
          WHERE gateway_id = $1 AND (NOT is_active OR bluetooth_address IS NULL)",
    )
    .bind(GW)
    .fetch_all(&db.pool)
    .await?;
    ensure!(inactive.is_empty(), "devices let go of: {inactive:?}");

    // Row-level security: each patient reads their own; the spouse's
    // clinician reads the spouse's only.
    ensure_api_login(&db.pool).await?;
    let ring = logs.path().join("api-keys");
    std::fs::write(
        &ring,
        format!(
            "{TEST_DATA_KEY_ID} = {}\n{SPOUSE_KEY_ID} = {}\n",
            hex::encode(TEST_DATA_KEY),
            hex::encode(SPOUSE_KEY)
        ),
    )?;
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o600))?;
    let api = ApiProcess::start(&db, None, &ring, zk.dir.path(), logs.path()).await?;
    let owner = User {
        id: owner_id,
        did: "the owner".into(),
        token: owner_token,
    };
    let clinician = user(&db.pool, "CLINICIAN", "the spouse's doctor").await?;
    hailan_ingest::admin::grant(&db.pool, &spouse.did, &clinician.did, None, None).await?;
    ensure!(observations(&api, &owner, owner_id).await? == Some(1));
    ensure!(observations(&api, &spouse, spouse.id).await? == Some(3));
    ensure!(observations(&api, &clinician, spouse.id).await? == Some(3));
    for (who, whose) in [
        (&owner, spouse.id),
        (&spouse, owner_id),
        (&clinician, owner_id),
    ] {
        let seen = observations(&api, who, whose).await?;
        ensure!(
            seen.is_none() || seen == Some(0),
            "{} reads {seen:?} of another patient's readings",
            who.did
        );
    }
    Ok(())
}

/// A gateway account of the development broker (xtask/src/services.rs).
const GW_GATED: &str = "gw-shared-2";

/// Some shared devices hand a user's queued measurements only to a link
/// where that user consented, one user at a time: the gateway consents for
/// the next mapped user only once the last one's measurements have come,
/// so two users' measurements taken while no gateway listened all arrive
/// on the next link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_gated_scale_hands_over_every_mapped_users_queued_measurements() -> Result<()> {
    let zk = DevZk::new()?;
    let logs = tempfile::tempdir()?;
    let truth_path = logs.path().join("truth.jsonl");
    let broker = Broker::shared();
    let sim = hailan_firmware_sim::harness::SimHarness::start(&[
        "--devices",
        "scale=1",
        "--seed",
        "9",
        "--speed",
        "4",
        "--ground-truth",
        &truth_path.display().to_string(),
        "--faults",
        "consent-gated=scale0",
    ])?;
    let (mut sim, rig, devices) = pair_all(sim, GW_GATED, &broker, &zk, "", &[])?;
    let (address, _) = devices.iter().next().context("the scale paired")?;
    let [(first, first_consent)] = users(&mut sim, "scale0")?[..] else {
        bail!("the scale starts with one user");
    };
    let (first_slot, _) = map_user(&rig, address, Some(first), first_consent, None)?;
    let (second_slot, second) = map_user(&rig, address, None, 2222, None)?;
    // Measured while no gateway listens: they wait on the scale.
    for by in [first, second, first, second] {
        sim.sim.command(&format!("measure scale0 {by}"))?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    collector
        .wait_for(Duration::from_secs(60), "both users' measurements", |e| {
            readings_of(e, &first_slot).len() >= 2 && readings_of(e, &second_slot).len() >= 2
        })
        .await?;
    let exit = gw.terminate()?;
    ensure!(exit.success(), "gateway exit {exit}");
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    let truth = read_truth(&truth_path)?;
    for (slot, user) in [(&first_slot, first), (&second_slot, second)] {
        let times = check_slot(
            &envelopes,
            &rig.gateway_id,
            slot,
            &rig.data_key,
            &truth,
            ("scale0", user),
        )?;
        ensure!(times.len() == 2, "{slot}: {times:?}");
    }
    let held: Vec<Value> = serde_json::from_str(&rig.cli(&["unassigned", "--json"])?)?;
    ensure!(held.is_empty(), "nothing held: {held:?}");
    Ok(())
}
