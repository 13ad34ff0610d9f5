//! hailan-tests: helpers shared by the database and end-to-end tests.
//!
//! Tests run against the real PostgreSQL and Mosquitto that `cargo xtask
//! services` starts; `cargo xtask test` passes their URLs in the environment
//! (and writes them to `.hailan/env`, which is read when the variables are
//! not set, so `cargo nextest run` works on its own after set-up).
//!
//! The private modules hold the helpers nearly every test uses, one job
//! each; their public items are re-exported here, at the crate root, where
//! tests name them (`hailan_tests::TestDb`, `hailan_tests::eventually` …).

#![deny(missing_docs)]

pub mod api;
pub mod cpu;
pub mod gateway;
pub mod ha;
pub mod ops;

mod db;
mod device;
mod ingest;
mod mqtt;
mod net;
mod postgres;
mod process;
mod settings;
mod wait;
mod zk;

pub use db::{HasUrl, TestDb, count_readings, enrol, enrol_with_token, or_quarantined};
pub use device::{T0_MS, TestDevice, plausible_slots};
pub use ingest::{IngestOptions, IngestProcess};
pub use mqtt::{Publisher, mqtt_host_port, mqtt_ingest_host_port, mqtt_password};
pub use net::{free_port, http_get, metric};
pub use postgres::{PrivatePostgres, append_conf, append_to, kill9_postmaster};
pub use process::is_root;
pub use settings::{database_url, repo_root, setting};
pub use wait::eventually;
pub use zk::DevZk;
