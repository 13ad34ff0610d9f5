//! `hailan-api`: thin binary over the library crate — read the configuration,
//! connect, listen, serve until SIGTERM/SIGINT.

use anyhow::{Context, Result};
use clap::Parser;
use hailan_api::config::Config;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// hailan clinician API: proof-verified readings as JSON, FHIR R4, exports and a web page.
#[derive(Parser)]
#[command(name = "hailan-api", version)]
struct Cli {
    /// PostgreSQL URL of the API's login (overrides the config file's database_url).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Configuration file (TOML); `HAILAN_API__…` variables override it.
    #[arg(long, short, env = "HAILAN_API_CONFIG")]
    config: Option<PathBuf>,
    /// Read and check the configuration and the key ring, print a summary, and exit.
    #[arg(long)]
    check_config: bool,
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the requests in hand"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the requests in hand"),
    }
    token.cancel();
}

async fn serve(cfg: Config) -> Result<()> {
    let state = hailan_api::state_from_config(&cfg).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("api.listen = {}", cfg.api.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        keys = state.keys.len(),
        replica = state.replica.is_some(),
        "clinician API listening"
    );
    hailan_api::serve(listener, state, shutdown).await
}

/// What `--check-config` prints: the configuration is usable without
/// touching the network (the key ring is read and checked like at start).
fn check_config(cfg: &Config) -> Result<()> {
    let keys = hailan_api::keyring::KeyRing::load(&cfg.api.key_ring)?;
    cfg.database_url()?;
    println!(
        "configuration OK: listen {}, {} data key(s) in {}, verifying keys from {}",
        cfg.api.listen,
        keys.len(),
        cfg.api.key_ring.display(),
        cfg.zk.keys_dir.display()
    );
    Ok(())
}

async fn cli_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(url) = cli.database_url {
        cfg.database_url = Some(url);
    }
    if cli.check_config {
        return check_config(&cfg);
    }
    serve(cfg).await
}

/// Errors end as one line on stderr and exit status 1, like the other
/// programs, not as a `Debug` dump.
fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hailan-api: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hailan-api: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
