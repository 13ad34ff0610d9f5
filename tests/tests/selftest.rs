//! `hailan-gateway selftest` → proof bundle → `hailan-ingest zk verify`:
//! the check a gateway owner runs after installing, and the one the arm64
//! package build runs under qemu against the amd64 verifier (issue 17).

use anyhow::{Context, Result};
use hailan_tests::DevZk;
use hailan_tests::gateway::workspace_binary;
use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&str], cwd: &Path) -> Result<Output> {
    Command::new(workspace_binary(bin)?)
        .args(args)
        .current_dir(cwd)
        .env_remove("HAILAN_GATEWAY_CONFIG")
        .output()
        .with_context(|| format!("running {bin}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_selftest_window_proof_verifies_on_the_server_and_a_changed_one_does_not() -> Result<()> {
    let zk = DevZk::new()?;
    let keys = zk.dir.path().to_str().context("utf-8 temp path")?;
    let work = tempfile::tempdir()?;
    let made = run(
        "hailan-gateway",
        &["selftest", "--zk-dir", keys, "--out", "bundle.json"],
        work.path(),
    )?;
    assert!(made.status.success(), "selftest failed: {}", text(&made));
    assert!(
        text(&made).contains("a window of 16 readings proven"),
        "{}",
        text(&made)
    );
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("bundle.json"))?)?;
    assert_eq!(bundle["statement"], "window");
    assert_eq!(bundle["key_id"], zk.window.id().to_string());

    let verified = run(
        "hailan-ingest",
        &["zk", "verify", "--bundle", "bundle.json", "--keys", keys],
        work.path(),
    )?;
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains("verified: window proof"),
        "{}",
        text(&verified)
    );

    // The same proof with one public input changed (the reading count) is refused.
    let mut changed = bundle.clone();
    changed["public_inputs"][3] = "15".into();
    std::fs::write(
        work.path().join("changed.json"),
        serde_json::to_vec(&changed)?,
    )?;
    let refused = run(
        "hailan-ingest",
        &["zk", "verify", "--bundle", "changed.json", "--keys", keys],
        work.path(),
    )?;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("does not verify against this key"),
        "{}",
        text(&refused)
    );
    Ok(())
}

#[test]
fn selftest_without_keys_names_the_key_directory_and_the_command_that_makes_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let out = run(
        "hailan-gateway",
        &["selftest", "--zk-dir", "no-such-dir"],
        work.path(),
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("keys.zk_dir") && said.contains("hailan-ingest zk setup"),
        "{said}"
    );
    Ok(())
}
