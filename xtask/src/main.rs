//! `cargo xtask …`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `services`: install and start PostgreSQL and Mosquitto (idempotent).
//! - `demo`: the main job (see README).
//! - `test`: services, then the whole test suite — what CI runs.

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
    /// Set up services, migrate, and show what the system holds.
    Demo,
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
            println!("(all settings: {})", e.state_dir.join("env").display());
            Ok(())
        }
        Command::Demo => demo(),
        Command::Test { args } => test(&args),
    }
}

fn cargo() -> Cmd {
    Cmd::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).current_dir(repo_root())
}

fn has_nextest() -> bool {
    cargo().args(["nextest", "--version"]).quiet().run().is_ok()
}

fn test(extra: &[String]) -> Result<()> {
    let e = services::run(false)?;
    let env = e.env();
    println!("== cargo fmt --check");
    cargo()
        .args(["fmt", "--all", "--", "--check"])
        .run()
        .context("formatting: run `cargo fmt --all`")?;
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

fn demo() -> Result<()> {
    let e = services::run(false)?;
    let env = e.env();
    println!("\n== hailan-ingest migrate");
    cargo()
        .args(["run", "--quiet", "-p", "hailan-ingest", "--", "migrate"])
        .envs(&env)
        .run()?;
    println!("\n== hailan-ingest schema");
    cargo()
        .args(["run", "--quiet", "-p", "hailan-ingest", "--", "schema"])
        .envs(&env)
        .run()?;
    println!("\nDATABASE_URL={}", e.database_url);
    println!("HAILAN_MQTT_URL={}", e.mqtt_url);
    Ok(())
}
