//! A fresh, migrated database per test in the set-up's PostgreSQL, so tests
//! running in parallel never see each other's rows; and the queries tests
//! make of it (counting stored readings, enrolling gateways).

use crate::settings::{database_url, log_note};
use anyhow::{Context, Result};
use hailan_proto::DataType;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

/// Something ingest can be pointed at.
pub trait HasUrl {
    /// The PostgreSQL URL, user and password included, of the database a
    /// process under test (ingest, the API) should use.
    fn url(&self) -> &str;
}

impl HasUrl for TestDb {
    fn url(&self) -> &str {
        &self.url
    }
}

/// A fresh, migrated database for one test, dropped by [`TestDb::drop`].
pub struct TestDb {
    /// Up to 4 connections to the test database as the set-up's user, who
    /// created the database and owns it.
    pub pool: PgPool,
    /// The database name, `hailan_test_<32 hex digits>`.
    pub name: String,
    /// The set-up's `DATABASE_URL` with this database's name in it (its
    /// query, e.g. `?sslmode=…`, kept).
    pub url: String,
    admin_url: String,
}

fn with_database(url: &str, db: &str) -> String {
    // Keep the query (`?sslmode=…`): only the database name changes.
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (url, String::new()),
    };
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}{query}"),
        None => format!("{url}{query}"),
    }
}

impl TestDb {
    /// Create `hailan_test_<random>` and apply the migrations.
    pub async fn create() -> Result<Self> {
        let admin_url = database_url()?;
        let name = format!("hailan_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("connecting to the set-up's database (run `cargo xtask services`)")?;
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        admin.close().await?;
        let url = with_database(&admin_url, &name);
        let pool = hailan_db::connect(&url, 4).await?;
        // Roles are cluster-wide: migrations of parallel test databases would
        // race on them, so test processes take turns (nextest runs each test
        // in its own process, hence a file lock rather than a mutex).
        let lock = std::fs::File::create(std::env::temp_dir().join("hailan-test-migrate.lock"))?;
        lock.lock()?;
        let migrated = hailan_db::migrate(&pool).await;
        lock.unlock()?;
        migrated?;
        Ok(TestDb {
            pool,
            name,
            url,
            admin_url,
        })
    }

    /// Close the pool and drop the database.
    ///
    /// A consumer still running may be opening a connection at that moment;
    /// PostgreSQL refuses to terminate a backend that has not authenticated
    /// yet ("must be a member of the role whose process is being
    /// terminated"), so the drop is retried a few times.
    pub async fn drop(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempt = 0;
        loop {
            match admin.execute(AssertSqlSafe(sql.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    log_note(&format!("retrying {sql}: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Rows in `health_data` (read as the owner through the partitions, where RLS does not apply).
pub async fn count_readings(pool: &PgPool, extra_where: &str) -> Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM ({}) r WHERE true {extra_where}",
        DataType::ALL
            .iter()
            .map(|t| format!(
                "SELECT * FROM health_data_{}",
                t.as_str().to_ascii_lowercase()
            ))
            .chain(["SELECT * FROM health_data_default".to_owned()])
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Enrol `gateway` for a fresh patient; returns the patient's id.
pub async fn enrol(pool: &PgPool, gateway: &str) -> Result<uuid::Uuid> {
    Ok(enrol_with_token(pool, gateway).await?.0)
}

/// Enrol `gateway` for a fresh patient who also gets an API token (for a
/// year); returns the patient's id and the token.
pub async fn enrol_with_token(pool: &PgPool, gateway: &str) -> Result<(uuid::Uuid, String)> {
    let did = format!("did:hailan:test:{}", uuid::Uuid::new_v4().simple());
    let id = hailan_ingest::admin::add_user(pool, &did, "PATIENT", None).await?;
    hailan_ingest::admin::enrol_gateway(pool, gateway, &did, None).await?;
    let token = hailan_ingest::admin::issue_token(pool, &did, 365, Some("test")).await?;
    Ok((id, token))
}

/// `waited`, or its error with what ingest quarantined meanwhile (where a
/// reading that never landed most likely went).
pub async fn or_quarantined<T>(pool: &PgPool, waited: Result<T>) -> Result<T> {
    match waited {
        Ok(v) => Ok(v),
        Err(e) => {
            let rejected: Vec<(Option<String>, Option<i64>, String, String)> = sqlx::query_as(
                "SELECT device_id, seq, reason, detail FROM rejected_readings ORDER BY received_at",
            )
            .fetch_all(pool)
            .await?;
            Err(e.context(format!("quarantined: {rejected:?}")))
        }
    }
}
