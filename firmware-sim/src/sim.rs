//! The simulation engine: owns `org.bluez` on a bus, runs the devices, applies
//! faults, records the ground truth.

use crate::bluez::{
    Adapter, AgentManager, Agents, BluezError, CharIface, DescIface, DeviceIface, ServiceIface,
};
use crate::device::{Char, Device, DeviceInfo, on_adapter};
use crate::encode;
use crate::faults::{Fault, ScheduledFault};
use crate::model::{DeviceKind, Measurement, Physiology};
use crate::pairing::Pairing;
use crate::schedule::Schedule;
use crate::truth::{TruthEvent, TruthLog, TruthRecord, hex};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zbus::Connection;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Value;

/// How long BlueZ waits for an agent's answer (bluetoothd's agent request timeout).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many devices of each kind.
    pub devices: Vec<(DeviceKind, usize)>,
    /// Physiology seed.
    pub seed: u64,
    /// Time acceleration for device schedules (1.0 = real time: heart rate
    /// 1 Hz, cuff every 3 min …). Radio behaviour (discovery, RSSI) is not scaled.
    pub speed: f64,
    /// Write the ground truth as JSON lines here.
    pub ground_truth: Option<PathBuf>,
    /// Faults to apply on a schedule.
    pub faults: Vec<ScheduledFault>,
    /// Pairing methods other than the models' own: (device name, method
    /// as [`Pairing::parse`] reads it).
    pub pairing: Vec<(String, String)>,
    /// How many adapters (`hci0` … `hci{n-1}`, 1 to 32). Every device is
    /// in range of all of them; it takes one link at a time.
    pub adapters: usize,
    /// How often devices measure ([`Rates`]).
    pub rates: Rates,
    /// Replay this much of the past first: the devices' clock starts that
    /// far back and runs at `speed` until it has caught up with now, then in
    /// real time (schedules too). Per process ([`crate::model::start_replay`]).
    pub replay: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: DeviceKind::ALL.iter().map(|k| (*k, 1)).collect(),
            seed: 1,
            speed: 1.0,
            ground_truth: None,
            faults: vec![],
            pairing: vec![],
            adapters: 1,
            rates: Rates::Demo,
            replay: None,
        }
    }
}

/// Parse `hr=5,bp=1,…` into device counts.
pub fn parse_devices(spec: &str) -> Result<Vec<(DeviceKind, usize)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (k, n) = item.split_once('=').unwrap_or((item, "1"));
            let kind = DeviceKind::parse(k).ok_or(format!(
                "unknown device kind {k:?} (hr, bp, spo2, temp, glucose, scale)"
            ))?;
            let n: usize = n.parse().map_err(|_| format!("bad count in {item:?}"))?;
            Ok((kind, n))
        })
        .collect()
}

#[derive(Debug)]
pub(crate) struct AdapterState {
    powered: bool,
    rfkill_until: Option<Instant>,
    discovery_clients: BTreeSet<String>,
    discovery_started: Option<Instant>,
    stalled_until: Option<Option<Instant>>,
    /// Its objects are on the bus (false after [`Fault::Unplug`]).
    plugged: bool,
}

impl AdapterState {
    fn new() -> AdapterState {
        AdapterState {
            powered: true,
            rfkill_until: None,
            discovery_clients: BTreeSet::new(),
            discovery_started: None,
            stalled_until: None,
            plugged: true,
        }
    }
}

/// Links up now on all adapters, and the most ever up at once (`links` command).
#[derive(Debug, Default)]
struct Links {
    now: usize,
    peak: usize,
}

/// Shared engine state (D-Bus interfaces hold an `Arc` of it).
pub struct Inner {
    conn: Connection,
    cfg: SimConfig,
    adapters: Vec<Mutex<AdapterState>>,
    links: Mutex<Links>,
    pub(crate) devices: Vec<Arc<Device>>,
    /// Pairing agents registered through `AgentManager1`.
    agents: Arc<Mutex<Agents>>,
    truth: TruthLog,
    start: Instant,
    notifications: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn dev_by_ref(&self, r: &str) -> Option<&Arc<Device>> {
        self.devices
            .iter()
            .find(|d| d.info.name == r || d.info.address.eq_ignore_ascii_case(r))
    }

    async fn emit(&self, path: &str, iface: &'static str, changes: Vec<(&'static str, Value<'_>)>) {
        let Ok(emitter) = SignalEmitter::new(&self.conn, path.to_string()) else {
            return;
        };
        let Ok(name) = zbus::names::InterfaceName::try_from(iface) else {
            return;
        };
        let map: HashMap<&str, Value<'_>> = changes.into_iter().collect();
        if let Err(e) = zbus::fdo::Properties::properties_changed(
            &emitter,
            name,
            map,
            std::borrow::Cow::Borrowed(&[]),
        )
        .await
        {
            tracing::warn!("PropertiesChanged on {path}: {e}");
        }
    }

