//! PostgreSQL run by Patroni over a three-member etcd cluster, all on this
//! machine (loopback, distinct ports, data under one directory), rendered
//! from the configuration the project ships (`deploy/patroni/patroni.yml`
//! and `deploy/patroni/etcd.env`). Used by `ingest/tests/ha.rs`, the
//! `ha_bench` example and `cargo xtask ha` (through the `hailan-ha` binary).
//!
//! Each Patroni node reaches each etcd member through its own [`Relay`], so
//! a test can cut one node off etcd (a network partition) without root
//! network namespaces. Everything started here is killed on drop: the
//! Patroni processes, the PostgreSQL servers they started (Patroni puts
//! them in a session of their own, so they are found by their
//! `postmaster.pid`), and the etcd members.

pub mod relay;

use crate::ops::render;
use anyhow::{Context, Result};
use relay::Relay;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Patroni configuration the project ships (a template).
pub const PATRONI_TEMPLATE: &str = include_str!("../../../deploy/patroni/patroni.yml");
/// The etcd settings the project ships (a template, one member's environment).
pub const ETCD_TEMPLATE: &str = include_str!("../../../deploy/patroni/etcd.env");

/// The commands OPERATIONS.md §3 tells an operator to run, as the tests run
/// them (`{CONFIG}` is a node's Patroni configuration file).
pub const LIST: &str = "patronictl -c {CONFIG} list";
/// A planned switchover to a named standby, without the interactive prompt.
pub const SWITCHOVER: &str =
    "patronictl -c {CONFIG} switchover --leader {LEADER} --candidate {CANDIDATE} --force";
/// Health of every etcd member.
pub const ETCD_HEALTH: &str = "etcdctl --endpoints={ENDPOINTS} endpoint health";

/// The values OPERATIONS.md fills the templates above with.
pub const DOC_VALUES: &[(&str, &str)] = &[
    ("CONFIG", "/etc/patroni/hailan.yml"),
    ("LEADER", "db1"),
    ("CANDIDATE", "db2"),
    (
        "ENDPOINTS",
        "http://etcd1.internal:2379,http://etcd2.internal:2379,http://etcd3.internal:2379",
    ),
];

/// Patroni's timing (seconds): leader lease, loop period, retry limit.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The leader lease in etcd: a leader that cannot renew its key for
    /// this long loses it and demotes itself.
    pub ttl: u32,
    /// The period of Patroni's main loop.
    pub loop_wait: u32,
    /// How long an etcd or PostgreSQL call is retried before it counts as
    /// failed (`loop_wait + 2 × retry_timeout ≤ ttl`).
    pub retry_timeout: u32,
}

/// What the tests run with: a lost leader is replaced within ≈ 10 s.
pub const TEST_TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

const SCOPE: &str = "hailan";
const SUPERUSER_PASSWORD: &str = "ha-superuser";
/// The application role and database, as in the rest of the tests.
const APP_ROLE: &str = "hailan";

