//! Pairing as an owner does it: `hailan-gateway pair` against devices that
//! show a passkey, ask to compare a number, want a legacy PIN, or pair Just
//! Works — the simulator as BlueZ calling the gateway's registered agent.
//! Standard input is not a terminal here, so whatever a device needs must
//! come from the flags, and a missing one fails at once with the command.

use anyhow::{Context, Result};
use hailan_firmware_sim::harness::{SimDeviceLine, SimHarness};
use hailan_tests::DevZk;
use hailan_tests::gateway::*;
use std::time::{Duration, Instant};

fn device<'a>(sim: &'a SimHarness, name: &str) -> Result<&'a SimDeviceLine> {
    sim.sim
        .devices
        .iter()
        .find(|d| d.name == name)
        .with_context(|| format!("no simulated {name}"))
}

/// `pair` that must fail: its stderr, and how long it took.
fn refused(rig: &GatewayRig, args: &[&str]) -> Result<(String, Duration)> {
    let started = Instant::now();
    let e = rig
        .cli(args)
        .err()
        .with_context(|| format!("{args:?} succeeded"))?;
    Ok((format!("{e:#}"), started.elapsed()))
}

fn paired_devices(rig: &GatewayRig) -> Result<usize> {
    let listed: serde_json::Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    listed.as_array().map(Vec::len).context("devices --json")
}

