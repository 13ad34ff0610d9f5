//! `cargo xtask ha start|status|stop`: a Patroni cluster on this machine
//! (two PostgreSQL nodes, three etcd members, loopback ports) to try
//! OPERATIONS.md §3 by hand. `start` runs the `hailan-ha` binary of the
//! tests crate in the background (log: `.hailan/ha.log`, state:
//! `.hailan/ha/`), waits until the cluster is up and prints its
//! `DATABASE_URL` and `patronictl list`; `status` prints `patronictl list`;
//! `stop` stops every process it started.

use crate::services::{PACKAGES, missing_packages};
use crate::sh::{Cmd, repo_root, state_dir};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn dir() -> PathBuf {
    state_dir().join("ha")
}

fn pid_file() -> PathBuf {
    state_dir().join("ha.pid")
}

fn log_file() -> PathBuf {
    state_dir().join("ha.log")
}

fn running_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("hailan-ha")
        .then_some(pid)
}

fn env_value(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir().join("ha.env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

pub fn start() -> Result<()> {
    if let Some(pid) = running_pid() {
        bail!("already running (pid {pid}); `cargo xtask ha stop` first");
    }
    let tools = ["patroni", "etcd-server", "etcd-client"];
    let missing: Vec<&str> = missing_packages(PACKAGES)
        .into_iter()
        .filter(|p| tools.contains(p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing Debian packages: {} — run `cargo xtask services` (or as root: \
             apt-get install -y {})",
            missing.join(" "),
            missing.join(" ")
        );
    }
    crate::cargo()
        .args(["build", "-q", "-p", "hailan-tests", "--bin", "hailan-ha"])
        .run()
        .context("building hailan-ha")?;
    let bin = repo_root().join("target/debug/hailan-ha");
    std::fs::create_dir_all(state_dir())?;
    let log = std::fs::File::create(log_file())?;
    let child = std::process::Command::new("setsid")
        .arg(&bin)
        .arg("start")
        .arg(dir())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting hailan-ha")?;
    let pid = child.id();
    std::fs::write(pid_file(), pid.to_string())?;
    let started = Instant::now();
    let _ = std::fs::remove_file(dir().join("ha.env"));
    while env_value("DATABASE_URL").is_none() {
        let alive = std::fs::metadata(format!("/proc/{pid}")).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            });
        if !alive || started.elapsed() > Duration::from_secs(180) {
            let log = std::fs::read_to_string(log_file()).unwrap_or_default();
            let _ = stop();
            bail!("the HA cluster did not come up:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "HA cluster up in {:.1} s (pid {pid}, log {})",
        started.elapsed().as_secs_f64(),
        log_file().display()
    );
    println!(
        "DATABASE_URL={}",
        env_value("DATABASE_URL").unwrap_or_default()
    );
    println!(
        "ETCD_ENDPOINTS={}",
        env_value("ETCD_ENDPOINTS").unwrap_or_default()
    );
    status()
}

pub fn status() -> Result<()> {
    let Some(pid) = running_pid() else {
        println!("not running (`cargo xtask ha start`)");
        return Ok(());
    };
    let config = env_value("PATRONI_CONFIG").context("the cluster is still starting")?;
    println!("hailan-ha pid {pid}; patronictl -c {config} list");
    Cmd::new("patronictl")
        .args(["-c", &config, "list"])
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .run()
}

pub fn stop() -> Result<()> {
    let Some(pid) = running_pid() else {
        println!("not running");
        let _ = std::fs::remove_file(pid_file());
        return Ok(());
    };
    Cmd::new("kill").args(["-TERM", &pid.to_string()]).run()?;
    let started = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "hailan-ha (pid {pid}) did not stop within 30 s; see {}",
                log_file().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(pid_file());
    println!("stopped");
    Ok(())
}
