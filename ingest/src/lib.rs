//! hailan-ingest: the server side of DESIGN §1 — MQTT consumer, batch
//! verifier, PostgreSQL writer, quarantine, device state and the admin CLI.
//! The binary (`src/main.rs`) is a thin layer over this crate. The database
//! connection and migrations are `hailan_db`'s; the clinician API is its own
//! crate and process (`hailan-api`).
//!
//! - [`config`]: the TOML + environment configuration.
//! - [`plan`]: one batch of messages → the rows of one transaction (verifies proofs).
//! - [`store`]: writing a plan in one transaction.
//! - [`commit`]: committing a batch whatever it holds — retry connection loss, isolate what cannot be stored.
//! - [`run`]: the consumer loop — ack after commit.
//! - [`fair_share`]: per-gateway limits on messages and verification work.
//! - [`link`]: gateways' online/offline status → their devices' link state.
//! - [`quarantine`]: reasons, listing and replay.
//! - [`admin`]: users, gateways, grants and tokens.
//! - [`metrics`], [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`zk_cli`]: `hailan-ingest zk setup / export`.

#![deny(missing_docs)]

pub mod admin;
pub mod commit;
pub mod config;
pub mod fair_share;
pub mod http;
pub mod link;
pub mod metrics;
pub mod plan;
pub mod quarantine;
pub mod run;
pub mod store;
pub mod zk_cli;
