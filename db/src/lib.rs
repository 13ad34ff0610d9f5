//! hailan-db: what the ingest service and the clinician API share about the
//! database — connecting (to a primary, or following Patroni's leader across
//! a multi-host URL), the migrations embedded from `migrations/` (the only
//! place the schema is defined), a summary of what the schema holds, and
//! looking a user up by DID. Both services depend on this crate; neither
//! depends on the other.

#![deny(missing_docs)]

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The schema migrations, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connect a pool to `url`.
///
/// `url` may name several servers in libpq's multi-host form,
/// `postgres://user:pw@host1:5432,host2:5432/hailan?target_session_attrs=read-write`:
/// then the pool connects to the first of them that is a read-write primary
/// (see [`connect_following`] to keep following it across a failover).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let targets = targets(url)?;
    let options = if targets.len() == 1 {
        targets
            .into_iter()
            .next()
            .context("no server in DATABASE_URL")?
    } else {
        let (i, _) = find_primary(&targets)
            .await
            .with_context(|| no_primary(&targets))?;
        targets
            .into_iter()
            .nth(i)
            .context("no server in DATABASE_URL")?
    };
    pool_options(max_connections)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL (is it running? `cargo xtask services` starts it)")
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

fn no_primary(targets: &[PgConnectOptions]) -> String {
    let names: Vec<String> = targets.iter().map(server_name).collect();
    format!(
        "none of the servers in DATABASE_URL ({}) is a read-write primary",
        names.join(", ")
    )
}

/// `host:port` of a target, for logs (never the password).
pub fn server_name(o: &PgConnectOptions) -> String {
    format!("{}:{}", o.get_host(), o.get_port())
}

/// The servers `url` names, one set of connect options each, in order.
///
/// A single-host URL is parsed as it is. A multi-host one (hosts separated
/// by commas, as libpq accepts) is split into one URL per host, sharing the
/// user, password, database and parameters; `target_session_attrs` may be
/// `read-write` or `primary` (what ingest needs anyway) and is removed, as
/// sqlx does not know it.
pub fn targets(url: &str) -> Result<Vec<PgConnectOptions>> {
    split_hosts(url)?
        .iter()
        .map(|u| {
            let o = PgConnectOptions::from_str(u)
                .context("DATABASE_URL is not a valid PostgreSQL URL")?;
            refuse_plaintext(&o)?;
            Ok(o)
        })
        .collect()
}

/// Whether `options` reach a server on this machine (a Unix socket, or a
/// loopback address), where the connection never crosses a network.
fn is_local(options: &PgConnectOptions) -> bool {
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A server on another machine must be reached over TLS: `disable`, `allow`
/// and `prefer` (libpq's default, which silently stays plaintext when the
/// server offers no TLS) would send health data and the password in the
/// clear. `require` encrypts; `verify-full` (with `sslrootcert=`) also
/// proves the server is the one named.
fn refuse_plaintext(options: &PgConnectOptions) -> Result<()> {
    use sqlx::postgres::PgSslMode;
    let mode = options.get_ssl_mode();
    if is_local(options)
        || !matches!(
            mode,
            PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer
        )
    {
        return Ok(());
    }
    anyhow::bail!(
        "DATABASE_URL: {} is not on this machine, and sslmode={} (the default when none is \
         given) may connect without TLS; add sslmode=verify-full&sslrootcert=/path/to/ca.pem \
         (or at least sslmode=require)",
        options.get_host(),
        format!("{mode:?}").to_ascii_lowercase()
    )
}

/// Split a libpq multi-host URL into one URL per host (see [`targets`]).
pub fn split_hosts(url: &str) -> Result<Vec<String>> {
    let invalid = || anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL");
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut params = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("target_session_attrs", v)) => {
                if !matches!(v, "read-write" | "primary") {
                    anyhow::bail!(
                        "DATABASE_URL: target_session_attrs={v}: ingest writes, so only \
                         read-write (or primary) makes sense"
                    );
                }
            }
            _ if pair.is_empty() => {}
            _ => params.push(pair),
        }
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(invalid());
    }
    Ok(hosts
        .into_iter()
        .map(|h| format!("{scheme}://{userinfo}{h}{path}{query}"))
        .collect())
}

/// What a following pool wants of the server it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The read-write primary (libpq's `target_session_attrs=read-write`,
    /// Patroni's `GET /primary`): the writers.
    ReadWrite,
    /// A running standby (Patroni's `GET /replica`), else the primary:
    /// the clinician API's read replica, which waits for the primary's WAL
    /// position before it reads, so either is correct.
    Standby,
}

