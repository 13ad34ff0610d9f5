//! `hailan-ingest`: thin binary over the library crate.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hailan_db as db;
use hailan_ingest::config::IngestConfig;
use hailan_ingest::metrics::Metrics;
use hailan_ingest::run::Status;
use hailan_ingest::{admin, quarantine, run, zk_cli};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// hailan ingestion service: verify sealed, proven readings and store them.
#[derive(Parser)]
#[command(name = "hailan-ingest", version)]
struct Cli {
    /// PostgreSQL URL (overrides the config file's database_url).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Configuration file (TOML); `HAILAN_INGEST__…` variables override it.
    #[arg(long, short, global = true, env = "HAILAN_INGEST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume, verify and store readings until SIGTERM/SIGINT.
    Run,
    /// Apply the embedded schema migrations.
    Migrate,
    /// Print a summary of the schema: partitions, row level security, migrations.
    Schema,
    /// Inspect and replay quarantined messages.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Users, gateways, grants and API tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Moved: the clinician API is its own program, `hailan-api`.
    #[command(hide = true)]
    Api,
    /// Zero-knowledge keys and third-party export.
    #[command(subcommand)]
    Zk(zk_cli::ZkCommand),
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List quarantined messages, newest first.
    List {
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run quarantined messages through the pipeline again (those that now
    /// pass are stored and leave quarantine; the rest are quarantined anew).
    Replay {
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user (PATIENT, CLINICIAN, AUDITOR or ADMIN) by DID.
    AddUser {
        did: String,
        #[arg(long, default_value = "PATIENT")]
        kind: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Enrol a gateway (its MQTT user name) for an owner.
    EnrolGateway {
        gateway_id: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        name: Option<String>,
        /// Another patient of the household whose devices (a shared
        /// device's user slots) the gateway may register; repeatable.
        #[arg(long = "patient", value_name = "DID")]
        patients: Vec<String>,
    },
    /// Stop a gateway serving a patient of the household (enrolled with
    /// `enrol-gateway --patient`): what their user slots send from now on
    /// is quarantined `unknown_patient`; what is stored stays.
    WithdrawPatient {
        gateway_id: String,
        #[arg(long, value_name = "DID")]
        patient: String,
    },
    /// Let a clinician read a patient's data types (all if none given).
    Grant {
        #[arg(long)]
        patient: String,
        #[arg(long)]
        clinician: String,
        #[arg(long = "data-type")]
        data_types: Vec<String>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Revoke a clinician's active grants from a patient.
    Revoke {
        #[arg(long)]
        patient: String,
        #[arg(long)]
        clinician: String,
    },
    /// Revoke every API token of a user (effective at their next request).
    RevokeTokens { did: String },
    /// Issue an API bearer token (printed once; only its hash is stored).
    Token {
        did: String,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long)]
        label: Option<String>,
    },
}

fn load_config(cli: &Cli) -> Result<IngestConfig> {
    let mut cfg = IngestConfig::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database_url {
        cfg.database_url = Some(url.clone());
    }
    Ok(cfg)
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
        _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the batch in hand"),
    }
    token.cancel();
}

async fn run_service(cfg: IngestConfig) -> Result<()> {
    let (pool, follower) = db::connect_following(cfg.database_url()?, 8).await?;
    let verifier = Arc::new(run::load_verifier(&cfg)?);
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Status::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    if let Some(follower) = follower {
        tokio::spawn(db::follow_primary(
            pool.clone(),
            follower,
            metrics.db_primary_switches.clone(),
            shutdown.clone(),
        ));
    }
    if !cfg.http.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
            .await
            .with_context(|| format!("http.listen = {}", cfg.http.listen))?;
        tracing::info!(addr = %cfg.http.listen, "serving /metrics, /healthz, /readyz");
        tokio::spawn(hailan_ingest::http::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&status),
            shutdown.clone(),
        ));
    }
    run::run(cfg, pool, verifier, metrics, status, shutdown).await
}

