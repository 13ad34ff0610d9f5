//! `cargo xtask package`: the Debian packages, built with cargo-deb from the
//! `[package.metadata.deb]` sections of `gateway/Cargo.toml`
//! (`hailan-gateway`) and `ingest/Cargo.toml` (`hailan-server`: ingest and
//! the clinician API), then checked with lintian.
//!
//! Before cargo-deb runs, the files the metadata names under
//! `target/deb-assets/<package>/` are rendered here: the systemd units from
//! `deploy/*.service` with the packaged paths (`/usr/bin`, the package's own
//! doc directory), a man page per binary from its `--help` (help2man) and a
//! Debian changelog for the version being built. The maintainer scripts
//! (users, state directories, modes) are `gateway/debian/` and
//! `ingest/debian/`.

use crate::sh::{Cmd, is_root, repo_root};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The cargo-deb release this command installs when none is found.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// (file that must exist, Debian package that provides it)
const TOOLS: &[(&str, &str)] = &[
    // cargo-deb's `$auto` dependencies
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
    ("/usr/bin/lintian", "lintian"),
    ("/usr/bin/help2man", "help2man"),
];

pub struct Options {
    /// Cargo profile of the packaged binaries (`release` for users).
    pub profile: String,
    /// The Debian revision (`0.1.0-<revision>`).
    pub revision: u32,
    /// Where the .deb files go.
    pub out: PathBuf,
    /// Package the binaries already built for `profile`.
    pub no_build: bool,
}

/// One binary package: its crate, its Debian name, its binary and units.
struct Pkg {
    krate: &'static str,
    deb: &'static str,
    bin: &'static str,
    /// `deploy/<unit>.service` files it ships.
    units: &'static [&'static str],
}

const PACKAGES: &[Pkg] = &[
    Pkg {
        krate: "hailan-gateway",
        deb: "hailan-gateway",
        bin: "hailan-gateway",
        units: &["hailan-gateway"],
    },
    Pkg {
        krate: "hailan-ingest",
        deb: "hailan-server",
        bin: "hailan-ingest",
        units: &["hailan-ingest", "hailan-api"],
    },
];

/// The packages built, with where they are.
pub fn run(o: &Options) -> Result<Vec<PathBuf>> {
    ensure_tools()?;
    ensure_cargo_deb()?;
    let started = Instant::now();
    if !o.no_build {
        println!(
            "== cargo build --profile {} (hailan-gateway, hailan-ingest)",
            o.profile
        );
        let mut build = crate::cargo().args(["build", "--locked", "--profile", &o.profile]);
        for p in PACKAGES {
            build = build.args(["-p", p.krate]);
        }
        build.run()?;
    }
    let version = format!("{}-{}", workspace_version()?, o.revision);
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let out = o
        .out
        .canonicalize()
        .with_context(|| format!("resolving {}", o.out.display()))?;
    let mut debs = Vec::new();
    for p in PACKAGES {
        let bin = target_dir().join(profile_dir(&o.profile)).join(p.bin);
        if !bin.is_file() {
            bail!(
                "{} is not built: run `cargo build --profile {} -p {}` (or drop --no-build)",
                bin.display(),
                o.profile,
                p.krate
            );
        }
        render_assets(p, &bin, &version)?;
        println!("== cargo deb -p {} ({} {version})", p.krate, p.deb);
        let printed = crate::cargo()
            .args(["deb", "--locked", "--no-build", "-p", p.krate])
            .args(["--profile", &o.profile])
            .args(["--deb-revision", &o.revision.to_string()])
            .arg("--output")
            .arg(&out)
            .output()
            .with_context(|| format!("cargo deb -p {}", p.krate))?;
        let deb = printed
            .lines()
            .map(str::trim)
            .rfind(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .with_context(|| format!("cargo deb printed no .deb path:\n{printed}"))?;
        debs.push(deb);
    }
    println!("packages built in {:.0} s", started.elapsed().as_secs_f64());
    for deb in &debs {
        lintian(deb)?;
    }
    Ok(debs)
}

/// `lintian` on one package: fails on any error, prints the rest.
fn lintian(deb: &Path) -> Result<()> {
    println!("== lintian {}", deb.display());
    let out = std::process::Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("lintian reports errors for {} (above)", deb.display());
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        p => p,
    }
}

