//! PostgreSQL clusters of one test's own, so a test may stop, restart or
//! kill its server without disturbing the others; and the `pg_ctl` and
//! configuration-file helpers they (and the standby and HA helpers) use.

use crate::db::HasUrl;
use crate::net::free_port;
use crate::process::{checked, children_of, is_root};
use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection};
use std::path::PathBuf;

/// A PostgreSQL 15 cluster of one test's own (initdb in a temporary
/// directory, its own port), so a test can restart or kill it without
/// disturbing the others. Runs as the `postgres` account when the test runs
/// as root. Stopped (immediate) and deleted on drop.
pub struct PrivatePostgres {
    /// The temporary directory holding the cluster (`data`), its log
    /// (`postgres.log`) and its Unix socket; deleted after the cluster stops.
    pub dir: tempfile::TempDir,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
    /// `postgres://hailan:hailan@127.0.0.1:<port>/hailan`: the migrated
    /// database, as its owner `hailan`.
    pub url: String,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl HasUrl for PrivatePostgres {
    fn url(&self) -> &str {
        &self.url
    }
}

pub(crate) fn as_postgres(program: &str) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
        c
    } else {
        std::process::Command::new(format!("{PG_BIN}/{program}"))
    }
}

/// `pg_ctl ARGS` on the cluster in `dir/data` listening on `port` (TCP on
/// 127.0.0.1 and a socket in `dir`), logging to `dir/postgres.log`.
pub(crate) fn pg_ctl(dir: &std::path::Path, port: u16, args: &[&str]) -> Result<()> {
    let mut c = as_postgres("pg_ctl");
    c.arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("-o")
        .arg(format!("-p {port} -k {} -h 127.0.0.1", dir.display()));
    c.args(args);
    checked(c, &format!("pg_ctl {}", args.join(" ")))
}

impl PrivatePostgres {
    /// initdb, start, create role `hailan` (password `hailan`) and database `hailan`, migrate.
    pub async fn start() -> Result<PrivatePostgres> {
        Self::start_with(&[]).await
    }

    /// Like [`PrivatePostgres::start`], with `extra_conf` lines appended to
    /// `postgresql.conf` before the first start (e.g. WAL archiving).
    pub async fn start_with(extra_conf: &[String]) -> Result<PrivatePostgres> {
        let dir = tempfile::Builder::new().prefix("hailan-pg-").tempdir()?;
        std::process::Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status()?;
        let data = dir.path().join("data");
        let port = free_port()?;
        let mut init = as_postgres("initdb");
        init.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        checked(init, "initdb")?;
        append_conf(&data, extra_conf)?;
        let pg = PrivatePostgres {
            url: format!("postgres://hailan:hailan@127.0.0.1:{port}/hailan"),
            dir,
            port,
        };
        pg.pg_ctl(&["start", "-w", "-t", "30"])?;
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut c = PgConnection::connect(&admin).await?;
        c.execute("CREATE ROLE hailan LOGIN PASSWORD 'hailan' CREATEDB CREATEROLE")
            .await?;
        c.execute("CREATE DATABASE hailan OWNER hailan").await?;
        c.close().await?;
        let pool = hailan_db::connect(&pg.url, 2).await?;
        hailan_db::migrate(&pool).await?;
        pool.close().await;
        Ok(pg)
    }

    /// Adopt the cluster in `dir/data` (e.g. a restored base backup) on
    /// `port`, without starting it; stopped on drop like any other.
    pub fn adopt(dir: tempfile::TempDir, port: u16) -> PrivatePostgres {
        PrivatePostgres {
            url: format!("postgres://hailan:hailan@127.0.0.1:{port}/hailan"),
            dir,
            port,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The URL of database `hailan` as the superuser `postgres`.
    pub fn superuser_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/hailan", self.port)
    }

    /// A connection as the superuser `postgres`.
    pub async fn superuser(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.superuser_url()).await?)
    }

    /// kill -9 the postmaster and every backend it started: a crash of the
    /// server, not a shutdown (nothing is flushed or handed over).
    pub fn kill9(&self) -> Result<()> {
        kill9_postmaster(&self.data_dir())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        pg_ctl(self.dir.path(), self.port, args)
    }

    /// Stop (fast: connections are cut) and start again; waits until it accepts connections.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "30"])
    }

    /// Stop (fast).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"])
    }

    /// Start a stopped cluster.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "30"])
    }
}

/// kill -9 the postmaster of the cluster in `data` and every backend it
/// started: a crash of the server, not a shutdown (nothing is flushed or
/// handed over).
pub fn kill9_postmaster(data: &std::path::Path) -> Result<()> {
    let pidfile = std::fs::read_to_string(data.join("postmaster.pid"))
        .context("reading postmaster.pid (is the cluster running?)")?;
    let pid: u32 = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid without a pid")?;
    let mut victims = vec![pid];
    victims.extend(children_of(pid));
    // One `kill` for all, so that no backend outlives the postmaster by
    // more than an instant. A backend that exited on its own between the
    // listing and the kill makes `kill` report failure ("No such
    // process"): what matters is that none of them is left.
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(victims.iter().map(|p| p.to_string()))
        .status()?;
    let alive = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while victims.iter().any(alive) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "kill -KILL left {:?} running",
            victims.iter().filter(|p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Append `lines` to `data/postgresql.conf` (later settings win).
pub fn append_conf(data: &std::path::Path, lines: &[String]) -> Result<()> {
    append_to(data, "postgresql.conf", lines)
}

/// Append `lines` to `data/<file>`.
pub fn append_to(data: &std::path::Path, file: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    if lines.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join(file))
        .with_context(|| format!("opening {file}"))?;
    writeln!(f, "\n# added by the test")?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
    }
}
