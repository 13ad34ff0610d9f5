//! Development zk keys, so tests can prove and verify without a real trusted
//! setup: a seeded setup written to a temporary key directory.

use anyhow::Result;
use hailan_proto::zk::ProvingKey;

/// Development zk keys in a temporary directory (what `zk.keys_dir` names).
pub struct DevZk {
    /// The directory `zk setup` wrote: proving and verifying keys of both
    /// kinds and their `keys.json`. Point ingest's, the API's or a gateway's
    /// key directory here; deleted on drop.
    pub dir: tempfile::TempDir,
    /// The proving key for one reading per proof (`reading.pk`).
    pub reading: ProvingKey,
    /// The proving key for a window of one-slot readings under one proof
    /// (`window.pk`).
    pub window: ProvingKey,
}

impl DevZk {
    /// Run the development setup with the fixed seed 20261123 (the same
    /// keys every time; anyone can forge proofs for them, so only tests and
    /// demos accept them) into a fresh temporary directory, and load both
    /// proving keys.
    pub fn new() -> Result<DevZk> {
        let dir = tempfile::tempdir()?;
        hailan_ingest::zk_cli::setup(dir.path(), Some(20261123), true)?;
        let reading = ProvingKey::from_bytes(&std::fs::read(dir.path().join("reading.pk"))?)?;
        let window = ProvingKey::from_bytes(&std::fs::read(dir.path().join("window.pk"))?)?;
        Ok(DevZk {
            dir,
            reading,
            window,
        })
    }
}
