//! `hailan-sim`: simulated BLE health devices served as BlueZ on a D-Bus.
//!
//! ```text
//! hailan-sim run --devices hr=5,bp=1,spo2=1,temp=1,glucose=1,scale=1 \
//!     [--seed N] [--speed X] [--faults SPEC] [--ground-truth FILE] \
//!     [--adapters N] [--rates demo|home] [--replay-days D] \
//!     [--bus ADDRESS | --private-bus]
//! ```
//! Prints `DEVICE name kind address path` per device, `BUS address`, then
//! `READY` (stdout); logs go to stderr. Reads commands on stdin:
//! `fault SPEC` (see `faults`), `measure NAME`, `clock NAME`, `links`,
//! `linked NAME` (the adapter holding its link), `stored NAME` (records it
//! holds for RACP), `now` (the devices' clock; `caught_up` after a replay),
//! `quit`.

// The argument docs are the CLI's help text (clap), not rustdoc: `[=ARG]`
// and the like are meant literally.
#![allow(rustdoc::broken_intra_doc_links)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use hailan_firmware_sim::harness::PrivateBus;
use hailan_firmware_sim::{SimConfig, Simulator, faults, sim};
use std::io::Write;
use std::path::PathBuf;
use tokio::io::AsyncBufReadExt;

/// Simulated BLE health devices served as BlueZ on a private D-Bus.
#[derive(Parser)]
#[command(name = "hailan-sim", version = hailan_firmware_sim::VERSION)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the simulator until killed (or `quit` on stdin).
    Run {
        /// Devices per kind: hr, bp, spo2, temp, glucose, scale, bodycomp.
        #[arg(long, default_value = "hr=1,bp=1,spo2=1,temp=1,glucose=1,scale=1")]
        devices: String,
        /// Physiology seed (same seed, same values).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Time acceleration of device schedules (1 = real time).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Faults: KIND[=ARG][@AT][+FOR][%EVERY],… (drop, refuse, stall,
        /// malformed, out-of-range, rssi, power-off, power-on,
        /// pairing-mode-timeout, bond-lost, clock=DEVICE:SECONDS[:PPM]
        /// (its clock that far ahead, drifting), clock-reset=DEVICE (its
        /// clock back to 2000-01-01), consent-gated=DEVICE (a shared device
        /// hands a user's queued measurements only where they consented)).
        #[arg(long)]
        faults: Option<String>,
        /// Pairing methods other than each model's own (glucose meters show a
        /// passkey, the rest pair Just Works): DEVICE=METHOD,… with METHOD
        /// just-works, passkey[:NNNNNN], numeric[:NNNNNN] or pin[:PIN].
        /// Each device's method and secret is printed: `PAIRING glucose0 passkey 123456`.
        #[arg(long)]
        pairing: Option<String>,
        /// Adapters to serve (`hci0` … `hci{N-1}`, 1 to 32): every device is
        /// in range of each, and takes one link at a time.
        #[arg(long, default_value_t = 1)]
        adapters: usize,
        /// How often devices measure: `demo` (a cuff every 3 min …) or
        /// `home` (a cuff twice a day, a scale once, a meter four times …).
        #[arg(long, default_value = "demo", value_parser = sim::Rates::parse)]
        rates: sim::Rates,
        /// Replay the last D days first: the devices' clock starts D days
        /// back and runs at --speed (schedules too) until it has caught up
        /// with now, then in real time. `now` on stdin says when.
        #[arg(long)]
        replay_days: Option<f64>,
        /// Write every value sent (and every stored glucose record) as JSON lines.
        #[arg(long)]
        ground_truth: Option<PathBuf>,
        /// Bus address to serve on.
        #[arg(long, env = "DBUS_SYSTEM_BUS_ADDRESS", conflicts_with = "private_bus")]
        bus: Option<String>,
        /// Start a private dbus-daemon and serve on it (its address is printed).
        #[arg(long)]
        private_bus: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            devices,
            seed,
            speed,
            faults,
            pairing,
            adapters,
            rates,
            replay_days,
            ground_truth,
            bus,
            private_bus,
        } => {
            let cfg = SimConfig {
                devices: sim::parse_devices(&devices).map_err(anyhow::Error::msg)?,
                seed,
                speed,
                ground_truth,
                faults: match faults {
                    Some(s) => faults::parse_faults(&s).map_err(anyhow::Error::msg)?,
                    None => vec![],
                },
                pairing: match pairing {
                    Some(s) => hailan_firmware_sim::pairing::parse_pairing(&s)
                        .map_err(anyhow::Error::msg)
                        .context("--pairing")?,
                    None => vec![],
                },
                adapters,
                rates,
                replay: match replay_days {
                    Some(d) if d.is_finite() && d > 0.0 && d <= 3650.0 => {
                        Some(std::time::Duration::from_secs_f64(d * 86_400.0))
                    }
                    Some(d) => anyhow::bail!("--replay-days {d}: give 0 < D ≤ 3650"),
                    None => None,
                },
            };
            let private = if private_bus {
                Some(PrivateBus::start()?)
            } else {
                None
            };
            let bus = match (&private, bus) {
                (Some(p), _) => p.address().to_string(),
                (None, Some(b)) => b,
                (None, None) => anyhow::bail!(
                    "no bus: give --bus, set DBUS_SYSTEM_BUS_ADDRESS, or use --private-bus"
                ),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let r = rt.block_on(run(bus, cfg));
            drop(private);
            r
        }
    }
}

