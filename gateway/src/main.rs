//! `hailan-gateway`: thin binary over the library crate.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The hailan edge gateway (BLE health devices → sealed, proven readings → MQTT).
#[derive(Parser)]
#[command(name = "hailan-gateway", version = hailan_gateway::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Decode one GATT characteristic value and print its fields as JSON
    /// (field names of shared/vectors/gatt.json). Exits 1 on malformed input.
    Decode {
        /// Characteristic UUID: `2A37`, `0x2A37` or `00002a37-0000-1000-8000-00805f9b34fb`.
        uuid: String,
        /// The value in hex (spaces and `:` allowed; `""` is a zero-length value).
        hex: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Decode { uuid, hex }) => {
            match hailan_proto::gatt::decode_hex_to_json(&uuid, &hex) {
                Ok(json) => {
                    println!("{json:#}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hailan-gateway decode: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .init();
            tracing::info!(
                "hailan-gateway {}: the daemon and owner CLI are not built yet",
                hailan_gateway::VERSION
            );
            ExitCode::SUCCESS
        }
    }
}
