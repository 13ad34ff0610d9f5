//! `hailan-ingest`: thin binary over the library crate.

mod zk_cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// hailan ingestion service: verify sealed, proven readings and store them.
#[derive(Parser)]
#[command(name = "hailan-ingest", version)]
struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the embedded schema migrations.
    Migrate,
    /// Print a summary of the schema: partitions, row level security, migrations.
    Schema,
    /// Zero-knowledge keys and third-party export.
    #[command(subcommand)]
    Zk(zk_cli::ZkCommand),
}

fn database_url(cli: &Cli) -> Result<&str> {
    cli.database_url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no database: set DATABASE_URL or pass --database-url"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Zk(cmd) => zk_cli::run(cmd)?,
        Command::Migrate => {
            let pool = hailan_ingest::db::connect(database_url(&cli)?, 2).await?;
            hailan_ingest::db::migrate(&pool).await?;
            let applied = hailan_ingest::db::MIGRATOR.iter().count();
            println!("schema is current ({applied} migrations)");
        }
        Command::Schema => {
            let pool = hailan_ingest::db::connect(database_url(&cli)?, 2).await?;
            print!("{}", hailan_ingest::db::schema_summary(&pool).await?);
        }
    }
    Ok(())
}
