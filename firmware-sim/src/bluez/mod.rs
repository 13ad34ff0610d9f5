//! The fake `org.bluez`: D-Bus interfaces with BlueZ's names, property types
//! and error names. Each interface object is a thin view; the behaviour lives
//! in [`crate::sim::Inner`].

pub mod error;

use crate::device::{Char, Device, adapter_path, on_adapter, uuid128};
use crate::sim::Inner;
pub use error::BluezError;
use std::collections::HashMap;
use std::sync::Arc;
use zbus::message::Header;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

/// The address of adapter `k` (`00:1A:7D:DA:71:13` for `hci0`).
pub fn adapter_address(k: usize) -> String {
    format!("00:1A:7D:DA:71:{:02X}", 0x13 + (k % 0x20))
}

type Options = HashMap<String, OwnedValue>;

fn opath(s: &str) -> OwnedObjectPath {
    OwnedObjectPath::from(ObjectPath::from_string_unchecked(s.to_string()))
}

fn sender(hdr: &Header<'_>) -> String {
    hdr.sender().map(|s| s.to_string()).unwrap_or_default()
}

/// A property setter can only fail with `fdo::Error`, so a refused `Powered`
/// set arrives as `org.freedesktop.DBus.Error.Failed` with BlueZ's message
/// (real BlueZ: `org.bluez.Error.Failed`, same message).
fn setter_error(e: BluezError) -> zbus::fdo::Error {
    use zbus::DBusError;
    zbus::fdo::Error::Failed(e.description().unwrap_or("Failed").to_string())
}

/// The registered pairing agents, as BlueZ keeps them: one per D-Bus
/// client (unique name → object path), and which one is the default.
#[derive(Debug, Default)]
pub struct Agents {
    by_client: HashMap<String, String>,
    default: Option<String>,
}

impl Agents {
    /// The caller of a message about `agent`, if it registered that agent.
    fn owner_of(&self, hdr: &Header<'_>, agent: &ObjectPath<'_>) -> Result<String, BluezError> {
        let client = sender(hdr);
        if self.by_client.get(&client).map(String::as_str) != Some(agent.as_str()) {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        }
        Ok(client)
    }

    /// The agent that answers a pairing `caller` started: the caller's own,
    /// else the default agent (doc/org.bluez.Device.rst, `Pair`).
    pub fn for_caller(&self, caller: &str) -> Option<(String, String)> {
        let client = if self.by_client.contains_key(caller) {
            caller.to_string()
        } else {
            self.default.clone()?
        };
        let path = self.by_client.get(&client)?.clone();
        Some((client, path))
    }
}

/// The capabilities `RegisterAgent` accepts (doc/org.bluez.AgentManager.rst).
const CAPABILITIES: [&str; 6] = [
    "",
    "DisplayOnly",
    "DisplayYesNo",
    "KeyboardOnly",
    "NoInputNoOutput",
    "KeyboardDisplay",
];

/// `org.bluez.AgentManager1` at `/org/bluez`.
pub struct AgentManager {
    pub(crate) agents: Arc<std::sync::Mutex<Agents>>,
}

