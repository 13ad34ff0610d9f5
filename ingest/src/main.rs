mod zk_cli;

use clap::Parser;

/// hailan-ingest: MQTT consumer, batch verifier, PostgreSQL writer, admin CLI.
#[derive(Debug, Parser)]
#[command(name = "hailan-ingest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Zero-knowledge keys and third-party export.
    #[command(subcommand)]
    Zk(zk_cli::ZkCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Zk(cmd) => zk_cli::run(cmd),
    }
}
