//! hailan-tests: helpers shared by the database and end-to-end tests.
//!
//! Tests run against the real PostgreSQL and Mosquitto that `cargo xtask
//! services` starts; `cargo xtask test` passes their URLs in the environment
//! (and writes them to `.hailan/env`, which is read when the variables are
//! not set, so `cargo nextest run` works on its own after set-up).

use anyhow::{Context, Result};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A setting from the environment, else from `.hailan/env`.
pub fn setting(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let text = std::fs::read_to_string(repo_root().join(".hailan/env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The PostgreSQL URL of the set-up's database.
pub fn database_url() -> Result<String> {
    setting("DATABASE_URL")
        .context("DATABASE_URL is not set and .hailan/env is missing: run `cargo xtask services`")
}

/// A fresh, migrated database for one test, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn with_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => url.to_owned(),
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
        let pool = hailan_ingest::db::connect(&url, 4).await?;
        // Roles are cluster-wide: migrations of parallel test databases would
        // race on them, so test processes take turns (nextest runs each test
        // in its own process, hence a file lock rather than a mutex).
        let lock = std::fs::File::create(std::env::temp_dir().join("hailan-test-migrate.lock"))?;
        lock.lock()?;
        let migrated = hailan_ingest::db::migrate(&pool).await;
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
    pub async fn drop(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}
