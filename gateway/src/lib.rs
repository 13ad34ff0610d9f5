//! hailan-gateway: the edge daemon that turns BLE health measurements into
//! sealed, proven readings and publishes them (DESIGN §1, §7).
//!
//! The BLE sessions, outbox and MQTT publisher arrive with the gateway issue;
//! for now the crate holds the command-line surface so the binary builds.

pub mod ble;
pub mod health;

/// The gateway's version string, as printed by `hailan-gateway --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