#[test]
fn passkey_comparison_and_pin_devices_pair_only_with_the_right_answer() -> Result<()> {
    let zk = DevZk::new()?;
    let sim = SimHarness::start(&[
        "--devices",
        "bp=2,glucose=2,temp=1",
        "--seed",
        "5",
        "--pairing",
        "bp0=numeric,bp1=pin:2468,glucose1=passkey:004711",
    ])?;
    let rig = GatewayRig::new("gw-e2e-5", sim.bus_address(), &Broker::shared(), &zk, "")?;

    // Passkey entry: the meter shows a number (the simulator prints it).
    let glucose = device(&sim, "glucose0")?;
    let shown = glucose
        .pairing
        .strip_prefix("passkey ")
        .context("a glucose meter shows a passkey")?
        .to_owned();
    let addr = glucose.address.as_str();
    // No terminal, no flag: fails at once, naming the command to run.
    let (e, took) = refused(&rig, &["pair", addr])?;
    assert!(
        e.contains(&format!("hailan-gateway pair {addr} --passkey NNNNNN")),
        "{e}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // A wrong passkey: AuthenticationFailed, nothing stored.
    let wrong = format!("{:06}", (shown.parse::<u32>()? + 1) % 1_000_000);
    let (e, _) = refused(&rig, &["pair", addr, "--passkey", &wrong])?;
    assert!(e.contains("AuthenticationFailed"), "{e}");
    assert_eq!(paired_devices(&rig)?, 0, "a failed pairing stores nothing");
    // The right one bonds.
    let ok = rig.pair_with(addr, &["--passkey".into(), shown.clone()])?;
    assert_eq!(ok["bonded"], true, "{ok}");
    assert_eq!(paired_devices(&rig)?, 1);
    // A passkey with a leading zero is typed as shown.
    let g1 = device(&sim, "glucose1")?;
    assert_eq!(g1.pairing, "passkey 004711");
    rig.pair_with(&g1.address, &["--passkey".into(), "004711".into()])?;

    // Numeric comparison: refused without --confirm (naming the number and
    // the flag), paired with it.
    let cuff = device(&sim, "bp0")?;
    let number = cuff
        .pairing
        .strip_prefix("numeric ")
        .context("bp0 compares a number")?;
    let (e, _) = refused(&rig, &["pair", &cuff.address])?;
    assert!(e.contains(number) && e.contains("--confirm"), "{e}");
    assert_eq!(paired_devices(&rig)?, 2);
    let ok = rig.pair_with(&cuff.address, &["--confirm".into()])?;
    assert_eq!(ok["bonded"], true, "{ok}");

    // Legacy PIN: wrong PIN fails with its cause, the right one pairs.
    let pin_cuff = device(&sim, "bp1")?;
    assert_eq!(pin_cuff.pairing, "pin 2468");
    let (e, _) = refused(&rig, &["pair", &pin_cuff.address, "--pin", "1357"])?;
    assert!(e.contains("AuthenticationFailed"), "{e}");
    let (e, _) = refused(&rig, &["pair", &pin_cuff.address])?;
    assert!(e.contains("--pin PIN"), "{e}");
    rig.pair_with(&pin_cuff.address, &["--pin".into(), "2468".into()])?;

    // Just Works: no prompt, no flag.
    let thermometer = device(&sim, "temp0")?;
    assert_eq!(thermometer.pairing, "just-works");
    rig.pair(&thermometer.address)?;
    assert_eq!(paired_devices(&rig)?, 5);

    // `forget` removes the bond from BlueZ too: pairing the meter again is a
    // new pairing that asks for its passkey (a bond left behind would make
    // BlueZ answer "already paired" without asking).
    let out = rig.cli(&["forget", addr])?;
    assert!(out.contains("forgot"), "{out}");
    let (e, _) = refused(&rig, &["pair", addr])?;
    assert!(e.contains("--passkey NNNNNN"), "{e}");
    rig.pair_with(addr, &["--passkey".into(), shown])?;
    Ok(())
}

#[test]
fn a_device_out_of_pairing_mode_fails_with_authentication_timeout() -> Result<()> {
    let zk = DevZk::new()?;
    let mut sim = SimHarness::start(&["--devices", "glucose=1", "--seed", "6"])?;
    let rig = GatewayRig::new("gw-e2e-5", sim.bus_address(), &Broker::shared(), &zk, "")?;
    sim.sim.command("fault pairing-mode-timeout=glucose0")?;
    let glucose = device(&sim, "glucose0")?.clone();
    let flags = glucose.pair_flags();
    let mut args = vec!["pair", glucose.address.as_str()];
    args.extend(flags.iter().map(String::as_str));
    let (e, _) = refused(&rig, &args)?;
    assert!(
        e.contains("AuthenticationTimeout") && e.contains("pairing mode"),
        "{e}"
    );
    assert_eq!(paired_devices(&rig)?, 0);
    // Back in pairing mode: it pairs.
    rig.pair_with(&glucose.address, &flags)?;
    assert_eq!(paired_devices(&rig)?, 1);
    Ok(())
}

/// `devices --json` of the rig: device id → needs_repair.
fn needs_repair(rig: &GatewayRig, device_id: &str) -> Result<bool> {
    let listed: serde_json::Value = serde_json::from_str(&rig.cli(&["devices", "--json"])?)?;
    listed
        .as_array()
        .and_then(|a| a.iter().find(|d| d["device_id"] == device_id))
        .and_then(|d| d["needs_repair"].as_bool())
        .with_context(|| format!("{device_id} in devices --json: {listed}"))
}

/// A cuff that forgot its bond (battery change) is marked `needs_repair` on
/// its next connection and never silently bonded again; once the owner pairs
/// it again, its readings continue on the same device id and seq line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bond_waits_for_the_owner_and_repairing_keeps_the_seq_line() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let broker = Broker::shared();
    let (mut sim, rig, devices) = sim_and_pair(
        "bp=1",
        &tmp.path().join("truth.jsonl"),
        "gw-e2e-11",
        &broker,
        &zk,
        "",
        &[],
    )?;
    let cuff = id_of_kind(&devices, "bp")?;
    let address = device(&sim, "bp0")?.address.clone();
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let mut gw = rig.start(&[])?;
    let seqs = |e: &[hailan_proto::envelope::Envelope]| -> Vec<u64> {
        readings_of(e, &cuff).iter().map(|(_, r)| r.seq).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // A first measurement flows (the session may still be connecting).
    while seqs(&collector.envelopes()).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no first cuff reading");
        sim.sim.command("measure bp0")?;
        collector
            .wait_for(Duration::from_secs(3), "a cuff reading", |e| {
                !seqs(e).is_empty()
            })
            .await
            .ok();
    }

    // The cuff loses its bond and the link drops: the reconnect finds the
    // measurement refused on the bonded link.
    sim.sim.command("fault bond-lost=bp0")?;
    sim.sim.command("fault drop=bp0")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !needs_repair(&rig, &cuff)? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{cuff} never marked needs_repair"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = rig.status()?;
    assert_eq!(
        status["devices_needing_repair"][0],
        cuff.as_str(),
        "{status}"
    );
    let table = rig.cli(&["devices"])?;
    assert!(table.contains("needs repair"), "{table}");
    let before = seqs(&collector.envelopes()).len();

    // The owner pairs it again: BlueZ's stale bond is removed, a new one
    // made; same device id, and the next reading takes the next seq.
    let out = rig.cli(&["pair", &address])?;
    assert!(
        out.contains(&format!("again as {cuff}")) && out.contains("same device id"),
        "{out}"
    );
    assert!(!needs_repair(&rig, &cuff)?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs(&collector.envelopes()).len() <= before {
        if Instant::now() >= deadline {
            let log =
                std::fs::read_to_string(rig.dir.path().join("gateway.log")).unwrap_or_default();
            let status = rig.status()?;
            anyhow::bail!("no cuff reading after re-pairing; status {status}; gateway log:\n{log}");
        }
        sim.sim.command("measure bp0")?;
        collector
            .wait_for(
                Duration::from_secs(3),
                "a cuff reading after re-pairing",
                |e| seqs(e).len() > before,
            )
            .await
            .ok();
    }
    let exit = gw.terminate()?;
    assert!(exit.success());
    let (envelopes, _) = after_stop(&rig, &collector).await?;
    // One seq line, no gap, no second registration.
    let line = by_seq(&envelopes, &cuff)?;
    assert!(line.len() > before, "{} readings", line.len());
    let registrations = envelopes
        .iter()
        .filter(|e| matches!(&e.body, hailan_proto::envelope::Body::Registration(_)))
        .count();
    assert_eq!(registrations, 1, "re-pairing registers nothing new");
    Ok(())
}
