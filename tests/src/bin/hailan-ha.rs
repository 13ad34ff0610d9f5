//! `hailan-ha start DIR`: run a Patroni cluster (two PostgreSQL nodes over
//! three etcd members, loopback, `hailan_tests::ha`) in the foreground
//! until SIGTERM or Ctrl-C, then stop every process it started.
//! `cargo xtask ha start|status|stop` drives it; on start it writes
//! `DIR/ha.env` (the multi-host `DATABASE_URL`, a node's Patroni
//! configuration for `patronictl -c`, the etcd endpoints) once the cluster
//! has a leader, a synchronous standby and the migrated database.

use anyhow::{Context, Result};
use hailan_tests::ha::{HaCluster, TEST_TIMING};
use std::path::PathBuf;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("hailan-ha: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [cmd, dir] if cmd == "start" => PathBuf::from(dir),
        _ => anyhow::bail!("usage: hailan-ha start DIR"),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the old {}", dir.display()))?;
    }
    // Signals are handled from the start: a stop while the cluster is still
    // coming up drops the half-built cluster, which kills what it started.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let cluster = tokio::select! {
        c = HaCluster::start_in(dir.clone(), None, 2, TEST_TIMING) => c?,
        _ = term.recv() => anyhow::bail!("stopped while starting"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped while starting"),
    };
    let config = cluster
        .nodes
        .first()
        .map(|n| n.config.display().to_string())
        .unwrap_or_default();
    let env = format!(
        "DATABASE_URL={}\nPATRONI_CONFIG={config}\nETCD_ENDPOINTS={}\n",
        cluster.url(),
        cluster.etcd_endpoints()
    );
    let tmp = dir.join("ha.env.tmp");
    std::fs::write(&tmp, &env)?;
    std::fs::rename(&tmp, dir.join("ha.env"))?;
    print!("{env}");
    println!("{}", cluster.list().unwrap_or_else(|e| format!("{e:#}")));
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("hailan-ha: stopping");
    drop(cluster);
    let _ = std::fs::remove_file(dir.join("ha.env"));
    Ok(())
}