/// Whether the server behind `options` is in recovery (a standby).
/// `None` when it cannot be reached within two seconds.
pub async fn in_recovery(options: &PgConnectOptions) -> Option<bool> {
    let probe = async {
        let mut c = PgConnection::connect_with(options).await?;
        let r: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut c)
            .await?;
        let _ = c.close().await;
        Ok::<bool, sqlx::Error>(r)
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .and_then(|r| r.ok())
}

/// Whether the server behind `options` accepts writes (is not in recovery).
/// `None` when it cannot be reached within two seconds.
pub async fn is_primary(options: &PgConnectOptions) -> Option<bool> {
    in_recovery(options).await.map(|r| !r)
}

/// The first of `targets` that is a read-write primary, with its index.
pub async fn find_primary(targets: &[PgConnectOptions]) -> Option<(usize, &PgConnectOptions)> {
    find(targets, Want::ReadWrite).await
}

/// The first of `targets` that is what `want` asks for (for
/// [`Want::Standby`]: the first standby, else the first primary).
pub async fn find(targets: &[PgConnectOptions], want: Want) -> Option<(usize, &PgConnectOptions)> {
    let mut primary = None;
    for (i, t) in targets.iter().enumerate() {
        match (want, in_recovery(t).await) {
            (Want::ReadWrite, Some(false)) | (Want::Standby, Some(true)) => return Some((i, t)),
            (Want::Standby, Some(false)) if primary.is_none() => primary = Some((i, t)),
            _ => {}
        }
    }
    primary
}

/// How often [`connect_following`]'s watcher asks the current server
/// whether it is still the primary.
pub const PRIMARY_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The state of a pool that follows the primary (or a standby) among
/// several servers.
pub struct Follower {
    targets: Vec<PgConnectOptions>,
    want: Want,
    current: AtomicUsize,
    started: Instant,
    /// Milliseconds after `started` of the last switch: pooled connections
    /// older than that lead to the old server and are discarded.
    switched_ms: AtomicU64,
}

impl Follower {
    fn since_switch(&self) -> Duration {
        let at = Duration::from_millis(self.switched_ms.load(Ordering::SeqCst));
        self.started.elapsed().saturating_sub(at)
    }

    /// The server the pool connects to now, as `host:port`.
    pub fn current(&self) -> String {
        self.targets
            .get(self.current.load(Ordering::SeqCst))
            .map(server_name)
            .unwrap_or_default()
    }
}

/// Connect a pool for writing to `url`. With a multi-host URL the pool
/// follows the primary: it connects to the first read-write server, refuses
/// connections to a server in recovery, and a watcher (returned, to be
/// spawned with [`follow_primary`]) moves it to another listed server that
/// has become the read-write primary (a promoted standby) when the current
/// one dies or is demoted. With a single host: a plain pool, no watcher.
pub async fn connect_following(
    url: &str,
    max_connections: u32,
) -> Result<(PgPool, Option<Arc<Follower>>)> {
    connect_following_as(url, max_connections, Want::ReadWrite).await
}

/// [`connect_following`] for what `want` asks: [`Want::Standby`] connects
/// to the first listed standby (else the primary) and the watcher keeps it
/// on a standby while one runs.
pub async fn connect_following_as(
    url: &str,
    max_connections: u32,
    want: Want,
) -> Result<(PgPool, Option<Arc<Follower>>)> {
    let targets = targets(url)?;
    if targets.len() == 1 {
        let options = targets
            .into_iter()
            .next()
            .context("no server in DATABASE_URL")?;
        let pool = pool_options(max_connections)
            .connect_with(options)
            .await
            .context(
                "connecting to PostgreSQL (is it running? `cargo xtask services` starts it)",
            )?;
        return Ok((pool, None));
    }
    let (first, options) = find(&targets, want).await.with_context(|| match want {
        Want::ReadWrite => no_primary(&targets),
        Want::Standby => format!("{} (nor a standby)", no_primary(&targets)),
    })?;
    let options = options.clone();
    tracing::info!(server = %server_name(&options), servers = targets.len(), ?want, "connected to a listed server");
    let follower = Arc::new(Follower {
        targets,
        want,
        current: AtomicUsize::new(first),
        started: Instant::now(),
        switched_ms: AtomicU64::new(0),
    });
    let f = Arc::clone(&follower);
    let pool = pool_options(max_connections)
        // A connection to a standby could never write: refuse it (the pool
        // retries until the watcher points it at the new primary).
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if want == Want::Standby {
                    return Ok(());
                }
                let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut *conn)
                    .await?;
                if standby {
                    return Err(sqlx::Error::Protocol(
                        "the server is in recovery (a standby), not the primary".into(),
                    ));
                }
                Ok(())
            })
        })
        // Connections opened before the last switch lead to the old primary.
        .before_acquire(move |_conn, meta| {
            let keep = meta.age < f.since_switch();
            Box::pin(async move { Ok(keep) })
        })
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    Ok((pool, Some(follower)))
}

