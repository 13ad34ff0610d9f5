//! hailan-firmware-sim: simulated health-device firmware behind a fake BlueZ
//! on a private D-Bus (see `../shared/BLUEZ-SIMULATION.md`).
//!
//! The device models arrive with the firmware-sim issue.

/// The simulator's version string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
