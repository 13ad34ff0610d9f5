//! BlueZ's D-Bus error names (`org.bluez.Error.*`), with the messages BlueZ
//! itself uses where a client might match on them.

/// An error returned to a D-Bus client, named as BlueZ names it.
#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "org.bluez.Error")]
pub enum BluezError {
    /// A zbus-level failure.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `org.bluez.Error.Failed`.
    Failed(String),
    /// `org.bluez.Error.InProgress`.
    InProgress(String),
    /// `org.bluez.Error.NotReady` (adapter powered off).
    NotReady(String),
    /// `org.bluez.Error.NotPermitted` (e.g. "Not paired", "Read not permitted").
    NotPermitted(String),
    /// `org.bluez.Error.NotSupported`.
    NotSupported(String),
    /// `org.bluez.Error.InvalidArguments`.
    InvalidArguments(String),
    /// `org.bluez.Error.AlreadyExists` ("Already Paired").
    AlreadyExists(String),
    /// `org.bluez.Error.NotConnected`.
    NotConnected(String),
    /// `org.bluez.Error.DoesNotExist` (no such agent).
    DoesNotExist(String),
    /// `org.bluez.Error.AuthenticationFailed` (wrong passkey or PIN).
    AuthenticationFailed(String),
    /// `org.bluez.Error.AuthenticationCanceled` (agent or `CancelPairing`).
    AuthenticationCanceled(String),
    /// `org.bluez.Error.AuthenticationRejected` (the agent said no).
    AuthenticationRejected(String),
    /// `org.bluez.Error.AuthenticationTimeout` (no answer in time).
    AuthenticationTimeout(String),
}

impl BluezError {
    /// BlueZ answers GATT calls on a disconnected device with `Failed: Not connected`.
    pub fn not_connected() -> Self {
        BluezError::Failed("Not connected".into())
    }
    /// The ATT "insufficient authentication/encryption" error as BlueZ maps it.
    pub fn not_paired() -> Self {
        BluezError::NotPermitted("Not paired".into())
    }
    /// Adapter powered off.
    pub fn not_ready() -> Self {
        BluezError::NotReady("Resource Not Ready".into())
    }
}
