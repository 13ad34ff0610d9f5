//! The README's main command, run as a user runs it: `cargo xtask demo`
//! (for a short duration, on the binaries the test build made: building
//! them again in the dev profile would replace them under the other tests).
//! Every data type must reach its partition, all of it verified, and the
//! granted clinician must see it through the API.

use anyhow::{Context, Result, ensure};
use hailan_tests::repo_root;

#[test]
fn the_demo_shows_every_data_type_stored_verified_and_served() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["xtask", "demo", "--no-build", "--duration", "20"])
        .current_dir(repo_root())
        .stdin(std::process::Stdio::null())
        .output()
        .context("running xtask demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "xtask demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .split("== summary")
        .nth(1)
        .with_context(|| format!("no summary in:\n{stdout}"))?;
    for partition in [
        "HEART_RATE",
        "BLOOD_PRESSURE",
        "SPO2",
        "BODY_TEMPERATURE",
        "GLUCOSE",
        "BODY_WEIGHT",
    ] {
        let line = summary
            .lines()
            .find(|l| l.starts_with(partition))
            .with_context(|| format!("no {partition} rows in the summary:\n{summary}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let rows: u64 = f.get(1).context("rows")?.parse()?;
        ensure!(rows > 0, "{line}");
        ensure!(f.get(2) == Some(&"100.0%"), "not all verified: {line}");
    }
    let seen: u64 = summary
        .split(" sees ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no FHIR count in:\n{summary}"))?;
    ensure!(seen > 0, "the clinician sees nothing:\n{summary}");
    for process in ["hailan-gateway", "hailan-ingest run", "postgres (all)"] {
        ensure!(
            summary.lines().any(|l| l.starts_with(process)),
            "no CPU/RSS line for {process}:\n{summary}"
        );
    }
    Ok(())
}
