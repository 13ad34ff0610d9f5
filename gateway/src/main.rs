//! `hailan-gateway`: thin binary over the library crate.

use clap::{Parser, Subcommand};
use hailan_gateway::ble::agent::{PairingAnswers, parse_passkey};
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
        /// Scan with this adapter (`hci1`) instead of the first configured.
        #[arg(long)]
        adapter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pair a device (by address or advertised name): bond if needed, read
    /// its information, make its secret, queue its registration.
    ///
    /// A device that shows a passkey, asks to compare a number or wants a PIN
    /// is answered from the flags, or asked on the terminal; without either
    /// the command fails at once and says which flag to add.
    Pair {
        device: String,
        /// The device's 6-digit passkey, when it is fixed (printed on it or in
        /// its manual); one shown anew each time is typed at the prompt.
        #[arg(long, value_parser = parse_passkey)]
        passkey: Option<u32>,
        /// A legacy PIN code (from the device's screen or manual).
        #[arg(long)]
        pin: Option<String>,
        /// Accept the number a device asks to compare without comparing it
        /// (as safe as Just Works; on a terminal the number is shown and asked).
        #[arg(long)]
        confirm: bool,
        /// Pair through this adapter (`hci1`) instead of the first
        /// configured. For a device already paired this adds a bond through
        /// that adapter, so the device can move there when its own adapter
        /// is down (BlueZ keeps bonds per adapter).
        #[arg(long)]
        adapter: Option<String>,
        /// Map this user slot of a shared device (a family scale or cuff,
        /// already paired) to a patient: its consent code is proven to the
        /// device, its readings go to that patient from then on.
        #[arg(long, requires = "consent", value_parser = clap::value_parser!(u8).range(0..=254))]
        user_index: Option<u8>,
        /// The user slot's consent code (0–9999); without --user-index a new
        /// slot is registered on the device with it.
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=9999))]
        consent: Option<u16>,
        /// The patient (DID, with a [[keys.patients]] entry) the user slot
        /// belongs to [default: the gateway's owner].
        #[arg(long, requires = "consent", value_name = "DID")]
        patient: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Readings of shared devices held because they named no mapped user
    /// slot (or none at all): never guessed, they wait for `assign`.
    Unassigned {
        #[arg(long)]
        json: bool,
    },
    /// Give a held reading to a user of its device (user index or patient
    /// DID): it is proven and sent with its original time.
    Assign {
        /// The reading's ID from `hailan-gateway unassigned`.
        reading: i64,
        /// The user: its index on the device, or the patient's DID.
        user: String,
    },
    /// Paired devices: battery, connection, last reading, outbox depth.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Forget a paired device (by id, address or name) and its unsent
    /// readings, and remove its bond from BlueZ.
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
    /// Prove one window of synthetic heart-rate readings with the installed
    /// window key, verify it, and print the proof bundle as JSON (for
    /// `hailan-ingest zk verify --bundle FILE --keys DIR` on the server).
    /// Publishes nothing, touches no state.
    Selftest {
        /// Key directory [default: keys.zk_dir of the configuration].
        #[arg(long)]
        zk_dir: Option<PathBuf>,
        /// Readings under the window proof (1 to 16).
        #[arg(long, default_value_t = hailan_proto::zk::WINDOW_LEN)]
        readings: usize,
        /// Write the bundle here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
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
    match cli.command {
        // With its key directory given, the self-test needs no configuration
        // (a fresh install, a cross-built binary under qemu).
        Command::Selftest {
            zk_dir: Some(dir),
            readings,
            out,
        } => exit_code(selftest(dir, readings, out)),
        command => exit_code(run(cli.config, command)),
    }
}

fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hailan-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn selftest(zk_dir: PathBuf, readings: usize, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let made = hailan_gateway::selftest::run(&zk_dir, readings)?;
    let json = serde_json::to_string_pretty(&made.bundle)?;
    match &out {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("--out: writing {}", path.display()))?,
        None => println!("{json}"),
    }
    let dev = match made.origin {
        hailan_proto::zk::KeyOrigin::Dev { seed } => format!(", DEVELOPMENT key (seed {seed})"),
        hailan_proto::zk::KeyOrigin::Setup => String::new(),
    };
    eprintln!(
        "selftest: a window of {} readings proven in {} ms on {}, verified against key {}{dev}",
        made.readings,
        made.prove_time.as_millis(),
        std::env::consts::ARCH,
        made.bundle.key_id
    );
    Ok(ExitCode::SUCCESS)
}

fn run(config: Option<PathBuf>, command: Command) -> anyhow::Result<ExitCode> {
    let cfg = GatewayConfig::load(config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    use hailan_gateway::{daemon, owner};
    match command {
        Command::Run => rt.block_on(daemon::run(cfg))?,
        Command::Init => owner::init(&cfg)?,
        Command::Scan {
            duration,
            adapter,
            json,
        } => rt.block_on(owner::scan(
            &cfg,
            Duration::from_secs(duration),
            adapter.as_deref(),
            json,
        ))?,
        Command::Pair {
            device,
            adapter,
            json,
            user_index,
            consent: Some(consent),
            patient,
            ..
        } => {
            // The device is bonded already: no pairing answers are asked.
            let request = hailan_gateway::household::SlotRequest {
                user_index,
                consent,
                patient,
            };
            rt.block_on(hailan_gateway::household::pair_slot(
                &cfg,
                &device,
                &request,
                adapter.as_deref(),
                json,
            ))?
        }
        Command::Pair {
            device,
            passkey,
            pin,
            confirm,
            adapter,
            json,
            ..
        } => {
            let answers = PairingAnswers {
                passkey,
                pin,
                confirm,
                ..PairingAnswers::from_terminal()
            };
            let paired = rt.block_on(owner::pair(
                &cfg,
                &device,
                &answers,
                adapter.as_deref(),
                json,
            ));
            // A prompt BlueZ gave up on still reads the terminal on a
            // blocking thread: do not wait for it.
            rt.shutdown_background();
            paired?
        }
        Command::Devices { json } => owner::devices(&cfg, json)?,
        Command::Unassigned { json } => hailan_gateway::household::unassigned(&cfg, json)?,
        Command::Assign { reading, user } => {
            hailan_gateway::household::assign(&cfg, reading, &user)?
        }
        Command::Forget { device } => rt.block_on(owner::forget(&cfg, &device))?,
        Command::Status { json } => {
            if !owner::status(&cfg, json)? {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Selftest {
            zk_dir,
            readings,
            out,
        } => return selftest(zk_dir.unwrap_or(cfg.keys.zk_dir), readings, out),
        Command::Decode { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}
