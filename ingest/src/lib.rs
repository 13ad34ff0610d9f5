//! hailan-ingest: the server side of DESIGN §1 — MQTT consumer, batch
//! verifier, PostgreSQL writer, quarantine, device state, admin CLI and the
//! clinician API. The binary (`src/main.rs`) is a thin layer over this crate.
//!
//! - [`config`]: the TOML + environment configuration.
//! - [`db`]: connecting, the embedded migrations, and the schema summary.
//! - [`plan`]: one batch of messages → the rows of one transaction (verifies proofs).
//! - [`store`]: writing a plan in one transaction.
//! - [`commit`]: committing a batch whatever it holds — retry connection loss, isolate what cannot be stored.
//! - [`run`]: the consumer loop — ack after commit.
//! - [`fair_share`]: per-gateway limits on messages and verification work.
//! - [`quarantine`]: reasons, listing and replay.
//! - [`admin`]: users, gateways, grants and tokens.
//! - [`metrics`], [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`zk_cli`]: `hailan-ingest zk setup / export`.
//! - [`api`]: `hailan-ingest api`, the clinician API (JSON, FHIR, web page).

pub mod admin;
pub mod api;
pub mod commit;
pub mod config;
pub mod db;
pub mod fair_share;
pub mod http;
pub mod link;
pub mod metrics;
pub mod plan;
pub mod quarantine;
pub mod run;
pub mod store;
pub mod zk_cli;
