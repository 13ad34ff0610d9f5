//! `hailan-ingest run` as a child process of one test, so tests exercise the
//! real binary, consuming only that test's gateways into its database.

use crate::db::HasUrl;
use crate::mqtt::{mqtt_ingest_host_port, mqtt_password};
use crate::process::spawn_logged;
use crate::zk::DevZk;
use anyhow::Result;

/// A `hailan-ingest run` child process for one test: its own consumer
/// group (so parallel tests never take each other's messages), client id,
/// database and keys. Killed on drop.
pub struct IngestProcess {
    /// The running `hailan-ingest run` (a new one after [`IngestProcess::restart`]).
    pub child: std::process::Child,
    /// Its MQTT client id (`ingest-test-<hex>` unless given): the broker
    /// keeps its persistent session under this id.
    pub client_id: String,
    /// Its stdout and stderr, `<client_id>.log` in the log directory,
    /// appended to across restarts; the last 40 lines are printed on drop.
    pub log: std::path::PathBuf,
    binary: std::path::PathBuf,
    env: Vec<(String, String)>,
}

/// What an [`IngestProcess`] starts with beyond its database, keys and gateways.
#[derive(Default)]
pub struct IngestOptions<'a> {
    /// Consumer group (processes of one group share the load); `None`: a fresh one.
    pub group: Option<&'a str>,
    /// `http.listen` for `/metrics` (`None`: off).
    pub http_listen: Option<&'a str>,
    /// The broker's service listener (`None`: the set-up's).
    pub broker: Option<(&'a str, u16)>,
    /// The MQTT client id (`None`: a fresh one). The same id again resumes
    /// the broker's persistent session of an earlier process.
    pub client_id: Option<&'a str>,
    /// More `HAILAN_INGEST__SECTION__KEY` settings.
    pub env: &'a [(&'a str, &'a str)],
}

impl IngestProcess {
    /// Start `binary run` for `gateways` against `db` with keys from `zk`.
    pub fn start(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
    ) -> Result<IngestProcess> {
        Self::start_opts(binary, db, zk, gateways, log_dir, IngestOptions::default())
    }

    /// Like [`IngestProcess::start`], in consumer group `group` (processes of
    /// one group share the load), with `http_listen` for `/metrics` (empty: off).
    pub fn start_with(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
        group: &str,
        http_listen: &str,
    ) -> Result<IngestProcess> {
        let opts = IngestOptions {
            group: Some(group),
            http_listen: Some(http_listen).filter(|l| !l.is_empty()),
            ..Default::default()
        };
        Self::start_opts(binary, db, zk, gateways, log_dir, opts)
    }

    /// Like [`IngestProcess::start`], with [`IngestOptions`].
    pub fn start_opts(
        binary: &std::path::Path,
        db: &impl HasUrl,
        zk: &DevZk,
        gateways: &[&str],
        log_dir: &std::path::Path,
        opts: IngestOptions<'_>,
    ) -> Result<IngestProcess> {
        let fresh = format!("g{}", uuid::Uuid::new_v4().simple());
        let group = opts.group.unwrap_or(&fresh);
        let (host, port) = match opts.broker {
            Some((h, p)) => (h.to_owned(), p),
            None => mqtt_ingest_host_port(),
        };
        let http_listen = opts.http_listen.unwrap_or("");
        let client_id = match opts.client_id {
            Some(id) => id.to_owned(),
            None => format!("ingest-test-{}", uuid::Uuid::new_v4().simple()),
        };
        let subs: Vec<String> = gateways
            .iter()
            .map(|g| format!("\"$share/{group}/hailan/v1/{g}/up\""))
            .collect();
        let env = vec![
            ("DATABASE_URL".to_owned(), db.url().to_owned()),
            ("HAILAN_INGEST__MQTT__HOST".to_owned(), host),
            ("HAILAN_INGEST__MQTT__PORT".to_owned(), port.to_string()),
            (
                "HAILAN_INGEST__MQTT__CLIENT_ID".to_owned(),
                client_id.clone(),
            ),
            (
                "HAILAN_INGEST__MQTT__PASSWORD".to_owned(),
                mqtt_password("hailan-ingest")?,
            ),
            (
                "HAILAN_INGEST__ZK__KEYS_DIR".to_owned(),
                zk.dir.path().display().to_string(),
            ),
            (
                "HAILAN_INGEST__ZK__ALLOW_DEV_KEYS".to_owned(),
                "true".to_owned(),
            ),
            (
                "HAILAN_INGEST__HTTP__LISTEN".to_owned(),
                http_listen.to_owned(),
            ),
            (
                "HAILAN_INGEST__BATCH__MAX_WAIT_MS".to_owned(),
                "20".to_owned(),
            ),
        ];
        let mut env = env;
        env.extend(
            opts.env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = log_dir.join(format!("{client_id}.toml"));
        std::fs::write(
            &config,
            format!("[mqtt]\nsubscriptions = [{}]\n", subs.join(", ")),
        )?;
        env.push((
            "HAILAN_INGEST_CONFIG".to_owned(),
            config.display().to_string(),
        ));
        let log = log_dir.join(format!("{client_id}.log"));
        let mut p = IngestProcess {
            child: spawn_logged(binary, &["run"], &env, &log)?,
            client_id,
            log,
            binary: binary.to_owned(),
            env,
        };
        p.wait_subscribed(0)?;
        Ok(p)
    }

    fn subscriptions_seen(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("hailan_ingest::run: subscribed"))
            .count()
    }

    /// Wait until the log shows more than `before` SUBACKs (the consumer is
    /// subscribed, so nothing published from now on can miss it).
    fn wait_subscribed(&mut self, before: usize) -> Result<()> {
        let start = std::time::Instant::now();
        while self.subscriptions_seen() <= before {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("hailan-ingest exited ({status}):\n{}", self.log_text());
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                anyhow::bail!(
                    "hailan-ingest did not subscribe within 30 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Start the same consumer again (same client id: the broker's session resumes).
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let before = self.subscriptions_seen();
        self.child = spawn_logged(&self.binary, &["run"], &self.env, &self.log)?;
        self.wait_subscribed(before)
    }

    /// kill -9.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        Ok(self.child.wait()?)
    }

    /// Everything the process has logged so far (empty if the log is unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shown by the test harness only when the test fails.
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- last lines of {} ---", self.log.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}