/// `[workspace.package] version` of the root Cargo.toml.
fn workspace_version() -> Result<String> {
    let text = fs::read_to_string(repo_root().join("Cargo.toml"))?;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section && let Some(v) = line.strip_prefix("version") {
            let v = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            return Ok(v.to_owned());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// Where the rendered files of `deb` go (named by its Cargo.toml metadata).
pub fn assets_dir(deb: &str) -> PathBuf {
    repo_root().join("target/deb-assets").join(deb)
}

/// A shipped unit as the package installs it: the binary in /usr/bin, the
/// documentation in the package's own doc directory.
pub fn packaged_unit(text: &str, deb: &str) -> String {
    text.replace("/usr/local/bin/", "/usr/bin/").replace(
        "file:///usr/share/doc/hailan/",
        &format!("file:///usr/share/doc/{deb}/"),
    )
}

fn render_assets(p: &Pkg, bin: &Path, version: &str) -> Result<()> {
    let dir = assets_dir(p.deb);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    for unit in p.units {
        let src = repo_root().join("deploy").join(format!("{unit}.service"));
        let text =
            fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        // cargo-deb's file names: `<package>.service`, else `<package>.<unit>.service`.
        let name = if *unit == p.deb {
            format!("{unit}.service")
        } else {
            format!("{}.{unit}.service", p.deb)
        };
        fs::write(dir.join(name), packaged_unit(&text, p.deb))?;
    }
    // The man page, from `--help` and `--version`; gzip -n: reproducible.
    let man = dir.join(format!("{}.1", p.bin));
    Cmd::new("help2man")
        .args(["--no-info", "--section", "1", "--source", "hailan"])
        .args(["--name", description(p.bin)])
        .arg("--output")
        .arg(&man)
        .arg(bin)
        .env("LC_ALL", "C.UTF-8")
        .quiet()
        .run()
        .context("help2man")?;
    Cmd::new("gzip").args(["-9", "-n", "-f"]).arg(&man).run()?;
    // A Debian changelog for the version being built.
    let date = Cmd::new("date").arg("-R").output()?;
    fs::write(
        dir.join("changelog"),
        format!(
            "{deb} ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask package` from the hailan repository.\n\n -- hailan developers <hailan@example.invalid>  {date}\n",
            deb = p.deb,
            date = date.trim()
        ),
    )?;
    Ok(())
}

fn description(bin: &str) -> &'static str {
    match bin {
        "hailan-gateway" => "edge gateway for Bluetooth LE health devices",
        _ => "hailan ingestion service, admin and clinician API",
    }
}

/// The Debian tools packaging uses, installed with apt when root.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "packaging needs {}; run as root:\n  sudo sh -c '{install}'",
            missing.join(" ")
        );
    }
    println!("== installing {}", missing.join(" "));
    Cmd::new("apt-get").args(["update", "-q"]).quiet().run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().copied())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .quiet()
        .run()
        .with_context(|| format!("installing {}", missing.join(" ")))
}

/// cargo-deb, the pinned release, installed with `cargo install --locked`
/// when missing or another release.
fn ensure_cargo_deb() -> Result<()> {
    let found = crate::cargo().args(["deb", "--version"]).quiet().output();
    if found.is_ok_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION)) {
        return Ok(());
    }
    println!("== cargo install --locked cargo-deb --version {CARGO_DEB_VERSION}");
    crate::cargo()
        .args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .run()
        .context("installing cargo-deb")
}
