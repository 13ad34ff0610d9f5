//! `cargo xtask bench`: every benchmark of the project, one after another,
//! in release builds, then their output — each with the command that
//! produced it and the machine it ran on — written into BENCHMARKS.md
//! between two markers. What is above the markers (the analysis, the goals,
//! earlier figures) is written by people and left alone.
//!
//! Figures are only worth something on a quiet machine: the load average at
//! the start is recorded with them.

use crate::sh::{Cmd, repo_root};
use anyhow::{Context, Result};
use std::time::Instant;

const BEGIN: &str =
    "<!-- cargo xtask bench: begin (generated; everything up to the end marker is rewritten) -->";
const END: &str = "<!-- cargo xtask bench: end -->";

/// One benchmark: a title and the `cargo …` arguments that run it.
struct Bench {
    title: &'static str,
    args: Vec<&'static str>,
}

fn benches(quick: bool) -> Vec<Bench> {
    let pick = |full: &'static str, short: &'static str| if quick { short } else { full };
    let split = |s: &'static str| s.split_whitespace().collect::<Vec<_>>();
    vec![
        Bench {
            title: "Zero-knowledge proofs: prove per reading and per window, verify one by one and batched",
            args: split("run --quiet --release -p hailan-proto --example zk_bench"),
        },
        Bench {
            title: "BLE simulator: notifications per second through btleplug over D-Bus",
            args: split(pick(
                "run --quiet --release -p hailan-firmware-sim --example notify_rate -- hr=50 20 10",
                "run --quiet --release -p hailan-firmware-sim --example notify_rate -- hr=5 4 3",
            )),
        },
        Bench {
            title: "Ingest: verified readings per second, 1 and 2 consumers, beside pure verification and COPY",
            args: split(pick(
                "run --quiet --release -p hailan-ingest --example ingest_bench -- 1000 1000 2",
                "run --quiet --release -p hailan-ingest --example ingest_bench -- 50 10 2",
            )),
        },
        Bench {
            title: "Gateway: N heart-rate straps → one core → outbox → Mosquitto",
            args: split(pick(
                "run --quiet --release -p hailan-tests --example gateway_bench -- 20 10 60",
                "run --quiet --release -p hailan-tests --example gateway_bench -- 3 4 10",
            )),
        },
        Bench {
            title: "Gateway: 50 straps (memory with 50 devices)",
            args: split(pick(
                "run --quiet --release -p hailan-tests --example gateway_bench -- 50 4 60",
                "run --quiet --release -p hailan-tests --example gateway_bench -- 5 4 10",
            )),
        },
        Bench {
            title: "Clinician API: a one-day heart-rate chart",
            args: split(pick(
                "run --quiet --release -p hailan-api --example api_bench -- 50",
                "run --quiet --release -p hailan-api --example api_bench -- 3",
            )),
        },
        Bench {
            title: "End to end: simulated devices → gateway → Mosquitto → ingest → PostgreSQL, per process",
            args: split(pick(
                "xtask demo --release --duration 60 --speed 5 --devices hr=20,bp=1,spo2=1,temp=1,glucose=1,scale=1",
                "xtask demo --release --duration 15",
            )),
        },
    ]
}

/// The machine, as the figures need it said.
fn machine(commit: &str) -> String {
    let sh = |cmd: &str| {
        Cmd::new("sh")
            .args(["-c", cmd])
            .quiet()
            .output()
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    format!(
        "- CPU: {} ({} cores online)\n- memory: {}\n- OS: Debian {} (kernel {})\n- load average at the start: {}\n- commit: {}\n- date: {}",
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("nproc"),
        sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'"),
        sh("cat /etc/debian_version"),
        sh("uname -r"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        commit,
        sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    )
}

pub fn run(quick: bool) -> Result<()> {
    let root = repo_root();
    let commit = Cmd::new("git")
        .args([
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ])
        .quiet()
        .output()
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let mut report = format!(
        "{BEGIN}\n\n## Latest `cargo xtask bench{}` run\n\n{}\n",
        if quick { " --quick" } else { "" },
        machine(&commit)
    );
    println!("== building the release binaries the benchmarks start");
    crate::cargo()
        .args(["build", "--quiet", "--release", "--workspace", "--bins"])
        .run()?;
    for b in benches(quick) {
        let command = format!("cargo {}", b.args.join(" "));
        println!("\n===== {}\n===== {command}", b.title);
        let start = Instant::now();
        let out = crate::cargo()
            .args(&b.args)
            .tee()
            .with_context(|| format!("benchmark `{command}`"))?;
        report.push_str(&format!(
            "\n### {}\n\n```sh\n{command}\n```\n\n({:.0} s)\n\n```text\n{}```\n",
            b.title,
            start.elapsed().as_secs_f64(),
            out
        ));
    }
    report.push_str(&format!("\n{END}\n"));
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            report.trim_end(),
            &old[e + END.len()..]
        ),
        _ => format!("{}\n\n{}", old.trim_end(), report),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote the figures into {}", path.display());
    Ok(())
}
