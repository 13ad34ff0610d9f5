//! hailan-gateway: the edge daemon that turns BLE health measurements into
//! sealed, proven readings and publishes them (DESIGN §1, §7).
//!
//! - [`ble`]: adapter, scanning with a stall watchdog, device sessions, pairing.
//! - [`pipeline`]: decode → slots → window → prove and seal → outbox.
//! - [`store`]: the durable state (devices, secrets, seq counters, outbox).
//! - [`publisher`]: outbox → MQTT QoS 1, removed on PUBACK.
//! - [`daemon`]: `run`, wiring the above with systemd notify and one shutdown signal.
//! - [`owner`]: the owner's commands (`init`, `scan`, `pair`, `devices`, `forget`, `status`);
//!   [`household`]: shared devices' user slots (`pair --consent`, `unassigned`, `assign`).
//! - [`config`], [`keys`], [`metrics`], [`health`]: configuration, key material,
//!   Prometheus metrics, watchdog beats; [`home_assistant`]: optional MQTT discovery;
//!   [`selftest`]: prove one window with the installed keys (`hailan-gateway selftest`).

#![deny(missing_docs)]

pub mod ble;
pub mod config;
pub mod daemon;
pub mod health;
pub mod home_assistant;
pub mod household;
pub mod keys;
pub mod metrics;
pub mod owner;
pub mod pipeline;
pub mod publisher;
pub mod selftest;
pub mod store;

/// The gateway's version string, as printed by `hailan-gateway --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
