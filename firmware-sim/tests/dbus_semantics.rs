//! BlueZ semantics checked with a raw D-Bus client (zbus), where btleplug
//! hides them: per-client discovery and notify sessions, error names, and
//! sessions dropped when a client leaves the bus. No environment variable is
//! involved, so these tests run in-process on their own private bus.

use futures::StreamExt;
use hailan_firmware_sim::harness::PrivateBus;
use hailan_firmware_sim::model::DeviceKind;
use hailan_firmware_sim::{SimConfig, Simulator};
use std::time::Duration;
use zbus::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const STEP: Duration = Duration::from_secs(15);

async fn call(
    conn: &Connection,
    path: &str,
    iface: &str,
    method: &str,
) -> Result<(), (String, String)> {
    conn.call_method(Some("org.bluez"), path, Some(iface), method, &())
        .await
        .map(|_| ())
        .map_err(|e| match e {
            zbus::Error::MethodError(name, desc, _) => (name.to_string(), desc.unwrap_or_default()),
            other => ("?".into(), other.to_string()),
        })
}

async fn char_path(conn: &Connection, device: &str, uuid: &str) -> anyhow::Result<String> {
    let om = zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination("org.bluez")?
        .path("/")?
        .build()
        .await?;
    for (path, ifaces) in om.get_managed_objects().await? {
        if !path.as_str().starts_with(device) {
            continue;
        }
        if let Some(props) = ifaces.get("org.bluez.GattCharacteristic1")
            && let Some(u) = props.get("UUID")
            && String::try_from(u.clone())?.starts_with(uuid)
        {
            return Ok(path.to_string());
        }
    }
    anyhow::bail!("no characteristic {uuid} under {device}")
}

async fn notifying(conn: &Connection, path: &str) -> anyhow::Result<bool> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination("org.bluez")?
        .path(path)?
        .build()
        .await?;
    let iface = zbus::names::InterfaceName::from_static_str("org.bluez.GattCharacteristic1")?;
    Ok(bool::try_from(props.get(iface, "Notifying").await?)?)
}

/// Run `body` against a simulator of `cfg` on a private bus (whose address
/// it is given), on a two-thread runtime.
fn with_simulator(
    cfg: SimConfig,
    body: impl AsyncFnOnce(Simulator, String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let bus = PrivateBus::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sim = Simulator::start(bus.address(), cfg).await?;
        body(sim, bus.address().to_string()).await
    })
}

