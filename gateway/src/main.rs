//! `hailan-gateway`: thin binary over the library crate.

use clap::Parser;

/// The hailan edge gateway (BLE health devices → sealed, proven readings → MQTT).
#[derive(Parser)]
#[command(name = "hailan-gateway", version = hailan_gateway::VERSION)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    tracing::info!(
        "hailan-gateway {}: the daemon and owner CLI are not built yet",
        hailan_gateway::VERSION
    );
    Ok(())
}