    /// Adapter `k`'s state (`k` is always one of ours: interfaces are made
    /// per adapter, fault arguments are checked by [`Inner::adapter_index`]).
    fn adapter(&self, k: usize) -> std::sync::MutexGuard<'_, AdapterState> {
        lock(&self.adapters[k.min(self.adapters.len() - 1)])
    }

    /// `hci1` → 1, if that adapter exists; `None` means `hci0`.
    fn adapter_index(&self, name: Option<&str>) -> anyhow::Result<usize> {
        let Some(name) = name else { return Ok(0) };
        name.strip_prefix("hci")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|k| *k < self.adapters.len())
            .with_context(|| {
                format!(
                    "no simulated adapter {name:?} (hci0 … hci{})",
                    self.adapters.len() - 1
                )
            })
    }

    pub(crate) fn powered(&self, k: usize) -> bool {
        self.adapter(k).powered
    }

    pub(crate) fn discovering(&self, k: usize) -> bool {
        !self.adapter(k).discovery_clients.is_empty()
    }

    pub(crate) async fn set_powered(&self, k: usize, on: bool) -> Result<(), BluezError> {
        let path = crate::device::adapter_path(k);
        {
            let mut a = self.adapter(k);
            if on && let Some(until) = a.rfkill_until {
                if Instant::now() < until {
                    return Err(BluezError::Failed("Blocked through rfkill".into()));
                }
                a.rfkill_until = None;
            }
            if a.powered == on {
                return Ok(());
            }
        }
        if on {
            self.adapter(k).powered = true;
            self.emit(
                &path,
                "org.bluez.Adapter1",
                vec![("Powered", Value::from(true))],
            )
            .await;
        } else {
            // As BlueZ: discovery ends, every connection drops, then Powered=false.
            let was_discovering = {
                let mut a = self.adapter(k);
                let was = !a.discovery_clients.is_empty();
                a.discovery_clients.clear();
                a.discovery_started = None;
                was
            };
            if was_discovering {
                self.emit(
                    &path,
                    "org.bluez.Adapter1",
                    vec![("Discovering", Value::from(false))],
                )
                .await;
            }
            for d in &self.devices {
                if lock(&d.st).linked_on(k) {
                    self.drop_link(d).await;
                }
            }
            self.adapter(k).powered = false;
            self.emit(
                &path,
                "org.bluez.Adapter1",
                vec![("Powered", Value::from(false))],
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn start_discovery(&self, k: usize, sender: String) -> Result<(), BluezError> {
        let first = {
            let mut a = self.adapter(k);
            if !a.powered {
                return Err(BluezError::not_ready());
            }
            if a.discovery_clients.contains(&sender) {
                return Err(BluezError::InProgress(
                    "Operation already in progress".into(),
                ));
            }
            let first = a.discovery_clients.is_empty();
            a.discovery_clients.insert(sender);
            if first {
                a.discovery_started = Some(Instant::now());
            }
            first
        };
        if first {
            self.emit(
                &crate::device::adapter_path(k),
                "org.bluez.Adapter1",
                vec![("Discovering", Value::from(true))],
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn stop_discovery(&self, k: usize, sender: &str) -> Result<(), BluezError> {
        let last = {
            let mut a = self.adapter(k);
            if !a.powered {
                return Err(BluezError::not_ready());
            }
            if !a.discovery_clients.remove(sender) {
                return Err(BluezError::Failed("No discovery started".into()));
            }
            let last = a.discovery_clients.is_empty();
            if last {
                a.discovery_started = None;
            }
            last
        };
        if last {
            self.emit(
                &crate::device::adapter_path(k),
                "org.bluez.Adapter1",
                vec![("Discovering", Value::from(false))],
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn remove_device(
        self: &Arc<Self>,
        k: usize,
        path: &str,
    ) -> Result<(), BluezError> {
        let Some(dev) = self
            .devices
            .iter()
            .find(|d| on_adapter(&d.info.path, k) == path && lock(&d.st).exported.has(k))
            .cloned()
        else {
            return Err(BluezError::Failed("Device does not exist".into()));
        };
        match self.disconnect(&dev, k).await {
            Ok(()) | Err(BluezError::NotConnected(_)) => {}
            Err(e) => return Err(e),
        }
        self.unexport(&dev, k).await;
        let mut st = lock(&dev.st);
        st.paired.remove(k);
        st.bond_lost.remove(k);
        Ok(())
    }

    /// Take a device's objects under adapter `k` off the bus.
    async fn unexport(&self, dev: &Device, k: usize) {
        let server = self.conn.object_server();
        // Children first, so InterfacesRemoved arrive leaf to root.
        if lock(&dev.st).gatt_exported.has(k) {
            for s in &dev.services {
                for c in &s.chars {
                    if let Some(p) = &c.cccd_path {
                        let _ = server.remove::<DescIface, _>(on_adapter(p, k)).await;
                    }
                    let _ = server.remove::<CharIface, _>(on_adapter(&c.path, k)).await;
                }
                let _ = server
                    .remove::<ServiceIface, _>(on_adapter(&s.path, k))
                    .await;
            }
        }
        let _ = server
            .remove::<DeviceIface, _>(on_adapter(&dev.info.path, k))
            .await;
        let mut st = lock(&dev.st);
        st.exported.remove(k);
        st.gatt_exported.remove(k);
    }

    /// Adapter `k` pulled out: links drop, then its devices' objects and
    /// its own go. Bonds stay (BlueZ stores them per adapter address).
    async fn unplug(&self, k: usize) {
        if !self.adapter(k).plugged {
            return;
        }
        self.adapter(k).rfkill_until = None;
        let _ = self.set_powered(k, false).await;
        for d in &self.devices {
            if lock(&d.st).exported.has(k) {
                self.unexport(d, k).await;
            }
        }
        let _ = self
            .conn
            .object_server()
            .remove::<Adapter, _>(crate::device::adapter_path(k))
            .await;
        self.adapter(k).plugged = false;
        tracing::info!(adapter = k, "adapter unplugged");
    }

    /// Adapter `k` put back: powered, and the devices bonded through it
    /// known again.
    async fn plug(self: &Arc<Self>, k: usize) -> anyhow::Result<()> {
        if self.adapter(k).plugged {
            return Ok(());
        }
        *self.adapter(k) = AdapterState::new();
        self.conn
            .object_server()
            .at(
                crate::device::adapter_path(k),
                Adapter {
                    inner: self.clone(),
                    k,
                },
            )
            .await?;
        for d in &self.devices {
            if lock(&d.st).paired.has(k) {
                self.export_device(d, k).await;
            }
        }
        tracing::info!(adapter = k, "adapter plugged in");
        Ok(())
    }

    async fn export_device(self: &Arc<Self>, dev: &Arc<Device>, k: usize) {
        if lock(&dev.st).exported.has(k) {
            return;
        }
        lock(&dev.st).exported.add(k);
        let iface = DeviceIface {
            inner: self.clone(),
            dev: dev.clone(),
            adapter: k,
        };
        let path = on_adapter(&dev.info.path, k);
        if let Err(e) = self.conn.object_server().at(path.as_str(), iface).await {
            tracing::warn!("export {path}: {e}");
        }
    }

    async fn export_gatt(self: &Arc<Self>, dev: &Arc<Device>, k: usize) -> Result<(), BluezError> {
        if lock(&dev.st).gatt_exported.has(k) {
            return Ok(());
        }
        let server = self.conn.object_server();
        for s in &dev.services {
            server
                .at(
                    on_adapter(&s.path, k),
                    ServiceIface {
                        uuid16: s.uuid16,
                        device_path: on_adapter(&dev.info.path, k),
                    },
                )
                .await?;
            for c in &s.chars {
                server
                    .at(
                        on_adapter(&c.path, k),
                        CharIface {
                            inner: self.clone(),
                            dev: dev.clone(),
                            ch: c.clone(),
                            adapter: k,
                        },
                    )
                    .await?;
                if let Some(p) = &c.cccd_path {
                    server
                        .at(
                            on_adapter(p, k),
                            DescIface {
                                dev: dev.clone(),
                                ch: c.clone(),
                                adapter: k,
                            },
                        )
                        .await?;
                }
            }
        }
        lock(&dev.st).gatt_exported.add(k);
        Ok(())
    }

    /// `Device1.Connect` through adapter `k`. A device takes one central
    /// at a time: while linked through another adapter it does not
    /// advertise connectably, and the attempt fails as BlueZ reports it.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        dev: &Arc<Device>,
        k: usize,
    ) -> Result<(), BluezError> {
        let _op = dev.op.lock().await;
        if !self.powered(k) {
            return Err(BluezError::not_ready());
        }
        {
            let st = lock(&dev.st);
            if st.linked_on(k) {
                return Ok(());
            }
            if st.connected {
                return Err(BluezError::Failed("le-connection-abort-by-local".into()));
            }
            if let Some(until) = st.refuse_until
                && Instant::now() < until
            {
                return Err(BluezError::Failed("le-connection-abort-by-local".into()));
            }
        }
        {
            let mut st = lock(&dev.st);
            st.connected = true;
            st.link_on = k;
        }
        {
            let mut l = lock(&self.links);
            l.now += 1;
            l.peak = l.peak.max(l.now);
        }
        let path = on_adapter(&dev.info.path, k);
        self.emit(
            &path,
            "org.bluez.Device1",
            vec![("Connected", Value::from(true))],
        )
        .await;
        let drop_now = {
            let mut st = lock(&dev.st);
            let n = st.drop_on_connect;
            st.drop_on_connect = n.saturating_sub(1);
            n > 0
        };
        if drop_now {
            // Connect succeeded; the link is gone before services resolve.
            tracing::info!(device = %dev.info.name, "connected, dropping before services resolve");
            self.drop_link(dev).await;
            return Ok(());
        }
        // The GATT tree must exist before ServicesResolved turns true.
        self.export_gatt(dev, k).await?;
        lock(&dev.st).services_resolved = true;
        self.emit(
            &path,
            "org.bluez.Device1",
            vec![("ServicesResolved", Value::from(true))],
        )
        .await;
        tracing::info!(device = %dev.info.name, adapter = k, "connected");
        dev.wake.notify_one();
        Ok(())
    }

    /// Tear the link down (client disconnect, fault or power-off).
    async fn drop_link(&self, dev: &Arc<Device>) {
        let k = {
            let mut st = lock(&dev.st);
            if !st.connected {
                return;
            }
            st.connected = false;
            st.services_resolved = false;
            // A consent holds for one link (UDS).
            st.uds_user = None;
            st.link_on
        };
        {
            let mut l = lock(&self.links);
            l.now = l.now.saturating_sub(1);
        }
        for c in dev.services.iter().flat_map(|s| s.chars.iter()) {
            let had = {
                let mut s = lock(&c.sessions);
                let had = !s.is_empty();
                s.clear();
                had
            };
            if had {
                self.emit(
                    &on_adapter(&c.path, k),
                    "org.bluez.GattCharacteristic1",
                    vec![("Notifying", Value::from(false))],
                )
                .await;
            }
        }
        let path = on_adapter(&dev.info.path, k);
        self.emit(
            &path,
            "org.bluez.Device1",
            vec![("ServicesResolved", Value::from(false))],
        )
        .await;
        self.emit(
            &path,
            "org.bluez.Device1",
            vec![("Connected", Value::from(false))],
        )
        .await;
        tracing::info!(device = %dev.info.name, adapter = k, "disconnected");
    }

    pub(crate) async fn disconnect(&self, dev: &Arc<Device>, k: usize) -> Result<(), BluezError> {
        let _op = dev.op.lock().await;
        if !lock(&dev.st).linked_on(k) {
            return Err(BluezError::NotConnected("Not Connected".into()));
        }
        self.drop_link(dev).await;
        Ok(())
    }

    /// `Device1.Pair` from `caller` (a D-Bus unique name): connect, then
    /// authenticate as the device's pairing method needs, asking the
    /// caller's agent (else the default agent). A failed pairing drops the
    /// link and leaves nothing bonded.
    pub(crate) async fn pair(
        self: &Arc<Self>,
        dev: &Arc<Device>,
        k: usize,
        caller: &str,
    ) -> Result<(), BluezError> {
        {
            let mut st = lock(&dev.st);
            if st.paired.has(k) {
                return Err(BluezError::AlreadyExists("Already Paired".into()));
            }
            if st.pairing {
                return Err(BluezError::InProgress("In Progress".into()));
            }
            st.pairing = true;
        }
        let r = async {
            self.connect(dev, k).await?;
            self.authenticate(dev, k, caller).await
        }
        .await;
        lock(&dev.st).pairing = false;
        if let Err(e) = r {
            tracing::info!(device = %dev.info.name, "pairing failed: {e:?}");
            let _op = dev.op.lock().await;
            if lock(&dev.st).linked_on(k) {
                self.drop_link(dev).await;
            }
            return Err(e);
        }
        {
            let mut st = lock(&dev.st);
            st.paired.add(k);
            st.bond_lost.remove(k);
        }
        self.emit(
            &on_adapter(&dev.info.path, k),
            "org.bluez.Device1",
            vec![("Paired", Value::from(true)), ("Bonded", Value::from(true))],
        )
        .await;
        tracing::info!(device = %dev.info.name, "paired");
        Ok(())
    }

    /// The association model of the device's [`Pairing`], with the agent
    /// answering. Agent errors map as BlueZ maps them: `Rejected` →
    /// `AuthenticationRejected`, `Canceled` → `AuthenticationCanceled`; a
    /// wrong passkey or PIN → `AuthenticationFailed`; no answer within
    /// [`AGENT_TIMEOUT`] → `Cancel` to the agent and `AuthenticationTimeout`.
    async fn authenticate(
        &self,
        dev: &Arc<Device>,
        k: usize,
        caller: &str,
    ) -> Result<(), BluezError> {
        if std::mem::take(&mut lock(&dev.st).pairing_mode_timeout) {
            return Err(BluezError::AuthenticationTimeout(
                "Authentication Timeout".into(),
            ));
        }
        let method = dev.info.pairing.clone();
        if method == Pairing::JustWorks {
            return Ok(());
        }
        let agent = lock(&self.agents).for_caller(caller);
        let Some((client, path)) = agent else {
            // No agent: BlueZ pairs as NoInputNoOutput, which a device that
            // needs a passkey or a confirmation refuses.
            return Err(BluezError::AuthenticationFailed(
                "Authentication Failed".into(),
            ));
        };
        let device = zbus::zvariant::ObjectPath::try_from(on_adapter(&dev.info.path, k))
            .map_err(|e| BluezError::Failed(e.to_string()))?;
        let ask = async {
            let conn = &self.conn;
            let (to, at) = (Some(client.as_str()), path.as_str());
            let agent = Some("org.bluez.Agent1");
            match &method {
                Pairing::JustWorks => Ok(true),
                Pairing::Passkey(n) => {
                    let reply = conn
                        .call_method(to, at, agent, "RequestPasskey", &(&device,))
                        .await?;
                    Ok(reply.body().deserialize::<u32>()? == *n)
                }
                Pairing::NumericComparison(n) => conn
                    .call_method(to, at, agent, "RequestConfirmation", &(&device, *n))
                    .await
                    .map(|_| true),
                Pairing::LegacyPin(pin) => {
                    let reply = conn
                        .call_method(to, at, agent, "RequestPinCode", &(&device,))
                        .await?;
                    Ok(reply.body().deserialize::<String>()? == *pin)
                }
            }
        };
        let cancel_agent = || async {
            let _ = self
                .conn
                .call_method(
                    Some(client.as_str()),
                    path.as_str(),
                    Some("org.bluez.Agent1"),
                    "Cancel",
                    &(),
                )
                .await;
        };
        let answer: zbus::Result<bool> = tokio::select! {
            a = ask => a,
            _ = tokio::time::sleep(AGENT_TIMEOUT) => {
                cancel_agent().await;
                return Err(BluezError::AuthenticationTimeout("Authentication Timeout".into()));
            }
            _ = dev.cancel_pairing.notified() => {
                cancel_agent().await;
                return Err(BluezError::AuthenticationCanceled("Authentication Canceled".into()));
            }
        };
        match answer {
            Ok(true) => Ok(()),
            Ok(false) => Err(BluezError::AuthenticationFailed(
                "Authentication Failed".into(),
            )),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.bluez.Error.Rejected" =>
            {
                Err(BluezError::AuthenticationRejected(
                    "Authentication Rejected".into(),
                ))
            }
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.bluez.Error.Canceled" =>
            {
                Err(BluezError::AuthenticationCanceled(
                    "Authentication Canceled".into(),
                ))
            }
            Err(e) => {
                tracing::info!(device = %dev.info.name, "agent answered with an error: {e}");
                Err(BluezError::AuthenticationFailed(
                    "Authentication Failed".into(),
                ))
            }
        }
    }

    fn check_access(&self, dev: &Device, k: usize, ch: &Char) -> Result<(), BluezError> {
        let st = lock(&dev.st);
        if !st.linked_on(k) {
            return Err(BluezError::not_connected());
        }
        if ch.secure && !st.paired.has(k) {
            return Err(BluezError::not_paired());
        }
        if ch.secure && st.bond_lost.has(k) {
            // The device has no key for this bond: encryption fails
            // ("PIN or Key Missing"), the request is refused.
            return Err(BluezError::NotPermitted(
                "Authentication Failed: key missing (0x06)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn read_char(
        &self,
        dev: &Device,
        k: usize,
        ch: &Char,
        offset: usize,
    ) -> Result<Vec<u8>, BluezError> {
        if !lock(&dev.st).linked_on(k) {
            return Err(BluezError::not_connected());
        }
        if !ch.has("read") {
            return Err(BluezError::NotPermitted("Read not permitted".into()));
        }
        self.check_access(dev, k, ch)?;
        if ch.uuid16 == 0x2A2B {
            *lock(&ch.value) = current_time(dev);
        }
        if ch.uuid16 == 0x2A9A {
            // User Index: who consented on this link.
            *lock(&ch.value) = vec![lock(&dev.st).uds_user.unwrap_or(0xFF)];
        }
        let v = lock(&ch.value);
        if offset > v.len() {
            return Err(BluezError::InvalidArguments("Invalid offset".into()));
        }
        Ok(v[offset..].to_vec())
    }

    pub(crate) async fn write_char(
        self: &Arc<Self>,
        dev: &Arc<Device>,
        k: usize,
        ch: &Arc<Char>,
        value: Vec<u8>,
    ) -> Result<(), BluezError> {
        if !lock(&dev.st).linked_on(k) {
            return Err(BluezError::not_connected());
        }
        if !ch.has("write") {
            return Err(BluezError::NotPermitted("Write not permitted".into()));
        }
        self.check_access(dev, k, ch)?;
        if ch.uuid16 == 0x2A2B {
            return self.set_clock(dev, ch, &value).await;
        }
        if ch.uuid16 == 0x2A9F {
            if !ch.notifying() {
                // ATT 0xFD: Client Characteristic Configuration Descriptor Improperly Configured
                return Err(BluezError::Failed(
                    "Operation failed with ATT error: 0xfd".into(),
                ));
            }
            let this = self.clone();
            let dev = dev.clone();
            tokio::spawn(async move { this.user_control(&dev, value).await });
            return Ok(());
        }
        if ch.uuid16 == 0x2A52 {
            if !ch.notifying() {
                // ATT 0xFD: Client Characteristic Configuration Descriptor Improperly Configured
                return Err(BluezError::Failed(
                    "Operation failed with ATT error: 0xfd".into(),
                ));
            }
            let this = self.clone();
            let dev = dev.clone();
            tokio::spawn(async move { this.racp(&dev, value).await });
        }
        Ok(())
    }

    /// A client wrote Current Time: the clock shows it from now on (CTS
    /// §3.1: a value that is not a valid time is refused, ATT error 0x80
    /// "Data field ignored", as BlueZ reports it).
    async fn set_clock(&self, dev: &Device, ch: &Char, value: &[u8]) -> Result<(), BluezError> {
        let written = hailan_proto::gatt::CurrentTime::decode(value)
            .ok()
            .and_then(|t| t.unix_ms_naive())
            .ok_or_else(|| BluezError::Failed("Operation failed with ATT error: 0x80".into()))?;
        let true_ms = crate::model::unix_now_ms();
        {
            let mut st = lock(&dev.st);
            st.clock.set_offset(written - true_ms);
            st.clock_sets += 1;
        }
        tracing::info!(device = %dev.info.name, offset_ms = written - true_ms, "clock set by a client");
        let now = current_time(dev);
        *lock(&ch.value) = now.clone();
        if ch.notifying() {
            self.emit(
                &on_link(dev, &ch.path),
                "org.bluez.GattCharacteristic1",
                vec![("Value", Value::from(now))],
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn start_notify(
        &self,
        dev: &Device,
        k: usize,
        ch: &Char,
        sender: String,
    ) -> Result<(), BluezError> {
        if !lock(&dev.st).linked_on(k) {
            return Err(BluezError::not_connected());
        }
        if !ch.has("notify") && !ch.has("indicate") {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        self.check_access(dev, k, ch)?;
        let first = {
            let mut s = lock(&ch.sessions);
            if s.contains(&sender) {
                return Err(BluezError::InProgress("Already notifying".into()));
            }
            let first = s.is_empty();
            s.insert(sender);
            first
        };
        if first {
            self.emit(
                &on_adapter(&ch.path, k),
                "org.bluez.GattCharacteristic1",
                vec![("Notifying", Value::from(true))],
            )
            .await;
        }
        dev.wake.notify_one();
        Ok(())
    }

    pub(crate) async fn stop_notify(
        &self,
        dev: &Device,
        k: usize,
        ch: &Char,
        sender: &str,
    ) -> Result<(), BluezError> {
        if !lock(&dev.st).linked_on(k) {
            return Err(BluezError::not_connected());
        }
        let last = {
            let mut s = lock(&ch.sessions);
            if !s.remove(sender) {
                return Err(BluezError::Failed("No notify session started".into()));
            }
            s.is_empty()
        };
        if last {
            self.emit(
                &on_adapter(&ch.path, k),
                "org.bluez.GattCharacteristic1",
                vec![("Notifying", Value::from(false))],
            )
            .await;
        }
        Ok(())
    }

    /// Can a measurement go out on `uuid16` now?
    fn deliverable(&self, dev: &Device, uuid16: u16) -> bool {
        let Some(ch) = dev.char(uuid16) else {
            return false;
        };
        let st = lock(&dev.st);
        st.connected && (!ch.secure || st.bonded_link()) && ch.notifying()
    }

    /// Put a value on the air: set `Value`, emit `PropertiesChanged`, log it.
    /// Applies pending malformed/out-of-range faults to measurement values.
    /// `clock_s` is how far ahead of the true time the device's clock was
    /// when it took `m`: what its time stamp says (the truth keeps both).
    async fn send(&self, dev: &Device, m: Measurement, clock_s: i64, clinical: bool) -> bool {
        let uuid16 = m.characteristic();
        // The air first: whether it can go out is judged when it goes out.
        let _air = dev.air.lock().await;
        if !self.deliverable(dev, uuid16) {
            return false;
        }
        let Some(ch) = dev.char(uuid16) else {
            return false;
        };
        let (m, oor, malformed) = if clinical {
            let mut st = lock(&dev.st);
            let oor = st.out_of_range_next > 0 && uuid16 != 0x2A18;
            if oor {
                st.out_of_range_next -= 1;
            }
            let mal = st.malformed_next > 0;
            if mal {
                st.malformed_next -= 1;
            }
            (if oor { Physiology::out_of_range(m) } else { m }, oor, mal)
        } else {
            (m, false, false)
        };
        // One value, or the packets of a multiple-packet body composition.
        let mut packets = encode::packets(&m.shifted(clock_s));
        if malformed && let Some(first) = packets.first_mut() {
            *first = encode::malform(first);
        }
        let event = if ch.indicates() {
            TruthEvent::Indicate
        } else {
            TruthEvent::Notify
        };
        // Truth first: a client may see the value before `emit` returns.
        self.record(dev, event, uuid16, &packets, m, clock_s, malformed, oor);
        for bytes in packets {
            *lock(&ch.value) = bytes.clone();
            self.emit(
                &on_link(dev, &ch.path),
                "org.bluez.GattCharacteristic1",
                vec![("Value", Value::from(bytes))],
            )
            .await;
            self.notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        dev: &Device,
        event: TruthEvent,
        uuid16: u16,
        packets: &[Vec<u8>],
        m: Measurement,
        clock_s: i64,
        malformed: bool,
        out_of_range: bool,
    ) {
        let bytes = packets.iter().map(|p| hex(p)).collect::<Vec<_>>().join(" ");
        tracing::debug!(device = %dev.info.name, ?event, char = format!("{uuid16:04x}"), bytes = %bytes, "sent");
        self.truth.push(TruthRecord {
            t_ms: self.start.elapsed().as_millis() as u64,
            unix: crate::model::unix_now(),
            device: dev.info.name.clone(),
            address: dev.info.address.clone(),
            kind: dev.info.kind,
            event,
            characteristic: format!("{uuid16:04x}"),
            bytes,
            slots: m.slots(),
            measurement: m,
            device_clock_offset_s: clock_s,
            malformed,
            out_of_range,
            sent_at: Some(std::time::Instant::now()),
        });
    }

    /// Raw bytes on a characteristic (RACP responses).
    async fn send_raw(&self, dev: &Device, uuid16: u16, bytes: Vec<u8>) {
        let _air = dev.air.lock().await;
        if !self.deliverable(dev, uuid16) {
            return;
        }
        if let Some(ch) = dev.char(uuid16) {
            *lock(&ch.value) = bytes.clone();
            self.emit(
                &on_link(dev, &ch.path),
                "org.bluez.GattCharacteristic1",
                vec![("Value", Value::from(bytes))],
            )
            .await;
        }
    }

    /// Record Access Control Point (Glucose Profile), requests decoded and
    /// responses encoded by `hailan_proto::gatt::Racp`: report records, report
    /// number of records, abort; filters by sequence number or user-facing
    /// time; delete is answered "op code not supported".
    async fn racp(&self, dev: &Device, req: Vec<u8>) {
        use hailan_proto::gatt::{Racp, RacpFilter, RacpOperand};
        if dev.info.kind == DeviceKind::Spo2 {
            return self.plx_racp(dev, req).await;
        }
        let op = req.first().copied().unwrap_or(0);
        let respond = |code: u8| racp_answer(op, code);
        let request = match Racp::decode(&req) {
            Ok(r) => r,
            Err(e) => {
                let operator = req.get(1).copied().unwrap_or(0);
                let code = if !(1..=4).contains(&op) {
                    0x02 // op code not supported
                } else if op != 3 && !(1..=6).contains(&operator) {
                    0x03 // invalid operator
                } else {
                    0x05 // invalid operand
                };
                tracing::debug!(device = %dev.info.name, "RACP request {}: {e}", hex(&req));
                self.send_raw(dev, 0x2A52, respond(code)).await;
                return;
            }
        };
        let (filter, count_only) = match request {
            Racp::ReportStoredRecords(f) => (f, false),
            Racp::ReportNumberOfStoredRecords(f) => (f, true),
            Racp::Abort => {
                self.send_raw(dev, 0x2A52, respond(0x01)).await;
                return;
            }
            _ => {
                self.send_raw(dev, 0x2A52, respond(0x02)).await;
                return;
            }
        };
        let records: Vec<(Measurement, i64)> = lock(&dev.model).glucose.clone();
        // A record's time is the one its clock stamped it with.
        let key = |(m, clock_s): &(Measurement, i64)| match m.shifted(*clock_s) {
            Measurement::Glucose { seq, time, .. } => (seq, encode::gatt_time(&time)),
            _ => (0, encode::gatt_time(&crate::model::DateTime::from_unix(0))),
        };
        let keep = |r: &(Measurement, i64)| {
            let (seq, t) = key(r);
            match &filter {
                RacpFilter::All | RacpFilter::First | RacpFilter::Last => true,
                RacpFilter::LessOrEqual(RacpOperand::SequenceNumber(n)) => seq <= *n,
                RacpFilter::GreaterOrEqual(RacpOperand::SequenceNumber(n)) => seq >= *n,
                RacpFilter::LessOrEqual(RacpOperand::UserFacingTime(x)) => t <= *x,
                RacpFilter::GreaterOrEqual(RacpOperand::UserFacingTime(x)) => t >= *x,
                RacpFilter::SequenceRange(a, b) => (*a..=*b).contains(&seq),
                RacpFilter::TimeRange(a, b) => *a <= t && t <= *b,
            }
        };
        if let RacpFilter::SequenceRange(a, b) = filter
            && a > b
        {
            self.send_raw(dev, 0x2A52, respond(0x05)).await;
            return;
        }
        let mut selected: Vec<(Measurement, i64)> = records.into_iter().filter(keep).collect();
        match filter {
            RacpFilter::First => selected.truncate(1),
            RacpFilter::Last => selected = selected.pop().into_iter().collect(),
            _ => {}
        }
        if count_only {
            let n = u16::try_from(selected.len()).unwrap_or(u16::MAX);
            self.send_raw(dev, 0x2A52, Racp::NumberOfStoredRecords(n).encode())
                .await;
            return;
        }
        if selected.is_empty() {
            self.send_raw(dev, 0x2A52, respond(0x06)).await; // no records found
            return;
        }
        for (m, clock_s) in selected {
            if !self.send(dev, m, clock_s, true).await {
                self.send_raw(dev, 0x2A52, respond(0x08)).await; // procedure not completed
                return;
            }
        }
        self.send_raw(dev, 0x2A52, respond(0x01)).await;
    }

    /// The User Control Point (UDS): register a new user slot, consent to
    /// act for one on this link, delete the consenting user's data. The
    /// answer is indicated on 0x2A9F (a wrong consent code: "user not
    /// authorized"; an unknown slot: "invalid parameter").
    async fn user_control(&self, dev: &Device, req: Vec<u8>) {
        use hailan_proto::gatt::uds::{UCP_SUCCESS, UCP_USER_NOT_AUTHORIZED, UserControl};
        let op = req.first().copied().unwrap_or(0);
        let respond = |value: u8, user_index: Option<u8>| {
            UserControl::Response {
                request_op_code: op,
                value,
                user_index,
            }
            .encode()
        };
        let answer = match UserControl::decode(&req) {
            Ok(UserControl::RegisterNewUser { consent }) => match self.new_user(dev, consent) {
                Some(i) => {
                    lock(&dev.st).uds_user = Some(i);
                    respond(UCP_SUCCESS, Some(i))
                }
                None => respond(0x04, None), // operation failed: no free slot
            },
            Ok(UserControl::Consent {
                user_index,
                consent,
            }) => {
                let matches = lock(&dev.model)
                    .users
                    .get(&user_index)
                    .map(|s| s.consent == consent);
                match matches {
                    Some(true) => {
                        lock(&dev.st).uds_user = Some(user_index);
                        // The user's queued measurements may go now.
                        dev.wake.notify_one();
                        respond(UCP_SUCCESS, None)
                    }
                    Some(false) => respond(UCP_USER_NOT_AUTHORIZED, None),
                    None => respond(0x03, None), // invalid parameter
                }
            }
            Ok(UserControl::DeleteUserData) => {
                let user = lock(&dev.st).uds_user.take();
                match user {
                    Some(u) => {
                        lock(&dev.model).users.remove(&u);
                        respond(UCP_SUCCESS, None)
                    }
                    None => respond(UCP_USER_NOT_AUTHORIZED, None),
                }
            }
            Ok(UserControl::Response { .. }) => respond(0x02, None),
            Err(_) if !(1..=3).contains(&op) => respond(0x02, None), // op code not supported
            Err(_) => respond(0x03, None),
        };
        self.send_raw(dev, 0x2A9F, answer).await;
    }

    /// A new user slot with `consent`: the lowest free index, a body of
    /// its own. `None` when all 255 are taken.
    fn new_user(&self, dev: &Device, consent: u16) -> Option<u8> {
        let mut model = lock(&dev.model);
        let index = (0..0xFFu8).find(|i| !model.users.contains_key(i))?;
        let mut phys = Physiology::new(self.cfg.seed, (dev.index as u64) << 8 | u64::from(index));
        phys.user = index;
        model.users.insert(
            index,
            crate::device::UserSlot {
                consent,
                phys: Some(phys),
            },
        );
        Some(index)
    }

    /// The pulse oximeter's RACP (PLXS §3.5): stored spot-checks, with
    /// "all records" as the only operator — report them (indicated on
    /// 0x2A5E, oldest first), count them, delete them; abort.
    async fn plx_racp(&self, dev: &Device, req: Vec<u8>) {
        use hailan_proto::gatt::{Racp, RacpFilter};
        let op = req.first().copied().unwrap_or(0);
        let respond = |code: u8| racp_answer(op, code);
        let code = match Racp::decode(&req) {
            Ok(Racp::ReportStoredRecords(RacpFilter::All)) => {
                let records = lock(&dev.model).spot_checks.clone();
                if records.is_empty() {
                    0x06 // no records found
                } else {
                    let mut code = 0x01;
                    for (m, clock_s) in records {
                        if !self.send(dev, m, clock_s, true).await {
                            code = 0x08; // procedure not completed
                            break;
                        }
                    }
                    code
                }
            }
            Ok(Racp::DeleteStoredRecords(RacpFilter::All)) => {
                lock(&dev.model).spot_checks.clear();
                0x01
            }
            Ok(Racp::ReportNumberOfStoredRecords(RacpFilter::All)) => {
                let n = lock(&dev.model).spot_checks.len();
                let n = u16::try_from(n).unwrap_or(u16::MAX);
                self.send_raw(dev, 0x2A52, Racp::NumberOfStoredRecords(n).encode())
                    .await;
                return;
            }
            Ok(Racp::Abort) => 0x01,
            Ok(
                Racp::ReportStoredRecords(_)
                | Racp::DeleteStoredRecords(_)
                | Racp::ReportNumberOfStoredRecords(_),
            ) => 0x04, // operator not supported
            Ok(_) => 0x02, // op code not supported
            Err(_) if (1..=4).contains(&op) => 0x04,
            Err(_) => 0x02,
        };
        self.send_raw(dev, 0x2A52, respond(code)).await;
    }

    /// Apply a fault now.
    pub(crate) async fn inject(self: &Arc<Self>, fault: Fault) -> anyhow::Result<()> {
        tracing::info!(?fault, "fault");
        // a device name, an address, or `*` for every device
        let find = |r: &str| -> anyhow::Result<Vec<Arc<Device>>> {
            if r == "*" {
                return Ok(self.devices.clone());
            }
            self.dev_by_ref(r)
                .cloned()
                .map(|d| vec![d])
                .with_context(|| format!("no simulated device {r:?}"))
        };
        match fault {
            Fault::Drop { device } => {
                for d in find(&device)? {
                    let _op = d.op.lock().await;
                    self.drop_link(&d).await;
                }
            }
            Fault::DropOnConnect { device, count } => {
                for d in find(&device)? {
                    lock(&d.st).drop_on_connect += count;
                }
            }
            Fault::RefuseConnects { device, duration } => {
                let until = Instant::now() + duration;
                for d in find(device.as_deref().unwrap_or("*"))? {
                    lock(&d.st).refuse_until = Some(until);
                }
            }
            Fault::StallDiscovery { duration } => {
                for a in &self.adapters {
                    lock(a).stalled_until = Some(duration.map(|d| Instant::now() + d));
                }
            }
            Fault::ResumeDiscovery => {
                for a in &self.adapters {
                    lock(a).stalled_until = None;
                }
            }
            Fault::BondLost { device } => {
                for d in find(&device)? {
                    let mut st = lock(&d.st);
                    // The device forgets every bond it held.
                    st.bond_lost = st.paired;
                }
            }
            Fault::PairingModeTimeout { device } => {
                for d in find(&device)? {
                    lock(&d.st).pairing_mode_timeout = true;
                }
            }
            Fault::Malformed { device, count } => {
                for d in find(&device)? {
                    lock(&d.st).malformed_next += count;
                }
            }
            Fault::OutOfRange { device, count } => {
                for d in find(&device)? {
                    lock(&d.st).out_of_range_next += count;
                    if d.info.kind == DeviceKind::Glucose {
                        // A meter stores what it measured: store implausible records.
                        for _ in 0..count {
                            self.store_glucose(&d, true);
                        }
                        lock(&d.st).out_of_range_next = 0;
                    }
                }
            }
            Fault::Rssi { device, rssi } => {
                for d in find(&device)? {
                    let exported = {
                        let mut st = lock(&d.st);
                        st.rssi = rssi;
                        st.rssi_pinned = true;
                        st.exported
                    };
                    for k in (0..self.adapters.len()).filter(|k| exported.has(*k)) {
                        self.emit(
                            &on_adapter(&d.info.path, k),
                            "org.bluez.Device1",
                            vec![("RSSI", Value::from(rssi))],
                        )
                        .await;
                    }
                }
            }
            Fault::Battery { device, percent } => {
                for d in find(&device)? {
                    self.set_battery(&d, f64::from(percent.min(100))).await;
                }
            }
            Fault::PowerOff { adapter, duration } => {
                let k = self.adapter_index(adapter.as_deref())?;
                if let Some(d) = duration {
                    self.adapter(k).rfkill_until = Some(Instant::now() + d);
                }
                let _ = self.set_powered(k, false).await;
                if let Some(d) = duration {
                    let this = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        this.adapter(k).rfkill_until = None;
                        let _ = this.set_powered(k, true).await;
                    });
                }
            }
            Fault::Clock {
                device,
                offset_s,
                drift_ppm,
            } => {
                for d in find(&device)? {
                    let mut st = lock(&d.st);
                    st.clock.set_offset(offset_s.saturating_mul(1000));
                    st.clock.drift_ppm = drift_ppm;
                }
            }
            Fault::ConsentGated { device } => {
                for d in find(&device)? {
                    lock(&d.st).consent_gated = true;
                }
            }
            Fault::ClockReset { device } => {
                for d in find(&device)? {
                    let to = crate::device::CLOCK_RESET_UNIX * 1000;
                    lock(&d.st)
                        .clock
                        .set_offset(to - crate::model::unix_now_ms());
                }
            }
            Fault::PowerOn { adapter } => {
                let k = self.adapter_index(adapter.as_deref())?;
                self.adapter(k).rfkill_until = None;
                let _ = self.set_powered(k, true).await;
            }
            Fault::Unplug { adapter } => {
                let k = self.adapter_index(Some(&adapter))?;
                self.unplug(k).await;
            }
            Fault::Plug { adapter } => {
                let k = self.adapter_index(Some(&adapter))?;
                self.plug(k).await?;
            }
        }
        Ok(())
    }

    fn store_glucose(&self, dev: &Device, out_of_range: bool) {
        let m = {
            let mut model = lock(&dev.model);
            let seq = model.next_seq;
            model.next_seq = model.next_seq.wrapping_add(1);
            let m = model.phys.glucose(seq, crate::model::DateTime::now());
            let m = if out_of_range {
                Physiology::out_of_range(m)
            } else {
                m
            };
            let clock_s = lock(&dev.st).clock.offset_ms_now().div_euclid(1000);
            model.glucose.push((m.clone(), clock_s));
            (m, clock_s)
        };
        let (m, clock_s) = m;
        self.record(
            dev,
            TruthEvent::Stored,
            0x2A18,
            &[],
            m,
            clock_s,
            false,
            out_of_range,
        );
    }

    /// Discovery: on every adapter that discovers, export devices as they
    /// "advertise" and jitter their RSSI; stalls when told.
    async fn run_discovery(self: Arc<Self>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_add(0xD15C));
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_rssi = Instant::now();
        loop {
            tick.tick().await;
            let scanning: Vec<(usize, Instant)> = (0..self.adapters.len())
                .filter_map(|k| {
                    let mut a = self.adapter(k);
                    if let Some(Some(until)) = a.stalled_until
                        && Instant::now() >= until
                    {
                        a.stalled_until = None;
                    }
                    if !a.powered || a.stalled_until.is_some() {
                        return None;
                    }
                    a.discovery_started.map(|t| (k, t))
                })
                .collect();
            for (k, started) in &scanning {
                let since = started.elapsed();
                for d in &self.devices {
                    // each device is heard 10–300 ms into a scan
                    let delay = Duration::from_millis(10 + (d.index as u64 * 37) % 290);
                    if since >= delay && !lock(&d.st).exported.has(*k) {
                        self.export_device(d, *k).await;
                    }
                }
            }
            if last_rssi.elapsed() >= Duration::from_secs(1) {
                last_rssi = Instant::now();
                for d in &self.devices {
                    let (rssi, exported) = {
                        let mut st = lock(&d.st);
                        if st.exported.is_empty() || st.connected || st.rssi_pinned {
                            continue;
                        }
                        st.rssi = (st.rssi + rng.gen_range(-2i16..=2)).clamp(-100, -30);
                        (st.rssi, st.exported)
                    };
                    for (k, _) in scanning.iter().filter(|(k, _)| exported.has(*k)) {
                        self.emit(
                            &on_adapter(&d.info.path, *k),
                            "org.bluez.Device1",
                            vec![("RSSI", Value::from(rssi))],
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// A device's firmware loop: measure on its schedule, deliver, drain the battery.
    async fn run_device(self: Arc<Self>, dev: Arc<Device>) {
        let mut speed = if self.cfg.speed > 0.0 {
            self.cfg.speed
        } else {
            1.0
        };
        let mut replaying = !crate::model::caught_up();
        let mut schedule = timetable(&dev, self.cfg.rates, speed);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(schedule.wake_at()) => {}
                _ = dev.wake.notified() => {}
            }
            if replaying && crate::model::caught_up() {
                // The replayed past has caught up with now: real time from here.
                replaying = false;
                speed = 1.0;
                schedule = timetable(&dev, self.cfg.rates, speed);
            }
            let due = schedule.due(Instant::now());
            let asked = std::mem::take(&mut lock(&dev.st).measure_now);
            if asked && dev.info.kind == DeviceKind::Spo2 {
                // the oximeter's button: a spot check now
                let m = lock(&dev.model).phys.spo2_spot();
                self.spot_check(&dev, m).await;
            }
            let asked = asked && dev.info.kind != DeviceKind::Spo2;
            if asked || due.measure {
                let by = lock(&dev.st).measure_user.take().filter(|_| asked);
                self.measure(&dev, speed, by).await;
            }
            if due.spot {
                let m = lock(&dev.model).phys.spo2_spot();
                self.spot_check(&dev, m).await;
            }
            if due.battery {
                self.drain(&dev).await;
            }
            self.deliver_pending(&dev).await;
        }
    }

    /// A spot-check goes out at once to a client that listens; otherwise
    /// the oximeter stores it for RACP (PLXS: measurement storage).
    async fn spot_check(&self, dev: &Device, m: Measurement) {
        let clock_s = lock(&dev.st).clock.offset_ms_now().div_euclid(1000);
        if self.send(dev, m.clone(), clock_s, true).await {
            return;
        }
        lock(&dev.model).spot_checks.push((m.clone(), clock_s));
        self.record(
            dev,
            TruthEvent::Stored,
            0x2A5E,
            &[],
            m,
            clock_s,
            false,
            false,
        );
    }

    /// The device's regular measurement; on a shared device, by user `by`
    /// (one of its slots) or else its own patient.
    async fn measure(&self, dev: &Arc<Device>, speed: f64, by: Option<u8>) {
        match dev.info.kind {
            DeviceKind::Hr => {
                if self.deliverable(dev, 0x2A37) {
                    let m = lock(&dev.model).phys.heart_rate();
                    self.send(dev, m, 0, true).await;
                }
            }
            DeviceKind::Spo2 => {
                if self.deliverable(dev, 0x2A5F) {
                    let m = lock(&dev.model).phys.spo2_continuous();
                    self.send(dev, m, 0, true).await;
                }
            }
            DeviceKind::Bp => {
                let (icp, result) = as_user(dev, by, Physiology::blood_pressure);
                if self.deliverable(dev, 0x2A36) {
                    for m in icp {
                        self.send(dev, m, 0, false).await;
                        tokio::time::sleep(Duration::from_secs_f64(0.3 / speed)).await;
                    }
                }
                queue(dev, result);
            }
            DeviceKind::Temp => {
                let m = lock(&dev.model).phys.temperature();
                queue(dev, m);
            }
            DeviceKind::Scale => {
                let m = as_user(dev, by, Physiology::weight);
                queue(dev, m);
            }
            DeviceKind::Bodycomp => {
                let m = as_user(dev, by, Physiology::body_composition);
                queue(dev, m);
            }
            DeviceKind::Glucose => self.store_glucose(dev, false),
        }
    }

    /// Hand over the queued measurements, oldest first; a consent-gated
    /// device only those of the user who consented on this link (others
    /// wait, in order, for a link where their user consents).
    async fn deliver_pending(&self, dev: &Device) {
        loop {
            let gate = {
                let st = lock(&dev.st);
                st.consent_gated.then_some(st.uds_user)
            };
            let next = {
                let model = lock(&dev.model);
                model
                    .pending
                    .iter()
                    .position(|(m, _)| match gate {
                        None => true,
                        Some(consented) => m.user().is_none_or(|u| Some(u) == consented),
                    })
                    .map(|i| (i, model.pending[i].clone()))
            };
            let Some((i, (m, clock_s))) = next else {
                return;
            };
            if !self.send(dev, m, clock_s, true).await {
                return;
            }
            lock(&dev.model).pending.remove(i);
            if gate.is_some() {
                // An indication waits for its confirmation, a connection
                // event or two: a consent written meanwhile changes the
                // user before the next goes out.
                tokio::time::sleep(INDICATION_CONFIRMED).await;
            }
        }
    }

    async fn drain(&self, dev: &Device) {
        let level = {
            let st = lock(&dev.st);
            // per 30 s: ~6 %/h while streaming, ~0.6 %/h idle (advertising)
            let rate = if st.connected { 0.05 } else { 0.005 };
            (st.battery - rate).max(1.0)
        };
        self.set_battery(dev, level).await;
    }

    /// Set the battery level; a change of whole percent is readable and
    /// notified (0x2A19) like on a real device.
    async fn set_battery(&self, dev: &Device, level: f64) {
        let (before, after) = {
            let mut st = lock(&dev.st);
            let before = st.battery as u8;
            st.battery = level.clamp(0.0, 100.0);
            (before, st.battery as u8)
        };
        if before != after {
            if let Some(ch) = dev.char(0x2A19) {
                *lock(&ch.value) = vec![after];
            }
            self.send(dev, Measurement::Battery { percent: after }, 0, false)
                .await;
        }
    }
}

/// How long a consent-gated device's queued measurement takes to be
/// confirmed before the next goes out (two 30 ms connection events).
const INDICATION_CONFIRMED: Duration = Duration::from_millis(60);

/// The device's Current Time (0x2A2B) now, by its own clock.
fn current_time(dev: &Device) -> Vec<u8> {
    let device_ms = crate::model::unix_now_ms() + lock(&dev.st).clock.offset_ms_now();
    hailan_proto::gatt::CurrentTime::at(device_ms)
        .map(|t| t.encode())
        .unwrap_or_default()
}

/// How often a device does things, in its world's time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rates {
    /// Busy (the default, for demos and tests): a cuff every 3 min, a
    /// thermometer every minute, a scale every 2 min, a glucose record every
    /// 5 min, a spot-check every minute.
    #[default]
    Demo,
    /// A household's day: a cuff twice a day, a thermometer three times, a
    /// scale once, a glucose record and a spot-check four times.
    Home,
}

impl Rates {
    /// `demo` or `home`.
    pub fn parse(s: &str) -> Result<Rates, String> {
        match s {
            "demo" => Ok(Rates::Demo),
            "home" => Ok(Rates::Home),
            other => Err(format!("unknown rates {other:?} (demo, home)")),
        }
    }

    /// Seconds between a device's measurements (streaming devices: 1 s).
    fn period_s(self, kind: DeviceKind) -> f64 {
        const HOUR: f64 = 3600.0;
        match (kind, self) {
            (DeviceKind::Hr | DeviceKind::Spo2, _) => 1.0,
            (DeviceKind::Bp, Rates::Demo) => 180.0,
            (DeviceKind::Bp, Rates::Home) => 12.0 * HOUR,
            (DeviceKind::Temp, Rates::Demo) => 60.0,
            (DeviceKind::Temp, Rates::Home) => 8.0 * HOUR,
            (DeviceKind::Scale | DeviceKind::Bodycomp, Rates::Demo) => 120.0,
            (DeviceKind::Scale | DeviceKind::Bodycomp, Rates::Home) => 24.0 * HOUR,
            (DeviceKind::Glucose, Rates::Demo) => 300.0,
            (DeviceKind::Glucose, Rates::Home) => 6.0 * HOUR,
        }
    }

    /// Seconds between an oximeter's spot-checks.
    fn spot_period_s(self) -> f64 {
        match self {
            Rates::Demo => 60.0,
            Rates::Home => 6.0 * 3600.0,
        }
    }
}

/// A device's timetable from now at `speed` (no wake-up closer than 50 ms
/// of real time: a replayed week does not spin a strap's loop).
fn timetable(dev: &Device, rates: Rates, speed: f64) -> Schedule {
    let real = |s: f64| Duration::from_secs_f64(s / speed).max(Duration::from_millis(50));
    let period_s = rates.period_s(dev.info.kind);
    // stagger devices so 50 straps do not fire in the same millisecond
    let stagger = Duration::from_secs_f64(
        (period_s.min(1.0) * ((dev.index * 97) % 100) as f64 / 100.0) / speed,
    );
    Schedule::new(
        Instant::now(),
        stagger,
        real(period_s),
        (dev.info.kind == DeviceKind::Spo2).then(|| real(rates.spot_period_s())),
        real(30.0),
    )
}

/// The RACP response code `code` to a request with op code `op`.
fn racp_answer(op: u8, code: u8) -> Vec<u8> {
    hailan_proto::gatt::Racp::ResponseCode {
        request_op_code: op,
        response: code,
    }
    .encode()
}

/// `measure` with the body of user `by` (a slot of a shared device with a
/// body of its own), or else the device's own patient.
fn as_user<T>(dev: &Device, by: Option<u8>, measure: impl FnOnce(&mut Physiology) -> T) -> T {
    let mut model = lock(&dev.model);
    let model = &mut *model;
    match by
        .and_then(|u| model.users.get_mut(&u))
        .and_then(|s| s.phys.as_mut())
    {
        Some(phys) => measure(phys),
        None => measure(&mut model.phys),
    }
}

/// `path` (under `hci0`) under the adapter holding the device's link.
fn on_link(dev: &Device, path: &str) -> String {
    on_adapter(path, lock(&dev.st).link_on)
}

fn queue(dev: &Device, m: Measurement) {
    // Stamped by the device's clock as it stands now.
    let clock_s = lock(&dev.st).clock.offset_ms_now().div_euclid(1000);
    let mut model = lock(&dev.model);
    if model.pending.len() >= 50 {
        model.pending.pop_front(); // memory full: the oldest goes, as on real cuffs
    }
    model.pending.push_back((m, clock_s));
}

/// A running simulator (in this process). Dropping it stops the devices and
/// releases `org.bluez`.
pub struct Simulator {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Connect to the bus at `bus_address`, own `org.bluez`, export the
    /// adapter, and start the devices. Returns once the name is owned: a
    /// client may connect right away.
    pub async fn start(bus_address: &str, cfg: SimConfig) -> anyhow::Result<Simulator> {
        let file = match &cfg.ground_truth {
            Some(p) => Some(
                std::fs::File::create(p)
                    .with_context(|| format!("creating ground-truth file {}", p.display()))?,
            ),
            None => None,
        };
        if let Some(behind) = cfg.replay
            && !crate::model::start_replay(behind, cfg.speed)
        {
            anyhow::bail!(
                "a replay already runs in this process: one simulator per process replays"
            );
        }
        let mut devices = Vec::new();
        let mut index = 0;
        for (kind, n) in &cfg.devices {
            let already = devices
                .iter()
                .filter(|d: &&Arc<Device>| d.info.kind == *kind)
                .count();
            for k in 0..*n {
                let mut device = Device::new(*kind, already + k, index, cfg.seed);
                if let Some((_, method)) = cfg.pairing.iter().find(|(d, _)| *d == device.info.name)
                {
                    device.info.pairing = Pairing::parse(method, cfg.seed, index)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("pairing of {}", device.info.name))?;
                }
                devices.push(Arc::new(device));
                index += 1;
            }
        }
        if let Some((d, _)) = cfg
            .pairing
            .iter()
            .find(|(d, _)| !devices.iter().any(|x| x.info.name == *d))
        {
            anyhow::bail!("--pairing names {d:?}, which is not a simulated device");
        }
        let agents = Arc::new(Mutex::new(Agents::default()));
        let conn = zbus::connection::Builder::address(bus_address)
            .with_context(|| format!("bad bus address {bus_address:?}"))?
            .serve_at("/", zbus::fdo::ObjectManager)?
            .serve_at(
                "/org/bluez",
                AgentManager {
                    agents: agents.clone(),
                },
            )?
            .build()
            .await
            .with_context(|| format!("connecting to {bus_address}"))?;
        if !(1..=32).contains(&cfg.adapters) {
            anyhow::bail!("{} adapters: the simulator has 1 to 32", cfg.adapters);
        }
        let inner = Arc::new(Inner {
            conn: conn.clone(),
            adapters: (0..cfg.adapters)
                .map(|_| Mutex::new(AdapterState::new()))
                .collect(),
            links: Mutex::new(Links::default()),
            devices,
            agents,
            truth: TruthLog::new(file),
            start: Instant::now(),
            notifications: Default::default(),
            cfg,
        });
        for k in 0..inner.adapters.len() {
            conn.object_server()
                .at(
                    crate::device::adapter_path(k),
                    Adapter {
                        inner: inner.clone(),
                        k,
                    },
                )
                .await?;
        }
        // Records already on the meters are part of the truth.
        for d in &inner.devices {
            let stored = lock(&d.model).glucose.clone();
            for (m, clock_s) in stored {
                inner.record(d, TruthEvent::Stored, 0x2A18, &[], m, clock_s, false, false);
            }
        }
        // Own the name last: once a client sees org.bluez, everything is there.
        conn.request_name("org.bluez")
            .await
            .context("owning org.bluez (is another simulator or BlueZ on this bus?)")?;
        let mut tasks = vec![tokio::spawn(inner.clone().run_discovery())];
        for d in &inner.devices {
            tasks.push(tokio::spawn(inner.clone().run_device(d.clone())));
        }
        tasks.push(tokio::spawn(watch_clients(inner.clone())));
        for sf in inner.cfg.faults.clone() {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(sf.at).await;
                loop {
                    if let Err(e) = inner.inject(sf.fault.clone()).await {
                        tracing::warn!("fault {:?}: {e:#}", sf.fault);
                    }
                    match sf.every {
                        Some(p) if !p.is_zero() => tokio::time::sleep(p).await,
                        _ => break,
                    }
                }
            }));
        }
        Ok(Simulator { inner, tasks })
    }

    /// The simulated devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.inner.devices.iter().map(|d| d.info.clone()).collect()
    }

    /// One device by name (`hr0`) or address.
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        self.inner.dev_by_ref(name).map(|d| d.info.clone())
    }

    /// Apply a fault now.
    pub async fn inject(&self, fault: Fault) -> anyhow::Result<()> {
        self.inner.inject(fault).await
    }

    /// Links up now and the most ever up at once (all adapters).
    pub fn links(&self) -> (usize, usize) {
        let l = lock(&self.inner.links);
        (l.now, l.peak)
    }

    /// Links up now through adapter `hci{k}`.
    pub fn links_on(&self, k: usize) -> usize {
        self.inner
            .devices
            .iter()
            .filter(|d| lock(&d.st).linked_on(k))
            .count()
    }

    /// The adapter (`hci{k}`) holding the device's link, if it is connected.
    pub fn linked_through(&self, name: &str) -> Option<usize> {
        let d = self.inner.dev_by_ref(name)?;
        let st = lock(&d.st);
        st.connected.then_some(st.link_on)
    }

    /// Take a measurement now (cuff, thermometer, scale, glucose record, …).
    pub fn measure_now(&self, name: &str) -> anyhow::Result<()> {
        let d = self
            .inner
            .dev_by_ref(name)
            .with_context(|| format!("no simulated device {name:?}"))?;
        lock(&d.st).measure_now = true;
        d.wake.notify_one();
        Ok(())
    }

    /// Take a measurement now by user `user` of a shared device (one of
    /// its slots: [`Simulator::users`]).
    pub fn measure_by(&self, name: &str, user: u8) -> anyhow::Result<()> {
        let d = self
            .inner
            .dev_by_ref(name)
            .with_context(|| format!("no simulated device {name:?}"))?;
        anyhow::ensure!(
            lock(&d.model).users.contains_key(&user),
            "{name} has no user {user} (users: {:?})",
            self.users(name)
        );
        {
            let mut st = lock(&d.st);
            st.measure_user = Some(user);
            st.measure_now = true;
        }
        d.wake.notify_one();
        Ok(())
    }

    /// A shared device's user slots: (index, consent code).
    pub fn users(&self, name: &str) -> Vec<(u8, u16)> {
        self.inner.dev_by_ref(name).map_or_else(Vec::new, |d| {
            lock(&d.model)
                .users
                .iter()
                .map(|(i, s)| (*i, s.consent))
                .collect()
        })
    }

    /// A new user slot made on the device itself (its own buttons), with
    /// `consent`: its index.
    pub fn add_user(&self, name: &str, consent: u16) -> anyhow::Result<u8> {
        let d = self
            .inner
            .dev_by_ref(name)
            .with_context(|| format!("no simulated device {name:?}"))?;
        anyhow::ensure!(d.info.kind.has_users(), "{name} has no user slots");
        anyhow::ensure!(consent <= 9999, "a consent code is 0–9999");
        self.inner
            .new_user(d, consent)
            .with_context(|| format!("{name} has no free user slot"))
    }

    /// The glucose records stored on a meter.
    pub fn glucose_records(&self, name: &str) -> Vec<Measurement> {
        self.inner
            .dev_by_ref(name)
            .map(|d| {
                lock(&d.model)
                    .glucose
                    .iter()
                    .map(|(m, _)| m.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How far the device's clock is ahead of the true time now, in
    /// milliseconds (`None`: no such device).
    pub fn clock_offset_ms(&self, name: &str) -> Option<i64> {
        self.inner
            .dev_by_ref(name)
            .map(|d| lock(&d.st).clock.offset_ms_now())
    }

    /// Records a device holds for RACP: a meter's glucose records, an
    /// oximeter's stored spot-checks.
    pub fn stored_records(&self, name: &str) -> usize {
        self.inner.dev_by_ref(name).map_or(0, |d| {
            let m = lock(&d.model);
            m.glucose.len() + m.spot_checks.len()
        })
    }

    /// How many times a client set the device's clock.
    pub fn clock_sets(&self, name: &str) -> u32 {
        self.inner
            .dev_by_ref(name)
            .map_or(0, |d| lock(&d.st).clock_sets)
    }

    /// Is the device connected (simulator's view)?
    pub fn is_connected(&self, name: &str) -> bool {
        self.inner
            .dev_by_ref(name)
            .map(|d| lock(&d.st).connected)
            .unwrap_or(false)
    }

    /// Ground truth recorded so far.
    pub fn truth(&self) -> Vec<TruthRecord> {
        self.inner.truth.snapshot()
    }

    /// Live ground truth from now on.
    pub fn subscribe_truth(&self) -> tokio::sync::broadcast::Receiver<TruthRecord> {
        self.inner.truth.subscribe()
    }

    /// Notifications and indications sent so far.
    pub fn notifications_sent(&self) -> u64 {
        self.inner
            .notifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Is the bus still there?
    pub async fn bus_alive(&self) -> bool {
        match zbus::fdo::DBusProxy::new(&self.inner.conn).await {
            Ok(p) => p.get_id().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Stop the devices and release the bus name.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = self.inner.conn.release_name("org.bluez").await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// BlueZ drops a client's discovery and notify sessions when it leaves the bus.
async fn watch_clients(inner: Arc<Inner>) {
    use futures::StreamExt;
    let Ok(dbus) = zbus::fdo::DBusProxy::new(&inner.conn).await else {
        return;
    };
    let Ok(mut changes) = dbus.receive_name_owner_changed().await else {
        return;
    };
    while let Some(sig) = changes.next().await {
        let Ok(args) = sig.args() else { continue };
        if args.new_owner().is_some() {
            continue;
        }
        let gone = args.name().to_string();
        if !gone.starts_with(':') {
            continue;
        }
        for k in 0..inner.adapters.len() {
            let was_discovering = {
                let mut a = inner.adapter(k);
                let ended = a.discovery_clients.remove(&gone) && a.discovery_clients.is_empty();
                if ended {
                    a.discovery_started = None;
                }
                ended
            };
            if was_discovering {
                inner
                    .emit(
                        &crate::device::adapter_path(k),
                        "org.bluez.Adapter1",
                        vec![("Discovering", Value::from(false))],
                    )
                    .await;
            }
        }
        for d in &inner.devices {
            for c in d.services.iter().flat_map(|s| s.chars.iter()) {
                let emptied = {
                    let mut s = lock(&c.sessions);
                    s.remove(&gone) && s.is_empty()
                };
                if emptied {
                    inner
                        .emit(
                            &on_link(d, &c.path),
                            "org.bluez.GattCharacteristic1",
                            vec![("Notifying", Value::from(false))],
                        )
                        .await;
                }
            }
        }
    }
}
