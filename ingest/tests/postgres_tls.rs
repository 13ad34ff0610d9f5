//! TLS to PostgreSQL (rustls through sqlx): `sslmode=verify-full` against a
//! private PostgreSQL whose certificate a test CA signed — accepted, and the
//! connection really is encrypted; another CA, or another host name than
//! the certificate's, refused. The `hailan-ingest` binary connects the same way.

use anyhow::{Result, ensure};
use hailan_tests::PrivatePostgres;
use hailan_tests::gateway::{server_certificate, test_ca};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hailan-ingest");

/// The test CA and 127.0.0.1's certificate (`server_certificate`), the key
/// readable by the `postgres` account alone, as PostgreSQL requires.
fn server_cert(dir: &Path) -> Result<()> {
    server_certificate(dir)?;
    for (args, what) in [
        (
            vec!["postgres:postgres", "server.key", "server.pem"],
            "chown",
        ),
        (vec!["600", "server.key"], "chmod"),
    ] {
        let ok = Command::new(what)
            .args(&args)
            .current_dir(dir)
            .status()?
            .success();
        ensure!(ok, "{what} {args:?}");
    }
    Ok(())
}

async fn ssl_in_use(url: &str) -> Result<bool> {
    let pool = hailan_db::connect(url, 1).await?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(ssl)
}

#[tokio::test]
async fn verify_full_connects_over_tls_and_refuses_a_wrong_server() -> Result<()> {
    let certs = tempfile::Builder::new()
        .prefix("hailan-pg-tls-")
        .tempdir()?;
    Command::new("chmod")
        .arg("755")
        .arg(certs.path())
        .status()?;
    server_cert(certs.path())?;
    let dir = certs.path().display();
    let pg = PrivatePostgres::start_with(&[
        "ssl = on".into(),
        format!("ssl_cert_file = '{dir}/server.pem'"),
        format!("ssl_key_file = '{dir}/server.key'"),
    ])
    .await?;
    let port = pg.port;
    let verified = format!(
        "postgres://hailan:hailan@127.0.0.1:{port}/hailan?sslmode=verify-full&sslrootcert={dir}/ca.pem"
    );
    assert!(ssl_in_use(&verified).await?, "verify-full is encrypted");

    // A certificate from another CA is refused.
    let other = tempfile::tempdir()?;
    let other_ca = test_ca(other.path(), "someone else's CA", "other")?;
    let wrong_ca = format!(
        "postgres://hailan:hailan@127.0.0.1:{port}/hailan?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    );
    let e = ssl_in_use(&wrong_ca).await.expect_err("another CA");
    assert!(
        format!("{e:#}").to_lowercase().contains("certificate"),
        "{e:#}"
    );
    // So is a host name the certificate does not name.
    let wrong_name = format!(
        "postgres://hailan:hailan@localhost:{port}/hailan?sslmode=verify-full&sslrootcert={dir}/ca.pem"
    );
    ensure!(
        ssl_in_use(&wrong_name).await.is_err(),
        "localhost is not 127.0.0.1's certificate"
    );

    // The binary itself, over verify-full.
    let out = Command::new(BIN)
        .arg("schema")
        .env("DATABASE_URL", &verified)
        .output()?;
    ensure!(
        out.status.success(),
        "hailan-ingest schema over verify-full: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