/// One etcd member (a child process), restartable.
pub struct EtcdMember {
    /// The member name, `etcd1` … `etcd3`.
    pub name: String,
    /// Port of its client URL on 127.0.0.1 (patronictl's, and through the
    /// relays the Patroni nodes').
    pub client_port: u16,
    /// Port of its peer URL on 127.0.0.1 (traffic between members).
    pub peer_port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    fn spawn(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("etcd")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| {
                format!("starting etcd (not installed? {})", crate::ha::INSTALL_HINT)
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// kill -9 (the member is gone, as with a crashed machine).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the member again (it rejoins with its data).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// How to install the tools these tests need (never skipped: they fail).
pub const INSTALL_HINT: &str = "`cargo xtask services` installs them (as root: apt-get install -y patroni etcd-server etcd-client)";

/// One Patroni node: its process, its PostgreSQL, and its relays to etcd.
pub struct PatroniNode {
    /// The Patroni member name, `pg1`, `pg2` …
    pub name: String,
    /// The port its PostgreSQL listens on, on 127.0.0.1.
    pub pg_port: u16,
    /// The port of its Patroni REST API, on 127.0.0.1.
    pub rest_port: u16,
    /// The node's directory: its PostgreSQL cluster (`data`), `patroni.yml`,
    /// `patroni.log`, `pgpass` and PostgreSQL's socket.
    pub dir: PathBuf,
    /// Its Patroni configuration, `patroni.yml` in `dir`, rendered from the
    /// shipped template.
    pub config: PathBuf,
    /// One per etcd member, in member order.
    pub relays: Vec<Relay>,
    log: PathBuf,
    child: Option<Child>,
}

impl PatroniNode {
    /// The PostgreSQL data directory Patroni manages (`dir/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A URL of database `db` on this node as the superuser.
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{db}",
            self.pg_port
        )
    }

    /// The application's URL on this node alone.
    pub fn app_url(&self) -> String {
        format!(
            "postgres://{APP_ROLE}:{APP_ROLE}@127.0.0.1:{}/{APP_ROLE}",
            self.pg_port
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut c = Command::new("patroni");
        c.arg(&self.config)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        as_postgres_user(&mut c)?;
        let child = c
            .spawn()
            .with_context(|| format!("starting patroni ({INSTALL_HINT})"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kill -9 this node's Patroni (its PostgreSQL keeps running).
    pub fn kill_patroni(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start this node's Patroni again (after [`kill_patroni`](Self::kill_patroni)).
    pub fn restart_patroni(&mut self) -> Result<()> {
        self.kill_patroni();
        self.spawn()
    }

    /// kill -9 this node's postmaster and every backend: a crash of
    /// PostgreSQL under Patroni.
    pub fn kill9_postgres(&self) -> Result<()> {
        crate::kill9_postmaster(&self.data_dir())
    }

    /// Cut this node off every etcd member (its relays close and refuse).
    pub fn cut_from_etcd(&self) {
        self.relays.iter().for_each(Relay::cut);
    }

    /// Reconnect this node to etcd.
    pub fn heal_etcd(&self) {
        self.relays.iter().for_each(Relay::heal);
    }

    /// Whether this node's PostgreSQL accepts writes now (`None`: not
    /// reachable within a second).
    pub async fn writable(&self) -> Option<bool> {
        let url = self.superuser_url("postgres");
        let probe = async move {
            let mut c = PgConnection::connect(&url).await?;
            let w: bool = sqlx::query_scalar("SELECT NOT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await?;
            let _ = c.close().await;
            Ok::<bool, sqlx::Error>(w)
        };
        tokio::time::timeout(Duration::from_secs(1), probe)
            .await
            .ok()
            .and_then(|r| r.ok())
    }

    /// Patroni's own log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Make `c` run as the `postgres` account when we are root (PostgreSQL
/// refuses to run as root).
fn as_postgres_user(c: &mut Command) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if !crate::is_root() {
        return Ok(());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let (uid, gid, home) = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| {
                Some((
                    f.get(2)?.parse::<u32>().ok()?,
                    f.get(3)?.parse::<u32>().ok()?,
                    f.get(5)?.to_string(),
                ))
            })?
        })
        .context("no postgres account (is postgresql-15 installed?)")?;
    c.uid(uid)
        .gid(gid)
        .env("HOME", home)
        .env("USER", "postgres");
    Ok(())
}

/// A member of the cluster as `patronictl list` reports it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The Patroni member name (`pg1` …).
    pub name: String,
    /// `leader`, `sync_standby`, `replica`, …
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, …
    pub state: String,
    /// The PostgreSQL timeline it is on (a promotion starts a new one);
    /// `None` when patronictl shows none.
    pub timeline: Option<i64>,
}

impl Member {
    fn running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "streaming")
    }
}

/// Three etcd members and `n` Patroni nodes on loopback.
pub struct HaCluster {
    /// The three etcd members, `etcd1` … `etcd3`.
    pub etcd: Vec<EtcdMember>,
    /// The Patroni nodes, `pg1` … in order.
    pub nodes: Vec<PatroniNode>,
    /// The Patroni timing the nodes were configured with.
    pub timing: Timing,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl HaCluster {
    /// Start a cluster of `n` Patroni nodes in a fresh temporary directory,
    /// with [`TEST_TIMING`], wait for a leader and a synchronous standby,
    /// and create the application's role and database and migrate them
    /// through the leader.
    pub async fn start(n: usize) -> Result<HaCluster> {
        let dir = tempfile::Builder::new().prefix("hailan-ha-").tempdir()?;
        let root = dir.path().to_owned();
        Self::start_in(root, Some(dir), n, TEST_TIMING).await
    }

    /// Like [`HaCluster::start`] in `root` (emptied first); kept after drop
    /// when `dir` is `None`.
    pub async fn start_in(
        root: PathBuf,
        dir: Option<tempfile::TempDir>,
        n: usize,
        timing: Timing,
    ) -> Result<HaCluster> {
        anyhow::ensure!(n >= 2, "a Patroni cluster of {n} node(s) cannot fail over");
        std::fs::create_dir_all(&root)?;
        open_to_postgres(&root)?;
        let mut cluster = HaCluster {
            etcd: Vec::new(),
            nodes: Vec::new(),
            timing,
            root: root.clone(),
            _dir: dir,
        };
        // etcd: three members, rendered from the shipped etcd.env.
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((crate::free_port()?, crate::free_port()?)))
            .collect::<Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("etcd{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let initial = initial.join(",");
        let token = format!("hailan-{}", uuid::Uuid::new_v4().simple());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("etcd{}", i + 1);
            let data = root.join(&name);
            let env = etcd_env(&[
                ("NAME", &name),
                ("DATA", path_str(&data)?),
                ("PEER_URL", &format!("http://127.0.0.1:{peer}")),
                ("CLIENT_URL", &format!("http://127.0.0.1:{client}")),
                ("INITIAL_CLUSTER", &initial),
                ("TOKEN", &token),
            ])?;
            let mut m = EtcdMember {
                log: root.join(format!("{name}.log")),
                name,
                client_port: *client,
                peer_port: *peer,
                env,
                child: None,
            };
            m.spawn()?;
            cluster.etcd.push(m);
        }
        cluster.wait_etcd_healthy(Duration::from_secs(30)).await?;
        // patronictl's own configuration, straight to the members.
        let ctl = root.join("ctl.yml");
        std::fs::write(
            &ctl,
            format!(
                "scope: {SCOPE}\nnamespace: /service/\netcd3:\n  use_proxies: true\n  hosts: {}\n",
                cluster
                    .etcd
                    .iter()
                    .map(|m| format!("127.0.0.1:{}", m.client_port))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )?;
        open_to_postgres(&ctl)?;

        // Patroni nodes, each reaching etcd through its own relays.
        for i in 0..n {
            let name = format!("pg{}", i + 1);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            open_to_postgres(&dir)?;
            let mut relays = Vec::new();
            for m in &cluster.etcd {
                relays.push(Relay::start(([127, 0, 0, 1], m.client_port).into()).await?);
            }
            let hosts: Vec<String> = relays.iter().map(Relay::addr).collect();
            let pg_port = crate::free_port()?;
            let rest_port = crate::free_port()?;
            let yml = render_patroni(&[
                ("SCOPE", SCOPE),
                ("NAME", &name),
                ("REST_ADDR", &format!("127.0.0.1:{rest_port}")),
                ("ETCD_HOSTS", &hosts.join(",")),
                ("TTL", &timing.ttl.to_string()),
                ("LOOP_WAIT", &timing.loop_wait.to_string()),
                ("RETRY_TIMEOUT", &timing.retry_timeout.to_string()),
                ("CLIENT_NET", "127.0.0.1/32"),
                ("PG_ADDR", &format!("127.0.0.1:{pg_port}")),
                ("DATA", path_str(&dir.join("data"))?),
                ("PGPASS", path_str(&dir.join("pgpass"))?),
                ("SUPERUSER_PASSWORD", SUPERUSER_PASSWORD),
                ("REPLICATION_PASSWORD", "ha-replicator"),
                ("REWIND_PASSWORD", "ha-rewind"),
                ("SOCKET_DIR", path_str(&dir)?),
            ])?;
            // The relays stand between this node and etcd: Patroni must use
            // the listed addresses, not the members' advertised ones.
            let yml = yml.replacen("etcd3:\n", "etcd3:\n  use_proxies: true\n", 1);
            let config = dir.join("patroni.yml");
            std::fs::write(&config, yml)?;
            open_to_postgres(&config)?;
            let mut node = PatroniNode {
                log: dir.join("patroni.log"),
                name,
                pg_port,
                rest_port,
                dir,
                config,
                relays,
                child: None,
            };
            node.spawn()?;
            cluster.nodes.push(node);
        }
        let (leader, _) = cluster.wait_healthy(Duration::from_secs(120)).await?;
        cluster.create_app_database(leader).await?;
        Ok(cluster)
    }

    /// The directory everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The application's multi-host URL (every node, in order), as
    /// OPERATIONS.md tells an operator to write it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!(
            "postgres://{APP_ROLE}:{APP_ROLE}@{}/{APP_ROLE}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// The etcd client endpoints, comma separated.
    pub fn etcd_endpoints(&self) -> String {
        self.etcd
            .iter()
            .map(EtcdMember::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn wait_etcd_healthy(&self, limit: Duration) -> Result<()> {
        for m in &self.etcd {
            let port = m.client_port;
            crate::eventually(limit, &format!("etcd member {}", m.name), || async move {
                Ok(matches!(crate::http_get(port, "/health").await, Ok((200, b)) if b.contains("true"))
                    .then_some(()))
            })
            .await
            .with_context(|| self.etcd_logs())?;
        }
        Ok(())
    }

    fn etcd_logs(&self) -> String {
        self.etcd
            .iter()
            .map(|m| {
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    tail(&std::fs::read_to_string(&m.log).unwrap_or_default(), 20)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every node's Patroni log (last lines), for failure messages.
    pub fn patroni_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log_text(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The members as etcd holds them (`patronictl list -f json` straight
    /// to the etcd members, not through any node's relays, so a node cut
    /// off etcd does not report its stale view); `None` when etcd does not
    /// answer.
    pub async fn members(&self) -> Option<Vec<Member>> {
        #[derive(serde::Deserialize)]
        struct Row {
            #[serde(rename = "Member")]
            member: String,
            #[serde(rename = "Role")]
            role: String,
            #[serde(rename = "State")]
            state: String,
            #[serde(rename = "TL", default)]
            timeline: Option<i64>,
        }
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("patronictl")
                .arg("-c")
                .arg(self.root.join("ctl.yml"))
                .args(["list", "-f", "json"])
                .env("LANG", "C.UTF-8")
                .env("LC_ALL", "C.UTF-8")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        if !out.status.success() {
            return None;
        }
        let rows: Vec<Row> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            rows.into_iter()
                .map(|r| Member {
                    name: r.member,
                    // "Leader", "Sync Standby", "Replica" → leader, sync_standby, replica
                    role: r.role.to_ascii_lowercase().replace(' ', "_"),
                    state: r.state,
                    timeline: r.timeline,
                })
                .collect(),
        )
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Wait until one node leads (running) and every other node is a
    /// running standby, one of them synchronous; (leader, sync standby).
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(usize, usize)> {
        let expected = self.nodes.len();
        crate::eventually(limit, "a leader and a synchronous standby", || async move {
            let Some(members) = self.members().await else {
                return Ok(None);
            };
            if members.len() != expected || !members.iter().all(Member::running) {
                return Ok(None);
            }
            let leader = members.iter().find(|m| m.role == "leader");
            let sync = members.iter().find(|m| m.role == "sync_standby");
            Ok(match (leader, sync) {
                (Some(l), Some(s)) => self.index_of(&l.name).zip(self.index_of(&s.name)),
                _ => None,
            })
        })
        .await
        .with_context(|| self.patroni_logs())
    }

    /// Wait until the leader is a running node other than `not` (index).
    pub async fn wait_new_leader(&self, not: usize, limit: Duration) -> Result<usize> {
        crate::eventually(limit, "a new leader", || async move {
            let Some(members) = self.members().await else {
                return Ok(None);
            };
            Ok(members
                .iter()
                .find(|m| m.role == "leader" && m.running())
                .and_then(|m| self.index_of(&m.name))
                .filter(|i| *i != not))
        })
        .await
        .with_context(|| self.patroni_logs())
    }

    /// The leader's index now (`None`: no running leader).
    pub async fn leader(&self) -> Option<usize> {
        self.members()
            .await?
            .iter()
            .find(|m| m.role == "leader" && m.running())
            .and_then(|m| self.index_of(&m.name))
    }

    async fn create_app_database(&self, leader: usize) -> Result<()> {
        let node = self.nodes.get(leader).context("no such node")?;
        let mut c = PgConnection::connect(&node.superuser_url("postgres"))
            .await
            .context("connecting to the leader as the superuser")?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(APP_ROLE)
                .fetch_one(&mut c)
                .await?;
        if !exists {
            c.execute(AssertSqlSafe(format!(
                "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_ROLE}' CREATEDB CREATEROLE"
            )))
            .await?;
            c.execute(AssertSqlSafe(format!(
                "CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE}"
            )))
            .await?;
        }
        c.close().await?;
        let pool = hailan_db::connect(&node.app_url(), 2).await?;
        hailan_db::migrate(&pool)
            .await
            .context("migrating through the leader")?;
        pool.close().await;
        Ok(())
    }

    /// Run `patronictl -c <node 0's config> ARGS`; its output.
    pub fn patronictl(&self, args: &[&str]) -> Result<String> {
        let node = self.nodes.first().context("no node")?;
        let config = path_str(&node.config)?.to_owned();
        let line = render(
            &format!("patronictl -c {{CONFIG}} {}", args.join(" ")),
            &[("CONFIG", &config)],
        );
        run_line(&line)
    }

    /// [`LIST`]: the members as `patronictl` prints them.
    pub fn list(&self) -> Result<String> {
        let node = self.nodes.first().context("no node")?;
        run_line(&render(LIST, &[("CONFIG", path_str(&node.config)?)]))
    }

    /// [`SWITCHOVER`] from node `leader` to node `candidate`.
    pub fn switchover(&self, leader: usize, candidate: usize) -> Result<String> {
        let l = self.nodes.get(leader).context("no such leader")?;
        let c = self.nodes.get(candidate).context("no such candidate")?;
        run_line(&render(
            SWITCHOVER,
            &[
                ("CONFIG", path_str(&l.config)?),
                ("LEADER", &l.name),
                ("CANDIDATE", &c.name),
            ],
        ))
    }

    /// [`ETCD_HEALTH`] over every member.
    pub fn etcd_health(&self) -> Result<String> {
        run_line(&render(
            ETCD_HEALTH,
            &[("ENDPOINTS", &self.etcd_endpoints())],
        ))
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill_patroni();
            let _ = n.kill9_postgres();
        }
        for m in &mut self.etcd {
            m.kill();
        }
    }
}

/// Run a command line (split on whitespace, no quoting); its stdout, or an
/// error with both streams.
fn run_line(line: &str) -> Result<String> {
    let args: Vec<&str> = line.split_whitespace().collect();
    let (program, rest) = args.split_first().context("empty command")?;
    let out = Command::new(program)
        .args(rest)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{line}` ({INSTALL_HINT})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "`{line}` failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The shipped `patroni.yml` with `vars` filled in; fails on a placeholder left.
pub fn render_patroni(vars: &[(&str, &str)]) -> Result<String> {
    let yml = render(PATRONI_TEMPLATE, vars);
    ensure_filled(&yml, "deploy/patroni/patroni.yml")?;
    Ok(yml)
}

/// The shipped `etcd.env` with `vars` filled in, as environment variables.
pub fn etcd_env(vars: &[(&str, &str)]) -> Result<Vec<(String, String)>> {
    let text = render(ETCD_TEMPLATE, vars);
    ensure_filled(&text, "deploy/patroni/etcd.env")?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn ensure_filled(text: &str, what: &str) -> Result<()> {
    let left: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains('{') && l.contains('}'))
        .collect();
    anyhow::ensure!(left.is_empty(), "{what}: placeholders left: {left:?}");
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("a path that is not UTF-8")
}

fn open_to_postgres(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if p.is_dir() { 0o777 } else { 0o644 };
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls every node's `pg_is_in_recovery()` until stopped and remembers the
/// worst moment: the most nodes writable in one round (a split brain is 2).
pub struct WritableWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<WatchReport>,
}

/// What a [`WritableWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    /// Polling rounds done (one about every 20 ms, plus the queries' time).
    pub rounds: u64,
    /// The most nodes writable (not in recovery) in one round: 1 is normal,
    /// 2 or more a split brain.
    pub max_writable: usize,
    /// Rounds with no writable node.
    pub rounds_without_writer: u64,
    /// The first round with two or more writable nodes: which.
    pub split_brain: Option<Vec<u16>>,
}

impl WritableWatch {
    /// Start polling the PostgreSQL servers on `ports` (superuser URLs).
    pub fn start(urls: Vec<(u16, String)>) -> WritableWatch {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns: Vec<Option<PgConnection>> = urls.iter().map(|_| None).collect();
            let mut report = WatchReport::default();
            while !*rx.borrow() {
                let mut writable = Vec::new();
                for ((port, url), conn) in urls.iter().zip(conns.iter_mut()) {
                    if conn.is_none() {
                        *conn = tokio::time::timeout(
                            Duration::from_millis(300),
                            PgConnection::connect(url),
                        )
                        .await
                        .ok()
                        .and_then(|r| r.ok());
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let q = tokio::time::timeout(
                        Duration::from_millis(300),
                        sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()")
                            .fetch_one(&mut *c),
                    )
                    .await;
                    match q {
                        Ok(Ok(true)) => writable.push(*port),
                        Ok(Ok(false)) => {}
                        _ => *conn = None,
                    }
                }
                report.rounds += 1;
                report.max_writable = report.max_writable.max(writable.len());
                if writable.is_empty() {
                    report.rounds_without_writer += 1;
                }
                if writable.len() > 1 && report.split_brain.is_none() {
                    report.split_brain = Some(writable);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = rx.changed() => {}
                }
            }
            report
        });
        WritableWatch { stop, task }
    }

    /// Stop polling; what was seen.
    pub async fn finish(self) -> Result<WatchReport> {
        self.stop.send_replace(true);
        self.task.await.context("the writable watch panicked")
    }
}

/// Wait until `f` holds, polling; `what` names it in the error.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    crate::eventually(limit, what, || {
        let fut = f();
        async move { Ok(fut.await.then_some(())) }
    })
    .await?;
    Ok(start.elapsed())
}
