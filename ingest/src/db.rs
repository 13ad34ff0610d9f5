//! The database: connection, the migrations embedded from `migrations/` (the
//! only place the schema is defined), and a summary of what the schema holds.

use anyhow::{Context, Result};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The schema migrations, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connect a pool to `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL (is it running? `cargo xtask services` starts it)")
}

/// Apply every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// One partition of `health_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The partition bound, e.g. `FOR VALUES IN ('HEART_RATE')` or `DEFAULT`.
    pub bound: String,
    /// Live rows as the statistics collector counts them (not filtered by RLS).
    pub estimated_rows: i64,
}

/// What `hailan-ingest schema` prints.
#[derive(Debug, Clone)]
pub struct SchemaSummary {
    pub partition_strategy: String,
    pub partitions: Vec<Partition>,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    pub policies: Vec<(String, String)>,
    pub tables: Vec<String>,
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
