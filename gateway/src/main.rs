//! `hailan-gateway`: thin binary over the library crate.

use clap::{Parser, Subcommand};
use hailan_gateway::config::GatewayConfig;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The hailan edge gateway (BLE health devices → sealed, proven readings → MQTT).
#[derive(Parser)]
#[command(name = "hailan-gateway", version = hailan_gateway::VERSION)]
struct Cli {
    /// Configuration file [default: /etc/hailan/gateway.toml if it exists];
    /// every key can be set as HAILAN_GATEWAY__SECTION__KEY.
    #[arg(long, global = true, env = "HAILAN_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (systemd Type=notify; SIGTERM flushes and exits).
    Run,
    /// Create the state directory and the owner's data key if missing.
    Init,
    /// Scan for nearby health devices.
    Scan {
        /// How long to scan, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long)]
        json: bool,
    },
    /// Pair a device (by address or advertised name): bond if needed, read
    /// its information, make its secret, queue its registration.
    Pair {
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Paired devices: battery, connection, last reading, outbox depth.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Forget a paired device (by id, address or name) and its unsent readings.
    Forget { device: String },
    /// Is the daemon up, the broker connected; outbox depth and oldest unsent
    /// reading. Exits 3 when the daemon is not running.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Decode one GATT characteristic value and print its fields as JSON
    /// (field names of proto/vectors/gatt.json). Exits 1 on malformed input.
    Decode {
        /// Characteristic UUID: `2A37`, `0x2A37` or `00002a37-0000-1000-8000-00805f9b34fb`.
        uuid: String,
        /// The value in hex (spaces and `:` allowed; `""` is a zero-length value).
        hex: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Decode { uuid, hex } = &cli.command {
        return match hailan_proto::gatt::decode_hex_to_json(uuid, hex) {
            Ok(json) => {
                println!("{json:#}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hailan-gateway decode: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hailan-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = GatewayConfig::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    use hailan_gateway::{daemon, owner};
    match cli.command {
        Command::Run => rt.block_on(daemon::run(cfg))?,
        Command::Init => owner::init(&cfg)?,
        Command::Scan { duration, json } => {
            rt.block_on(owner::scan(&cfg, Duration::from_secs(duration), json))?
        }
        Command::Pair { device, json } => rt.block_on(owner::pair(&cfg, &device, json))?,
        Command::Devices { json } => owner::devices(&cfg, json)?,
        Command::Forget { device } => owner::forget(&cfg, &device)?,
        Command::Status { json } => {
            if !owner::status(&cfg, json)? {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Decode { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}
