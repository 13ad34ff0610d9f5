//! Where the set-up's services are: tests find PostgreSQL and Mosquitto
//! through the settings `cargo xtask services` leaves in the environment or
//! in `.hailan/env`, and the set-up's files under the repository root.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub(crate) fn log_note(msg: &str) {
    eprintln!("hailan-tests: {msg}");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A setting from the environment, else from `.hailan/env`.
pub fn setting(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let text = std::fs::read_to_string(repo_root().join(".hailan/env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The PostgreSQL URL of the set-up's database.
pub fn database_url() -> Result<String> {
    setting("DATABASE_URL")
        .context("DATABASE_URL is not set and .hailan/env is missing: run `cargo xtask services`")
}
