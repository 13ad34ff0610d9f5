//! True connection slots (issue 18): `ble.max_connections` bounds the links
//! a gateway holds at once, not its connection attempts. Twelve devices —
//! four that stream (two heart-rate straps, two oximeters) and eight that
//! hand over measurements (cuffs, thermometers, scales, glucose meters) —
//! on four links: the simulator, standing in for the controller, counts the
//! links up at once and never sees more than four; one link is kept for the
//! hand-overs, so the fourth streaming device waits (the gauge says so); each
//! hand-over device connects when it advertises, hands over what it stored
//! while no gateway listened, and gives its link back once idle; every value
//! the devices sent reaches the broker.

use anyhow::{Context, Result};
use hailan_tests::gateway::*;
use hailan_tests::{DevZk, http_get, metric as gauge};
use std::time::Duration;

const HANDING_OVER: [&str; 8] = [
    "bp0", "bp1", "temp0", "temp1", "scale0", "scale1", "glucose0", "glucose1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_devices_share_four_links_and_every_value_arrives() -> Result<()> {
    let zk = DevZk::new()?;
    let tmp = tempfile::tempdir()?;
    let truth_path = tmp.path().join("truth.jsonl");
    let broker = Broker::shared();
    let metrics_port = hailan_tests::free_port()?;
    let (mut sim, rig, devices) = sim_and_pair(
        "hr=2,spo2=2,bp=2,temp=2,scale=2,glucose=2",
        &truth_path,
        "gw-slots-1",
        &broker,
        &zk,
        &format!(
            "[ble]\nmax_connections = 4\nidle_disconnect_s = 1\n\
             [pipeline]\nwindow_size = 4\nwindow_max_ms = 1000\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
        &[],
    )?;
    assert_eq!(devices.len(), 12);
    let names: Vec<(String, String)> = sim
        .sim
        .devices
        .iter()
        .map(|d| (d.name.clone(), d.address.clone()))
        .collect();
    let id_of = |name: &str| -> Result<String> {
        let (_, address) = names
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no simulated {name}"))?;
        devices
            .get(address)
            .cloned()
            .with_context(|| format!("{name} not paired"))
    };
    let handing_over: Vec<String> = HANDING_OVER
        .iter()
        .map(|n| id_of(n))
        .collect::<Result<_>>()?;
    // Measurements taken while no gateway listens: stored on the devices.
    for name in HANDING_OVER {
        sim.sim.command(&format!("measure {name}"))?;
    }
    let collector = Collector::start(&broker, &rig.gateway_id).await?;
    let mut gw = rig.start(&[])?;

    collector
        .wait_for(
            Duration::from_secs(120),
            "a reading from every hand-over device",
            |e| handing_over.iter().all(|id| !readings_of(e, id).is_empty()),
        )
        .await?;
    // Three streams and the hand-overs' one link: four at the most, and
    // the fourth streaming device waiting for a link of its own.
    let (_, peak) = sim.sim.links()?;
    assert_eq!(peak, 4, "links up at once (ble.max_connections = 4)");
    let (code, text) = http_get(metrics_port, "/metrics").await?;
    assert_eq!(code, 200, "{text}");
    let waiting = gauge(&text, "hailan_gateway_ble_slots_waiting").context("waiting gauge")?;
    assert!(waiting >= 1, "the fourth streaming device waits: {text}");
    let held = gauge(&text, "hailan_gateway_ble_slots_held").context("held gauge")?;
    assert!(
        (3..=4).contains(&held),
        "three streams, a hand-over or none: {text}"
    );
    let streaming: Vec<String> = ["hr0", "hr1", "spo20", "spo21"]
        .iter()
        .map(|n| id_of(n))
        .collect::<Result<_>>()?;
    let streams = |e: &[hailan_proto::envelope::Envelope]| {
        streaming
            .iter()
            .filter(|id| !readings_of(e, id).is_empty())
            .count()
    };
    collector
        .wait_for(Duration::from_secs(120), "three streams", |e| {
            streams(e) >= 3
        })
        .await?;

    // Hand-overs come back: a second round, taken while their links idle.
    let before: Vec<usize> = handing_over
        .iter()
        .map(|id| readings_of(&collector.envelopes(), id).len())
        .collect();
    for name in HANDING_OVER {
        sim.sim.command(&format!("measure {name}"))?;
    }
    collector
        .wait_for(
            Duration::from_secs(120),
            "a second reading from every hand-over device",
            |e| {
                handing_over
                    .iter()
                    .zip(&before)
                    .all(|(id, n)| readings_of(e, id).len() > *n)
            },
        )
        .await?;
    // Everything the devices sent until now reaches the broker.
    let envelopes = every_value_sent_arrives(
        &rig,
        &collector,
        &mut gw,
        &devices,
        &truth_path,
        Duration::from_secs(120),
    )
    .await?;
    assert_eq!(
        streams(&envelopes),
        3,
        "the fourth streaming device never had a link"
    );
    let (_, peak) = sim.sim.links()?;
    assert_eq!(peak, 4, "never more than four links");
    Ok(())
}
