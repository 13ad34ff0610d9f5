//! `cargo xtask …`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `services`: install and start PostgreSQL and Mosquitto (idempotent).
//! - `demo`: the main job (see README).
//! - `test`: services, `cargo fmt --check`, `cargo deny` (bans, licenses,
//!   sources), then the whole test suite — what CI runs.
//! - `bench`: every benchmark, written into BENCHMARKS.md.
//! - `package`: the Debian packages (cargo-deb), checked with lintian.
//! - `ha start|status|stop`: a Patroni cluster on this machine (OPERATIONS.md §3).

mod bench;
mod demo;
mod ha;
mod package;
mod procstat;
mod services;
mod sh;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sh::{Cmd, repo_root};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hailan project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing, start PostgreSQL and Mosquitto, print their URLs.
    Services,
    /// The whole system: services, keys, demo people, simulated devices
    /// paired through the gateway, ingest; live progress, then a summary.
    Demo {
        /// How long to run, in seconds (Ctrl-C stops earlier).
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Leave the simulator, gateway and ingest running afterwards.
        #[arg(long)]
        keep: bool,
        /// The simulated devices (`hailan-sim --devices`).
        #[arg(long, default_value = demo::DEVICES)]
        devices: String,
        /// Device schedules this many times faster than real time.
        #[arg(long, default_value_t = demo::SPEED)]
        speed: u32,
        /// Build and run the release binaries.
        #[arg(long)]
        release: bool,
        /// Run the binaries already built (in target/debug or target/release).
        #[arg(long)]
        no_build: bool,
    },
    /// Run every benchmark (release builds) and write the figures, the
    /// commands and the machine into BENCHMARKS.md.
    Bench {
        /// Shorter runs (for checking the command itself, not for figures).
        #[arg(long)]
        quick: bool,
    },
    /// Build the Debian packages hailan-gateway and hailan-server (cargo-deb),
    /// check them with lintian and print where they are.
    Package {
        /// Cargo profile of the packaged binaries (`dev` only to test the
        /// packaging itself: cargo-deb warns about it).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Debian revision: the packages are `<version>-<revision>`.
        #[arg(long, default_value_t = 1)]
        revision: u32,
        /// Where the .deb files go (default: target/debian).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Package the binaries already built for the profile.
        #[arg(long)]
        no_build: bool,
        /// `amd64`: both packages; `arm64`: the gateway, cross-compiled with
        /// Debian's gcc-aarch64-linux-gnu and run under qemu-user-static.
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
    /// A Patroni cluster on this machine: two PostgreSQL nodes over three
    /// etcd members (loopback ports); `status` prints `patronictl list`.
    Ha {
        #[arg(value_parser = ["start", "status", "stop"])]
        action: String,
    },
    /// Set up services and run the whole test suite (this is what CI runs).
    Test {
        /// Extra arguments passed to `cargo nextest run` (e.g. a test filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Services => {
            let e = services::run(false)?;
            println!();
            println!("DATABASE_URL={}", e.database_url);
            println!("HAILAN_MQTT_URL={}", e.mqtt_url);
            println!("HAILAN_MQTT_INGEST_URL={}", e.mqtt_ingest_url);
            println!("(all settings: {})", e.state_dir.join("env").display());
            Ok(())
        }
        Command::Demo {
            duration,
            keep,
            devices,
            speed,
            release,
            no_build,
        } => {
            let e = services::run(false)?;
            demo::run(
                &e,
                &demo::Options {
                    duration: std::time::Duration::from_secs(duration),
                    keep,
                    devices,
                    speed,
                    release,
                    no_build,
                },
            )
        }
        Command::Bench { quick } => {
            // Figures from a broker still holding earlier floods are not worth much.
            services::empty_broker(false)?;
            services::run(false)?;
            services::drop_stale_test_databases(false);
            bench::run(quick)
        }
        Command::Package {
            profile,
            revision,
            out,
            no_build,
            arch,
        } => {
            let out = match out {
                Some(dir) => std::env::current_dir()?.join(dir),
                None => repo_root().join("target/debian"),
            };
            let debs = package::run(&package::Options {
                profile,
                revision,
                out,
                no_build,
                arch,
            })?;
            println!();
            for deb in debs {
                println!("{}", deb.display());
            }
            Ok(())
        }
        Command::Ha { action } => match action.as_str() {
            "start" => ha::start(),
            "status" => ha::status(),
            _ => ha::stop(),
        },
        Command::Test { args } => test(&args),
    }
}

pub(crate) fn cargo() -> Cmd {
    Cmd::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).current_dir(repo_root())
}

/// The cargo-deny release `cargo xtask test` installs when none is found.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// `cargo deny check bans licenses sources` with the committed `deny.toml`
/// (installing cargo-deny first if it is missing). Advisories need the
/// RustSec database from GitHub, which these machines cannot reach: run
/// `cargo deny check advisories` where it can.
fn cargo_deny() -> Result<()> {
    let installed = cargo().args(["deny", "--version"]).quiet().run().is_ok();
    if !installed {
        println!("== cargo install cargo-deny {CARGO_DENY_VERSION}");
        cargo()
            .args([
                "install",
                "--locked",
                "cargo-deny",
                "--version",
                CARGO_DENY_VERSION,
            ])
            .run()
            .context("installing cargo-deny")?;
    }
    println!("== cargo deny check bans licenses sources");
    cargo()
        .args(["deny", "check", "bans", "licenses", "sources"])
        .run()
        .context("cargo deny: see deny.toml")
}

fn has_nextest() -> bool {
    cargo().args(["nextest", "--version"]).quiet().run().is_ok()
}

fn test(extra: &[String]) -> Result<()> {
    let e = services::run(false)?;
    services::drop_stale_test_databases(false);
    let env = e.env();
    println!("== cargo fmt --check");
    cargo()
        .args(["fmt", "--all", "--", "--check"])
        .run()
        .context("formatting: run `cargo fmt --all`")?;
    cargo_deny()?;
    // tests/tests/packaging.rs runs `cargo xtask package`
    package::ensure_cargo_deb()?;
    if has_nextest() {
        println!("== cargo nextest run --workspace");
        cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(extra)
            .envs(&env)
            .run()?;
    } else {
        println!("== cargo test --workspace (cargo-nextest not found)");
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra)
            .envs(&env)
            .run()?;
    }
    Ok(())
}