impl AgentManager {
    fn agents(&self) -> std::sync::MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[zbus::interface(name = "org.bluez.AgentManager1", introspection_docs = false)]
impl AgentManager {
    async fn register_agent(
        &self,
        agent: ObjectPath<'_>,
        capability: String,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), BluezError> {
        if !CAPABILITIES.contains(&capability.as_str()) {
            return Err(BluezError::InvalidArguments(
                "Invalid arguments in method call".into(),
            ));
        }
        let mut a = self.agents();
        let client = sender(&hdr);
        if a.by_client.contains_key(&client) {
            return Err(BluezError::AlreadyExists("Already Exists".into()));
        }
        tracing::info!(%client, path = %agent, %capability, "agent registered");
        a.by_client.insert(client, agent.to_string());
        Ok(())
    }
    async fn unregister_agent(
        &self,
        agent: ObjectPath<'_>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), BluezError> {
        let mut a = self.agents();
        let client = a.owner_of(&hdr, &agent)?;
        a.by_client.remove(&client);
        if a.default.as_deref() == Some(client.as_str()) {
            a.default = None;
        }
        Ok(())
    }
    async fn request_default_agent(
        &self,
        agent: ObjectPath<'_>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), BluezError> {
        let mut a = self.agents();
        let client = a.owner_of(&hdr, &agent)?;
        a.default = Some(client);
        Ok(())
    }
}

/// `org.bluez.Adapter1` at `/org/bluez/hci{k}`.
pub struct Adapter {
    pub(crate) inner: Arc<Inner>,
    /// Which adapter (`hci{k}`).
    pub(crate) k: usize,
}

#[zbus::interface(name = "org.bluez.Adapter1", introspection_docs = false)]
impl Adapter {
    async fn start_discovery(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), BluezError> {
        self.inner.start_discovery(self.k, sender(&hdr)).await
    }
    async fn stop_discovery(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), BluezError> {
        self.inner.stop_discovery(self.k, &sender(&hdr)).await
    }
    async fn set_discovery_filter(&self, _filter: Options) -> Result<(), BluezError> {
        Ok(())
    }
    async fn get_discovery_filters(&self) -> Vec<String> {
        [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]
        .map(String::from)
        .to_vec()
    }
    async fn remove_device(&self, device: ObjectPath<'_>) -> Result<(), BluezError> {
        self.inner.remove_device(self.k, device.as_str()).await
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Address")]
    fn address(&self) -> String {
        adapter_address(self.k)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "AddressType")]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn name(&self) -> String {
        "hailan-sim".into()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Alias")]
    fn alias(&self) -> String {
        "hailan-sim".into()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Class")]
    fn class(&self) -> u32 {
        0
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Modalias")]
    fn modalias(&self) -> String {
        "usb:v1D6Bp0246d0548".into()
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Powered")]
    fn powered(&self) -> bool {
        self.inner.powered(self.k)
    }
    #[zbus(property, name = "Powered")]
    async fn set_powered(&mut self, powered: bool) -> zbus::fdo::Result<()> {
        self.inner
            .set_powered(self.k, powered)
            .await
            .map_err(setter_error)
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Discovering")]
    fn discovering(&self) -> bool {
        self.inner.discovering(self.k)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Discoverable")]
    fn discoverable(&self) -> bool {
        false
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Pairable")]
    fn pairable(&self) -> bool {
        true
    }
    #[zbus(property(emits_changed_signal = "const"), name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        vec![uuid128(0x1800), uuid128(0x1801)]
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Roles")]
    fn roles(&self) -> Vec<String> {
        vec!["central".into()]
    }
}

/// `org.bluez.Device1`: one device as adapter `adapter` sees it.
pub struct DeviceIface {
    pub(crate) inner: Arc<Inner>,
    pub(crate) dev: Arc<Device>,
    pub(crate) adapter: usize,
}

impl DeviceIface {
    fn st<T>(&self, f: impl FnOnce(&crate::device::DevState) -> T) -> T {
        match self.dev.st.lock() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }
}

#[zbus::interface(name = "org.bluez.Device1", introspection_docs = false)]
impl DeviceIface {
    async fn connect(&self) -> Result<(), BluezError> {
        self.inner.connect(&self.dev, self.adapter).await
    }
    async fn disconnect(&self) -> Result<(), BluezError> {
        self.inner.disconnect(&self.dev, self.adapter).await
    }
    async fn pair(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), BluezError> {
        self.inner
            .pair(&self.dev, self.adapter, &sender(&hdr))
            .await
    }
    async fn cancel_pairing(&self) -> Result<(), BluezError> {
        if !self.st(|s| s.pairing) {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        }
        self.dev.cancel_pairing.notify_waiters();
        Ok(())
    }
    async fn connect_profile(&self, _uuid: String) -> Result<(), BluezError> {
        Err(BluezError::NotSupported(
            "Operation is not supported".into(),
        ))
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Address")]
    fn address(&self) -> String {
        self.dev.info.address.clone()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "AddressType")]
    fn address_type(&self) -> String {
        "random".into()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn name(&self) -> String {
        self.dev.info.local_name.clone()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Alias")]
    fn alias(&self) -> String {
        self.dev.info.local_name.clone()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Appearance")]
    fn appearance(&self) -> u16 {
        self.dev.info.kind.appearance()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Icon")]
    fn icon(&self) -> String {
        "unknown".into()
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Paired")]
    fn paired(&self) -> bool {
        self.st(|s| s.paired.has(self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Bonded")]
    fn bonded(&self) -> bool {
        self.st(|s| s.paired.has(self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Trusted")]
    fn trusted(&self) -> bool {
        self.st(|s| s.trusted)
    }
    #[zbus(property, name = "Trusted")]
    fn set_trusted(&mut self, v: bool) {
        if let Ok(mut s) = self.dev.st.lock() {
            s.trusted = v;
        }
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Blocked")]
    fn blocked(&self) -> bool {
        false
    }
    #[zbus(property(emits_changed_signal = "const"), name = "LegacyPairing")]
    fn legacy_pairing(&self) -> bool {
        false
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Connected")]
    fn connected(&self) -> bool {
        self.st(|s| s.linked_on(self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "ServicesResolved")]
    fn services_resolved(&self) -> bool {
        self.st(|s| s.services_resolved && s.linked_on(self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "RSSI")]
    fn rssi(&self) -> i16 {
        self.st(|s| s.rssi)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "TxPower")]
    fn tx_power(&self) -> i16 {
        4
    }
    #[zbus(property(emits_changed_signal = "const"), name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        vec![
            uuid128(self.dev.info.kind.service_uuid16()),
            uuid128(0x180A),
            uuid128(0x180F),
        ]
    }
    #[zbus(property(emits_changed_signal = "const"), name = "ManufacturerData")]
    fn manufacturer_data(&self) -> HashMap<u16, OwnedValue> {
        let mut m = HashMap::new();
        // 0xFFFF: the SIG's "no company" id, as test devices use it.
        let bytes = vec![self.dev.info.kind.code(), (self.dev.index & 0xFF) as u8];
        if let Ok(v) = OwnedValue::try_from(Value::from(bytes)) {
            m.insert(0xFFFF, v);
        }
        m
    }
    #[zbus(property(emits_changed_signal = "const"), name = "ServiceData")]
    fn service_data(&self) -> HashMap<String, OwnedValue> {
        HashMap::new()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Adapter")]
    fn adapter(&self) -> OwnedObjectPath {
        opath(&adapter_path(self.adapter))
    }
}

/// `org.bluez.GattService1`.
pub struct ServiceIface {
    pub(crate) uuid16: u16,
    pub(crate) device_path: String,
}

#[zbus::interface(name = "org.bluez.GattService1", introspection_docs = false)]
impl ServiceIface {
    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(self.uuid16)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Primary")]
    fn primary(&self) -> bool {
        true
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Device")]
    fn device(&self) -> OwnedObjectPath {
        opath(&self.device_path)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Includes")]
    fn includes(&self) -> Vec<OwnedObjectPath> {
        vec![]
    }
}

/// `org.bluez.GattCharacteristic1`, under adapter `adapter`.
pub struct CharIface {
    pub(crate) inner: Arc<Inner>,
    pub(crate) dev: Arc<Device>,
    pub(crate) ch: Arc<Char>,
    pub(crate) adapter: usize,
}

fn offset(options: &Options) -> usize {
    options
        .get("offset")
        .and_then(|v| u16::try_from(v).ok())
        .map(usize::from)
        .unwrap_or(0)
}

#[zbus::interface(name = "org.bluez.GattCharacteristic1", introspection_docs = false)]
impl CharIface {
    async fn read_value(&self, options: Options) -> Result<Vec<u8>, BluezError> {
        self.inner
            .read_char(&self.dev, self.adapter, &self.ch, offset(&options))
    }
    async fn write_value(&self, value: Vec<u8>, _options: Options) -> Result<(), BluezError> {
        self.inner
            .write_char(&self.dev, self.adapter, &self.ch, value)
            .await
    }
    async fn start_notify(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), BluezError> {
        self.inner
            .start_notify(&self.dev, self.adapter, &self.ch, sender(&hdr))
            .await
    }
    async fn stop_notify(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), BluezError> {
        self.inner
            .stop_notify(&self.dev, self.adapter, &self.ch, &sender(&hdr))
            .await
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(self.ch.uuid16)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Service")]
    fn service(&self) -> OwnedObjectPath {
        opath(&on_adapter(&self.ch.service_path, self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Value")]
    fn value(&self) -> Vec<u8> {
        self.ch.value.lock().map(|v| v.clone()).unwrap_or_default()
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Notifying")]
    fn notifying(&self) -> bool {
        self.ch.notifying()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Flags")]
    fn flags(&self) -> Vec<String> {
        self.ch.flags.iter().map(|s| s.to_string()).collect()
    }
    #[zbus(property(emits_changed_signal = "const"), name = "MTU")]
    fn mtu(&self) -> u16 {
        247
    }
}

/// `org.bluez.GattDescriptor1` (the Client Characteristic Configuration),
/// under adapter `adapter`.
pub struct DescIface {
    pub(crate) dev: Arc<Device>,
    pub(crate) ch: Arc<Char>,
    pub(crate) adapter: usize,
}

#[zbus::interface(name = "org.bluez.GattDescriptor1", introspection_docs = false)]
impl DescIface {
    async fn read_value(&self, _options: Options) -> Result<Vec<u8>, BluezError> {
        if !self
            .dev
            .st
            .lock()
            .map(|s| s.linked_on(self.adapter))
            .unwrap_or(false)
        {
            return Err(BluezError::not_connected());
        }
        let bit = if self.ch.indicates() { 2 } else { 1 };
        Ok(vec![if self.ch.notifying() { bit } else { 0 }, 0])
    }
    async fn write_value(&self, _value: Vec<u8>, _options: Options) -> Result<(), BluezError> {
        // BlueZ owns the CCC descriptor: clients use StartNotify/StopNotify.
        Err(BluezError::NotPermitted("Write not permitted".into()))
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(0x2902)
    }
    #[zbus(property(emits_changed_signal = "const"), name = "Characteristic")]
    fn characteristic(&self) -> OwnedObjectPath {
        opath(&on_adapter(&self.ch.path, self.adapter))
    }
    #[zbus(property(emits_changed_signal = "false"), name = "Value")]
    fn value(&self) -> Vec<u8> {
        let bit = if self.ch.indicates() { 2 } else { 1 };
        vec![if self.ch.notifying() { bit } else { 0 }, 0]
    }
}