/// Keep `pool` on the primary (or, for a [`Want::Standby`] follower, on a
/// standby) until `shutdown`: every [`PRIMARY_PROBE_INTERVAL`] ask the
/// current server what it is; when it is not what is wanted (dead, demoted,
/// promoted), take the first listed server that is, and count the switch in
/// `switches`.
pub async fn follow_primary(
    pool: PgPool,
    follower: Arc<Follower>,
    switches: prometheus_client::metrics::counter::Counter,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut outage = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRIMARY_PROBE_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        let current = follower.current.load(Ordering::SeqCst);
        let Some(options) = follower.targets.get(current) else {
            return;
        };
        let recovery = in_recovery(options).await;
        let fine = match follower.want {
            Want::ReadWrite => recovery == Some(false),
            Want::Standby => recovery == Some(true),
        };
        if fine {
            outage = false;
            continue;
        }
        let Some((next, options)) = find(&follower.targets, follower.want).await else {
            if !outage {
                tracing::warn!(server = %server_name(options), want = ?follower.want, "the server is gone and no listed server will do yet; waiting");
            }
            outage = true;
            continue;
        };
        outage = false;
        if next == current {
            continue;
        }
        match follower.want {
            Want::ReadWrite => tracing::warn!(
                from = %follower.current(),
                to = %server_name(options),
                "the primary changed: writing to the new primary"
            ),
            Want::Standby => tracing::warn!(
                from = %follower.current(),
                to = %server_name(options),
                "the read replica changed: reading from another server"
            ),
        }
        pool.set_connect_options(options.clone());
        follower.current.store(next, Ordering::SeqCst);
        follower.switched_ms.store(
            follower.started.elapsed().as_millis() as u64,
            Ordering::SeqCst,
        );
        switches.inc();
    }
}

/// Apply every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// One partition of `health_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition's table name, e.g. `health_data_heart_rate` or
    /// `health_data_default`.
    pub name: String,
    /// The partition bound, e.g. `FOR VALUES IN ('HEART_RATE')` or `DEFAULT`.
    pub bound: String,
    /// Live rows as the statistics collector counts them (not filtered by RLS).
    pub estimated_rows: i64,
}

/// What `hailan-ingest schema` prints.
#[derive(Debug, Clone)]
pub struct SchemaSummary {
    /// `health_data`'s partition key as `pg_get_partkeydef` writes it,
    /// e.g. `LIST (data_type)`.
    pub partition_strategy: String,
    /// The partitions of `health_data`, ordered by name.
    pub partitions: Vec<Partition>,
    /// Whether row level security is enabled on `health_data`
    /// (`pg_class.relrowsecurity`).
    pub rls_enabled: bool,
    /// Whether row level security also applies to the table's owner
    /// (`FORCE ROW LEVEL SECURITY`, `pg_class.relforcerowsecurity`).
    pub rls_forced: bool,
    /// The RLS policies on `health_data`, as (policy name, command it
    /// applies to: `ALL`, `SELECT`, `INSERT`, …), ordered by name.
    pub policies: Vec<(String, String)>,
    /// The tables of the `public` schema (partitioned parents and plain
    /// tables, not partitions nor `_sqlx_migrations`), ordered by name.
    pub tables: Vec<String>,
    /// The migrations applied successfully, as (version, description),
    /// oldest first.
    pub migrations: Vec<(i64, String)>,
}