#[test]
fn sessions_are_per_client_and_errors_have_bluez_names() -> anyhow::Result<()> {
    let cfg = SimConfig {
        devices: vec![(DeviceKind::Hr, 1)],
        ..SimConfig::default()
    };
    with_simulator(cfg, async |sim, bus| {
        let dev = sim.device("hr0").expect("hr0").path;
        let a = zbus::connection::Builder::address(bus.as_str())?
            .build()
            .await?;
        let b = zbus::connection::Builder::address(bus.as_str())?
            .build()
            .await?;
        let adapter = "/org/bluez/hci0";
        let a1 = "org.bluez.Adapter1";

        // Discovery is per client; the device appears through InterfacesAdded.
        let om = zbus::fdo::ObjectManagerProxy::builder(&a)
            .destination("org.bluez")?
            .path("/")?
            .build()
            .await?;
        let mut added = om.receive_interfaces_added().await?;
        call(&a, adapter, a1, "StartDiscovery")
            .await
            .map_err(anyhow_err)?;
        let e = call(&a, adapter, a1, "StartDiscovery")
            .await
            .expect_err("twice");
        assert_eq!(e.0, "org.bluez.Error.InProgress");
        let e = call(&b, adapter, a1, "StopDiscovery")
            .await
            .expect_err("not b's");
        assert_eq!(
            e,
            (
                "org.bluez.Error.Failed".into(),
                "No discovery started".into()
            )
        );
        tokio::time::timeout(STEP, async {
            while let Some(sig) = added.next().await {
                let args = sig.args()?;
                let p: OwnedObjectPath = args.object_path().clone().into();
                if p.as_str() == dev
                    && args
                        .interfaces_and_properties()
                        .contains_key("org.bluez.Device1")
                {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("signal stream ended")
        })
        .await??;

        // GATT on a disconnected device
        let d1 = "org.bluez.Device1";
        let e = call(&a, &dev, d1, "Disconnect")
            .await
            .expect_err("not connected");
        assert_eq!(e.0, "org.bluez.Error.NotConnected");
        call(&a, &dev, d1, "Connect").await.map_err(anyhow_err)?;
        let hrm = char_path(&a, &dev, "00002a37").await?;
        let c1 = "org.bluez.GattCharacteristic1";
        let e = a
            .call_method(
                Some("org.bluez"),
                hrm.as_str(),
                Some(c1),
                "ReadValue",
                &(std::collections::HashMap::<String, OwnedValue>::new(),),
            )
            .await
            .expect_err("notify-only");
        assert!(
            matches!(&e, zbus::Error::MethodError(n, Some(d), _) if n.as_str() == "org.bluez.Error.NotPermitted" && d == "Read not permitted"),
            "{e}"
        );

        // Notify sessions are per client.
        call(&a, &hrm, c1, "StartNotify")
            .await
            .map_err(anyhow_err)?;
        let e = call(&a, &hrm, c1, "StartNotify").await.expect_err("twice");
        assert_eq!(e.0, "org.bluez.Error.InProgress");
        let e = call(&b, &hrm, c1, "StopNotify").await.expect_err("not b's");
        assert_eq!(
            e,
            (
                "org.bluez.Error.Failed".into(),
                "No notify session started".into()
            )
        );
        call(&b, &hrm, c1, "StartNotify")
            .await
            .map_err(anyhow_err)?;
        call(&b, &hrm, c1, "StopNotify").await.map_err(anyhow_err)?;
        assert!(notifying(&b, &hrm).await?, "a still holds a session");

        // When a client leaves the bus, BlueZ drops its sessions.
        let watcher = zbus::fdo::PropertiesProxy::builder(&b)
            .destination("org.bluez")?
            .path(hrm.as_str())?
            .build()
            .await?;
        let mut changes = watcher.receive_properties_changed().await?;
        drop(om);
        drop(added);
        a.close().await?;
        tokio::time::timeout(STEP, async {
            while let Some(sig) = changes.next().await {
                let args = sig.args()?;
                if let Some(v) = args.changed_properties().get("Notifying")
                    && !bool::try_from(v)?
                {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("signal stream ended")
        })
        .await??;
        assert!(!notifying(&b, &hrm).await?);
        anyhow::Ok(())
    })
}

/// Wait (up to [`STEP`]) until every path in `wanted` is on the bus.
async fn wait_for_objects(
    om: &zbus::fdo::ObjectManagerProxy<'_>,
    wanted: &[String],
) -> anyhow::Result<()> {
    tokio::time::timeout(STEP, async {
        loop {
            let objects = om.get_managed_objects().await?;
            if wanted
                .iter()
                .all(|w| objects.keys().any(|k| k.as_str() == w))
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

fn anyhow_err(e: (String, String)) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.0, e.1)
}

async fn prop_bool(conn: &Connection, path: &str, iface: &str, name: &str) -> anyhow::Result<bool> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination("org.bluez")?
        .path(path)?
        .build()
        .await?;
    let iface = zbus::names::InterfaceName::try_from(iface.to_string())?;
    Ok(bool::try_from(props.get(iface, name).await?)?)
}

/// With two adapters each one has its own object for a device, its own
/// bonds and its own power; the device holds one link at a time.
#[test]
fn several_adapters_have_their_own_objects_bonds_and_power() -> anyhow::Result<()> {
    let cfg = SimConfig {
        devices: vec![(DeviceKind::Hr, 1), (DeviceKind::Bp, 1)],
        adapters: 2,
        ..SimConfig::default()
    };
    with_simulator(cfg, async |sim, bus| {
        let hr = sim.device("hr0").expect("hr0").path;
        let bp = sim.device("bp0").expect("bp0").path;
        let on1 = |p: &str| p.replacen("/org/bluez/hci0/", "/org/bluez/hci1/", 1);
        let c = zbus::connection::Builder::address(bus.as_str())?
            .build()
            .await?;
        let (a1, d1) = ("org.bluez.Adapter1", "org.bluez.Device1");
        for adapter in ["/org/bluez/hci0", "/org/bluez/hci1"] {
            call(&c, adapter, a1, "StartDiscovery")
                .await
                .map_err(anyhow_err)?;
        }
        // Both adapters discover both devices.
        let om = zbus::fdo::ObjectManagerProxy::builder(&c)
            .destination("org.bluez")?
            .path("/")?
            .build()
            .await?;
        let wanted = [hr.clone(), on1(&hr), bp.clone(), on1(&bp)];
        wait_for_objects(&om, &wanted).await?;

        // One link at a time: through hci0, then hci1 is refused.
        call(&c, &hr, d1, "Connect").await.map_err(anyhow_err)?;
        let e = call(&c, &on1(&hr), d1, "Connect")
            .await
            .expect_err("linked through hci0");
        assert_eq!(
            e,
            (
                "org.bluez.Error.Failed".into(),
                "le-connection-abort-by-local".into()
            )
        );
        assert!(prop_bool(&c, &hr, d1, "Connected").await?);
        assert!(!prop_bool(&c, &on1(&hr), d1, "Connected").await?);
        assert_eq!(sim.linked_through("hr0"), Some(0));

        // A bond made through hci0 is not one through hci1.
        call(&c, &bp, d1, "Pair").await.map_err(anyhow_err)?;
        assert!(prop_bool(&c, &bp, d1, "Paired").await?);
        assert!(!prop_bool(&c, &on1(&bp), d1, "Paired").await?);
        call(&c, &bp, d1, "Disconnect").await.map_err(anyhow_err)?;

        // Powering hci1 off leaves hci0's link; powering hci0 off drops it.
        sim.inject(hailan_firmware_sim::Fault::PowerOff {
            adapter: Some("hci1".into()),
            duration: None,
        })
        .await?;
        assert_eq!(sim.links_on(0), 1);
        let e = call(&c, &on1(&bp), d1, "Connect")
            .await
            .expect_err("hci1 is off");
        assert_eq!(e.0, "org.bluez.Error.NotReady");
        sim.inject(hailan_firmware_sim::Fault::PowerOff {
            adapter: None,
            duration: None,
        })
        .await?;
        assert_eq!(sim.links().0, 0);
        assert!(!prop_bool(&c, &hr, d1, "Connected").await?);

        // Back on, hci1 takes the device's link.
        sim.inject(hailan_firmware_sim::Fault::PowerOn {
            adapter: Some("hci1".into()),
        })
        .await?;
        call(&c, &on1(&hr), d1, "Connect")
            .await
            .map_err(anyhow_err)?;
        assert_eq!(sim.linked_through("hr0"), Some(1));
        assert!(prop_bool(&c, &on1(&hr), d1, "Connected").await?);
        let e = sim
            .inject(hailan_firmware_sim::Fault::PowerOff {
                adapter: Some("hci2".into()),
                duration: None,
            })
            .await
            .expect_err("there is no hci2");
        assert!(e.to_string().contains("hci2"), "{e}");

        // Unplugged, hci1 and everything under it leave the bus; plugged
        // back, it is powered again.
        sim.inject(hailan_firmware_sim::Fault::Unplug {
            adapter: "hci1".into(),
        })
        .await?;
        assert_eq!(sim.links().0, 0);
        let objects = om.get_managed_objects().await?;
        assert!(
            !objects
                .keys()
                .any(|k| k.as_str().starts_with("/org/bluez/hci1")),
            "nothing of hci1 is left"
        );
        assert!(
            objects.keys().any(|k| k.as_str() == hr),
            "hci0's objects stay"
        );
        sim.inject(hailan_firmware_sim::Fault::Plug {
            adapter: "hci1".into(),
        })
        .await?;
        assert!(prop_bool(&c, "/org/bluez/hci1", a1, "Powered").await?);
        anyhow::Ok(())
    })
}

/// The next User Control Point indication.
async fn ucp_answer(
    changes: &mut (impl futures::Stream<Item = zbus::fdo::PropertiesChanged> + Unpin),
) -> anyhow::Result<hailan_proto::gatt::uds::UserControl> {
    tokio::time::timeout(STEP, async {
        while let Some(sig) = changes.next().await {
            let args = sig.args()?;
            if let Some(v) = args.changed_properties().get("Value") {
                let bytes: Vec<u8> = v.try_clone()?.try_into()?;
                return Ok(hailan_proto::gatt::uds::UserControl::decode(&bytes)?);
            }
        }
        anyhow::bail!("signal stream ended")
    })
    .await?
}

/// A shared scale's User Data Service: the User Control Point refuses a
/// client that did not enable its indications, answers a wrong consent code
/// "user not authorized", a right one success (User Index then names the
/// user), registers a new user with a body of its own, and a measurement by
/// that user carries its index.
#[test]
fn a_shared_scale_keeps_user_slots_behind_consent_codes() -> anyhow::Result<()> {
    use hailan_proto::gatt::uds::{UCP_SUCCESS, UCP_USER_NOT_AUTHORIZED, UserControl};
    let cfg = SimConfig {
        devices: vec![(DeviceKind::Scale, 1)],
        ..SimConfig::default()
    };
    with_simulator(cfg, async |sim, bus| {
        let dev = sim.device("scale0").expect("scale0").path;
        let c = zbus::connection::Builder::address(bus.as_str())?
            .build()
            .await?;
        call(
            &c,
            "/org/bluez/hci0",
            "org.bluez.Adapter1",
            "StartDiscovery",
        )
        .await
        .map_err(anyhow_err)?;
        let om = zbus::fdo::ObjectManagerProxy::builder(&c)
            .destination("org.bluez")?
            .path("/")?
            .build()
            .await?;
        wait_for_objects(&om, std::slice::from_ref(&dev)).await?;
        call(&c, &dev, "org.bluez.Device1", "Connect")
            .await
            .map_err(anyhow_err)?;
        let c1 = "org.bluez.GattCharacteristic1";
        let ucp = char_path(&c, &dev, "00002a9f").await?;
        let index = char_path(&c, &dev, "00002a9a").await?;
        let weight = char_path(&c, &dev, "00002a9d").await?;
        let no_options = std::collections::HashMap::<String, OwnedValue>::new();
        let write = |bytes: Vec<u8>| {
            let (c, ucp, opts) = (&c, ucp.clone(), no_options.clone());
            async move {
                c.call_method(
                    Some("org.bluez"),
                    ucp.as_str(),
                    Some(c1),
                    "WriteValue",
                    &(bytes, opts),
                )
                .await
                .map(drop)
            }
        };
        let e = write(UserControl::DeleteUserData.encode())
            .await
            .expect_err("indications off");
        assert!(e.to_string().contains("0xfd"), "{e}");

        let props = zbus::fdo::PropertiesProxy::builder(&c)
            .destination("org.bluez")?
            .path(ucp.as_str())?
            .build()
            .await?;
        let mut changes = props.receive_properties_changed().await?;
        call(&c, &ucp, c1, "StartNotify")
            .await
            .map_err(anyhow_err)?;
        let users = sim.users("scale0");
        let &[(user, consent)] = users.as_slice() else {
            anyhow::bail!("one seeded user, not {users:?}");
        };
        write(
            UserControl::Consent {
                user_index: user,
                consent: (consent + 1) % 10000,
            }
            .encode(),
        )
        .await?;
        assert_eq!(
            ucp_answer(&mut changes).await?,
            UserControl::Response {
                request_op_code: 2,
                value: UCP_USER_NOT_AUTHORIZED,
                user_index: None
            }
        );
        write(
            UserControl::Consent {
                user_index: user,
                consent,
            }
            .encode(),
        )
        .await?;
        assert_eq!(
            ucp_answer(&mut changes).await?,
            UserControl::Response {
                request_op_code: 2,
                value: UCP_SUCCESS,
                user_index: None
            }
        );
        let read = c
            .call_method(
                Some("org.bluez"),
                index.as_str(),
                Some(c1),
                "ReadValue",
                &(no_options.clone(),),
            )
            .await?;
        assert_eq!(read.body().deserialize::<Vec<u8>>()?, vec![user]);

        write(UserControl::RegisterNewUser { consent: 4321 }.encode()).await?;
        let UserControl::Response {
            value: UCP_SUCCESS,
            user_index: Some(new),
            ..
        } = ucp_answer(&mut changes).await?
        else {
            anyhow::bail!("register new user refused");
        };
        assert!(sim.users("scale0").contains(&(new, 4321)));

        // A weighing by the new user names it.
        call(&c, &weight, c1, "StartNotify")
            .await
            .map_err(anyhow_err)?;
        let mut truth = sim.subscribe_truth();
        sim.measure_by("scale0", new)?;
        let sent = tokio::time::timeout(STEP, async {
            loop {
                let r = truth.recv().await?;
                if r.characteristic == "2a9d" {
                    return anyhow::Ok(r);
                }
            }
        })
        .await??;
        let json = serde_json::to_value(&sent.measurement)?;
        assert_eq!(
            json.pointer("/user").and_then(|u| u.as_u64()),
            Some(u64::from(new)),
            "{json}"
        );
        assert!(sim.measure_by("scale0", 200).is_err(), "no such user");
        anyhow::Ok(())
    })
}
