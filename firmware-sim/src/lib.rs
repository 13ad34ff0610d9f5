//! hailan-firmware-sim: simulated health-device firmware behind a fake BlueZ
//! on a private D-Bus (see `firmware-sim/BLUEZ-SIMULATION.md`).
//!
//! - [`bluez`]: the D-Bus objects (`org.bluez` names, types, errors).
//! - [`sim`]: the engine ([`Simulator`]), discovery, connections, RACP.
//! - [`device`]: one device's identity, state and GATT layout.
//! - [`model`]: typed measurements and seeded physiology.
//! - [`encode`]: measurement → characteristic bytes through `hailan_proto::gatt`.
//! - [`faults`]: fault injection (library enum and CLI spec).
//! - [`pairing`]: each device's pairing method and the secret it shows.
//! - [`truth`]: the ground-truth log.
//! - [`harness`]: private `dbus-daemon`, simulator child process, per-test bus isolation.

#![deny(missing_docs)]

pub mod bluez;
pub mod device;
pub mod encode;
pub mod faults;
pub mod harness;
pub mod model;
pub mod pairing;
pub mod schedule;
pub mod sim;
pub mod truth;

pub use device::DeviceInfo;
pub use faults::Fault;
pub use model::{DeviceKind, Measurement};
pub use pairing::Pairing;
pub use sim::{SimConfig, Simulator};
pub use truth::{TruthEvent, TruthRecord};

/// The simulator's version string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