/// Read the summary of the schema from the catalogue.
pub async fn schema_summary(pool: &PgPool) -> Result<SchemaSummary> {
    let strategy: String = sqlx::query_scalar("SELECT pg_get_partkeydef('health_data'::regclass)")
        .fetch_one(pool)
        .await
        .context("reading the partition key of health_data (has `migrate` run?)")?;
    let partitions = sqlx::query(
        "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
                COALESCE(s.n_live_tup, 0) AS rows
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
          WHERE i.inhparent = 'health_data'::regclass
          ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| Partition {
        name: r.get("name"),
        bound: r.get("bound"),
        estimated_rows: r.get("rows"),
    })
    .collect();
    let (rls_enabled, rls_forced): (bool, bool) = sqlx::query_as(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'health_data'::regclass",
    )
    .fetch_one(pool)
    .await?;
    let policies = sqlx::query_as::<_, (String, String)>(
        "SELECT policyname::text, cmd::text FROM pg_policies WHERE tablename = 'health_data' ORDER BY policyname",
    )
    .fetch_all(pool)
    .await?;
    let tables = sqlx::query_scalar::<_, String>(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            AND c.relname <> '_sqlx_migrations'
          ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let migrations = sqlx::query_as::<_, (i64, String)>(
        "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    Ok(SchemaSummary {
        partition_strategy: strategy,
        partitions,
        rls_enabled,
        rls_forced,
        policies,
        tables,
        migrations,
    })
}

impl std::fmt::Display for SchemaSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "migrations applied: {}", self.migrations.len())?;
        for (v, d) in &self.migrations {
            writeln!(f, "  {v:>4}  {d}")?;
        }
        writeln!(f, "tables: {}", self.tables.join(", "))?;
        writeln!(
            f,
            "health_data: PARTITION BY {} with {} partitions",
            self.partition_strategy,
            self.partitions.len()
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "  {:<30} {:<40} ~{} rows",
                p.name, p.bound, p.estimated_rows
            )?;
        }
        writeln!(
            f,
            "row level security: {}, {}",
            if self.rls_enabled {
                "enabled"
            } else {
                "DISABLED"
            },
            if self.rls_forced {
                "forced"
            } else {
                "NOT forced"
            }
        )?;
        for (name, cmd) in &self.policies {
            writeln!(f, "  policy {name} ({cmd})")?;
        }
        Ok(())
    }
}

/// The id of the user with this DID, or an error naming the DID.
pub async fn user_id(pool: &PgPool, did: &str) -> Result<uuid::Uuid> {
    sqlx::query_scalar("SELECT id FROM users WHERE did = $1")
        .bind(did)
        .fetch_optional(pool)
        .await?
        .with_context(|| format!("no user with DID {did}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_host_url_is_kept() {
        let u = "postgres://hailan:pw@db.example:5432/hailan?sslmode=require";
        for plain in ["", "?sslmode=prefer", "?sslmode=disable", "?sslmode=allow"] {
            let e = targets(&format!(
                "postgres://hailan:pw@db.example:5432/hailan{plain}"
            ))
            .expect_err("plaintext to another machine")
            .to_string();
            assert!(e.contains("db.example") && e.contains("verify-full"), "{e}");
        }
        for local in ["127.0.0.1", "localhost", "[::1]"] {
            targets(&format!("postgres://hailan:pw@{local}:5432/hailan")).expect("local");
        }
        targets("postgres://hailan:pw@db.example/hailan?sslmode=verify-full&sslrootcert=/ca.pem")
            .expect("verified TLS");
        assert_eq!(split_hosts(u).expect("valid"), vec![u.to_owned()]);
    }

    #[test]
    fn a_multi_host_url_is_split_and_target_session_attrs_dropped() {
        let hosts = split_hosts(
            "postgres://hailan:p%40w@10.0.0.1:5432,10.0.0.2:5433/hailan?target_session_attrs=read-write&sslmode=require",
        )
        .expect("valid");
        assert_eq!(
            hosts,
            vec![
                "postgres://hailan:p%40w@10.0.0.1:5432/hailan?sslmode=require",
                "postgres://hailan:p%40w@10.0.0.2:5433/hailan?sslmode=require",
            ]
        );
        let t = targets("postgres://u@a:1,b:2/d?sslmode=require").expect("valid");
        assert_eq!(
            t.iter().map(server_name).collect::<Vec<_>>(),
            ["a:1", "b:2"]
        );
    }

    #[test]
    fn a_read_only_target_is_refused() {
        let e = split_hosts("postgres://u@a,b/d?target_session_attrs=standby")
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("target_session_attrs=standby"), "{e}");
        assert!(split_hosts("postgres://u@a,,b/d").is_err());
        assert!(split_hosts("not a url").is_err());
    }
}
