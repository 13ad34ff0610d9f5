//! Several adapters (issue 18), with real processes: a simulator serving
//! `hci0` and `hci1`, a gateway with `ble.adapters = ["hci0", "hci1"]`.
//! Devices spread over both adapters; a cuff paired through the first is
//! bonded through the second too with `pair --adapter hci1`; then `hci0`
//! powers off for good (rfkill-blocked) mid-stream: every device it served
//! moves to `hci1`, keeps delivering, and every value any device sent
//! reaches the broker, proven and exact.

use anyhow::{Context, Result};
use hailan_firmware_sim::harness::SimHarness;
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, eventually, free_port, http_get, metric};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_two_adapters_loses_nothing_when_one_powers_off() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let truth_arg = truth_path.display().to_string();
    let broker = Broker::shared();
    let metrics_port = free_port()?;
    let sim = SimHarness::start(&[
        "--devices",
        "hr=2,temp=1,bp=1",
        "--seed",
        "7",
        "--speed",
        "4",
        "--adapters",
        "2",
        "--ground-truth",
        &truth_arg,
    ])?;
    let (mut sim, rig, devices) = pair_all(
        sim,
        "gw-adapters-1",
        &broker,
        &zk,
        &format!(
            "[ble]\nadapters = [\"hci0\", \"hci1\"]\n\
             [pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
        &[],
    )?;
    let names: Vec<(String, String)> = sim
        .sim
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.address.clone()))
        .collect();
    let address_of = |name: &str| -> Result<String> {
        names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .with_context(|| format!("no simulated {name}"))
    };
    // Pairing went through hci0; the cuff's bond through hci1 lets it move.
    let out = rig.cli(&["pair", &address_of("bp0")?, "--adapter", "hci1"])?;
    assert!(out.contains("through hci1 as well"), "{out}");

    let (collector, mut gw) =
        start_all_connected(&rig, &broker, &devices, Duration::from_secs(60)).await?;
    // Spread: each adapter holds some of the links.
    let mut placed: HashMap<String, String> = HashMap::new();
    for (name, _) in &names {
        let adapter = eventually(Duration::from_secs(30), &format!("{name} linked"), || {
            let linked = sim.sim.linked(name);
            async move { linked }
        })
        .await?;
        placed.insert(name.clone(), adapter);
    }
    let on_hci0: Vec<&String> = placed
        .iter()
        .filter(|(_, a)| *a == "hci0")
        .map(|(n, _)| n)
        .collect();
    assert!(
        !on_hci0.is_empty() && on_hci0.len() < names.len(),
        "devices spread over both adapters: {placed:?}"
    );

    let adapters_up = || async move {
        let (code, text) = http_get(metrics_port, "/metrics").await?;
        anyhow::ensure!(code == 200, "{text}");
        metric(&text, "hailan_gateway_ble_adapters_up").context("adapters_up gauge")
    };
    eventually(Duration::from_secs(10), "2 adapters up", || async move {
        Ok((adapters_up().await? == 2).then_some(()))
    })
    .await?;

    // hci0 powers off mid-stream and stays off.
    let before: HashMap<String, usize> = devices
        .values()
        .map(|id| (id.clone(), readings_of(&collector.envelopes(), id).len()))
        .collect();
    sim.sim.command("fault power-off=hci0+600s")?;
    for name in ["temp0", "bp0"] {
        sim.sim.command(&format!("measure {name}"))?;
    }
    for (name, _) in &names {
        eventually(
            Duration::from_secs(60),
            &format!("{name} linked through hci1"),
            || {
                let linked = sim.sim.linked(name);
                async move { Ok(linked?.filter(|a| a == "hci1").map(drop)) }
            },
        )
        .await?;
    }
    collector
        .wait_for(
            Duration::from_secs(60),
            "new readings from every device after hci0 went off",
            |e| {
                devices
                    .values()
                    .all(|id| readings_of(e, id).len() > before[id])
            },
        )
        .await?;

    eventually(Duration::from_secs(10), "1 adapter up", || async move {
        Ok((adapters_up().await? == 1).then_some(()))
    })
    .await?;

    // Nothing lost: everything the devices sent until now reaches the broker.
    every_value_sent_arrives(
        &rig,
        &collector,
        &mut gw,
        &devices,
        &truth_path,
        Duration::from_secs(60),
    )
    .await?;
    let log = gw.log_text();
    assert!(
        log.contains("moves to another adapter"),
        "the log says who moved"
    );
    Ok(())
}