async fn run(bus: String, cfg: SimConfig) -> anyhow::Result<()> {
    let sim = Simulator::start(&bus, cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        for d in sim.devices() {
            writeln!(
                out,
                "DEVICE {} {} {} {}",
                d.name,
                d.kind.as_str(),
                d.address,
                d.path
            )?;
        }
        for d in sim.devices() {
            writeln!(out, "PAIRING {} {}", d.name, d.pairing.describe())?;
        }
        writeln!(out, "BUS {bus}")?;
        writeln!(out, "READY")?;
        out.flush()?;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut bus_check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = bus_check.tick() => {
                if !sim.bus_alive().await {
                    tracing::warn!("bus gone; exiting");
                    break;
                }
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    if !command(&sim, l.trim()).await {
                        break;
                    }
                }
                _ => stdin_open = false,
            },
        }
    }
    sim.shutdown().await;
    Ok(())
}

/// One stdin command; false = quit.
async fn command(sim: &Simulator, line: &str) -> bool {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let result = match cmd {
        "" => Ok(()),
        "quit" => return false,
        "measure" => match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name] => sim.measure_now(name),
            [name, user] => match user.parse() {
                Ok(u) => sim.measure_by(name, u),
                Err(_) => Err(anyhow::anyhow!("user {user:?} is not a user index (0–254)")),
            },
            _ => Err(anyhow::anyhow!("measure NAME [USER]")),
        },
        "users" => {
            let name = arg.trim();
            if sim.device(name).is_none() {
                Err(anyhow::anyhow!("no simulated device {name:?}"))
            } else {
                let slots: Vec<String> = sim
                    .users(name)
                    .iter()
                    .map(|(i, c)| format!("{i}:{c}"))
                    .collect();
                println!("OK users {name} {}", slots.join(" "));
                return true;
            }
        }
        "user-add" => match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name, consent] => match consent.parse() {
                Ok(c) => match sim.add_user(name, c) {
                    Ok(i) => {
                        println!("OK user-add {name} index={i} consent={c}");
                        return true;
                    }
                    Err(e) => Err(e),
                },
                Err(_) => Err(anyhow::anyhow!("consent {consent:?} is not 0–9999")),
            },
            _ => Err(anyhow::anyhow!("user-add NAME CONSENT")),
        },
        "links" => {
            let (now, peak) = sim.links();
            println!("OK links now={now} peak={peak}");
            return true;
        }
        "now" => {
            println!(
                "OK now unix_ms={} caught_up={}",
                hailan_firmware_sim::model::unix_now_ms(),
                hailan_firmware_sim::model::caught_up()
            );
            return true;
        }
        "stored" => {
            let name = arg.trim();
            if sim.device(name).is_none() {
                Err(anyhow::anyhow!("no simulated device {name:?}"))
            } else {
                println!("OK stored {name} records={}", sim.stored_records(name));
                return true;
            }
        }
        "linked" => {
            let name = arg.trim();
            if sim.device(name).is_none() {
                Err(anyhow::anyhow!("no simulated device {name:?}"))
            } else {
                match sim.linked_through(name) {
                    Some(k) => println!("OK linked {name} adapter=hci{k}"),
                    None => println!("OK linked {name} adapter=none"),
                }
                return true;
            }
        }
        "clock" => {
            let name = arg.trim();
            match sim.clock_offset_ms(name) {
                Some(offset) => {
                    println!(
                        "OK clock {name} offset_ms={offset} sets={}",
                        sim.clock_sets(name)
                    );
                    return true;
                }
                None => Err(anyhow::anyhow!("no simulated device {name:?}")),
            }
        }
        "fault" => match faults::parse_faults(arg) {
            Ok(fs) => {
                let mut r = Ok(());
                for f in fs {
                    if let Err(e) = sim.inject(f.fault).await {
                        r = Err(e);
                    }
                }
                r
            }
            Err(e) => Err(anyhow::Error::msg(e)),
        },
        other => Err(anyhow::anyhow!(
            "unknown command {other:?} (fault SPEC | measure NAME [USER] | users NAME | user-add NAME CONSENT | clock NAME | links | linked NAME | stored NAME | now | quit)"
        )),
    };
    match result {
        Ok(()) => println!("OK {line}"),
        Err(e) => println!("ERR {line}: {e:#}"),
    }
    true
}