/// Errors end as one line on stderr and exit status 1 (like the gateway),
/// not as a `Debug` dump with a backtrace.
fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hailan-ingest: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hailan-ingest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let cfg = load_config(&cli)?;
    match cli.command {
        Command::Zk(cmd) => zk_cli::run(cmd)?,
        Command::Run => run_service(cfg).await?,
        Command::Api => anyhow::bail!(
            "the clinician API is its own program now: run `hailan-api --config /etc/hailan/api.toml` \
             (the hailan-api.service unit does)"
        ),
        Command::Migrate => {
            let pool = db::connect(cfg.database_url()?, 2).await?;
            db::migrate(&pool).await?;
            println!(
                "schema is current ({} migrations)",
                db::MIGRATOR.iter().count()
            );
        }
        Command::Schema => {
            let pool = db::connect(cfg.database_url()?, 2).await?;
            print!("{}", db::schema_summary(&pool).await?);
        }
        Command::Quarantine(q) => {
            let pool = db::connect(cfg.database_url()?, 2).await?;
            match q {
                QuarantineCommand::List {
                    reason,
                    limit,
                    json,
                } => {
                    let rows = quarantine::list(&pool, reason.as_deref(), limit).await?;
                    for r in &rows {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "id": r.id, "received_at": r.received_at, "topic": r.topic,
                                    "gateway_id": r.gateway_id, "device_id": r.device_id,
                                    "reason": r.reason, "detail": r.detail, "payload_bytes": r.payload.len(),
                                })
                            );
                        } else {
                            println!(
                                "{}  {}  {:<24} {:<12} {}",
                                r.received_at.format("%Y-%m-%d %H:%M:%S"),
                                r.id,
                                r.reason,
                                r.gateway_id.as_deref().unwrap_or("-"),
                                r.detail
                            );
                        }
                    }
                    if !json {
                        eprintln!("{} quarantined message(s) shown", rows.len());
                    }
                }
                QuarantineCommand::Replay { reason, limit } => {
                    let verifier = Arc::new(run::load_verifier(&cfg)?);
                    let rows = quarantine::for_replay(&pool, reason.as_deref(), &[], limit).await?;
                    let messages: Vec<_> =
                        rows.into_iter().map(quarantine::Rejected::replay).collect();
                    let n = messages.len();
                    let (metrics, status) = (Metrics::new(), Status::default());
                    let committer = hailan_ingest::commit::Committer {
                        pool: &pool,
                        verifier: &verifier,
                        name: "hailan-ingest quarantine replay",
                        metrics: &metrics,
                        status: &status,
                    };
                    let stop = CancellationToken::new();
                    tokio::spawn(shutdown_signal(stop.clone()));
                    let allowance = hailan_ingest::fair_share::Allowance::unlimited();
                    let Some(done) = committer.commit(&messages, &allowance, &stop).await else {
                        anyhow::bail!("interrupted before the replay committed: nothing changed");
                    };
                    let w = done.written;
                    println!(
                        "replayed {n}: {} readings stored, {} already stored, {} quarantined again",
                        w.readings_new, w.readings_duplicate, w.quarantined
                    );
                }
            }
        }
        Command::Admin(a) => {
            let pool = db::connect(cfg.database_url()?, 2).await?;
            match a {
                AdminCommand::AddUser { did, kind, name } => {
                    let id = admin::add_user(&pool, &did, &kind, name.as_deref()).await?;
                    println!("{id}");
                }
                AdminCommand::EnrolGateway {
                    gateway_id,
                    owner,
                    name,
                    patients,
                } => {
                    admin::enrol_gateway(&pool, &gateway_id, &owner, name.as_deref()).await?;
                    println!("gateway {gateway_id} enrolled for {owner}");
                    for patient in patients {
                        admin::enrol_patient(&pool, &gateway_id, &patient).await?;
                        println!("gateway {gateway_id} enrolled for patient {patient}");
                    }
                }
                AdminCommand::WithdrawPatient {
                    gateway_id,
                    patient,
                } => {
                    admin::withdraw_patient(&pool, &gateway_id, &patient).await?;
                    println!("gateway {gateway_id} no longer serves patient {patient}");
                }
                AdminCommand::Grant {
                    patient,
                    clinician,
                    data_types,
                    expires,
                } => {
                    let types = if data_types.is_empty() {
                        None
                    } else {
                        Some(data_types)
                    };
                    let id = admin::grant(&pool, &patient, &clinician, types, expires).await?;
                    println!("{id}");
                }
                AdminCommand::Revoke { patient, clinician } => {
                    let n = admin::revoke(&pool, &patient, &clinician).await?;
                    println!("{n} grant(s) revoked");
                }
                AdminCommand::RevokeTokens { did } => {
                    let n = admin::revoke_tokens(&pool, &did).await?;
                    println!("{n} token(s) revoked");
                }
                AdminCommand::Token { did, days, label } => {
                    println!(
                        "{}",
                        admin::issue_token(&pool, &did, days, label.as_deref()).await?
                    );
                }
            }
        }
    }
    Ok(())
}
