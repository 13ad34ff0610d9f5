//! `hailan-sim`: thin binary over the library crate.

use clap::Parser;

/// Simulated BLE health devices served as BlueZ on a private D-Bus.
#[derive(Parser)]
#[command(name = "hailan-sim", version = hailan_firmware_sim::VERSION)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
