//! hailan-ingest: the server side of DESIGN §1 — MQTT consumer, batch
//! verifier, PostgreSQL writer, quarantine, device state, admin CLI and the
//! clinician API. The binary (`src/main.rs`) is a thin layer over this crate.
//!
//! - [`db`]: connecting, the embedded migrations, and the schema summary.

pub mod db;
