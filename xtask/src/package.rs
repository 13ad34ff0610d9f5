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
    /// Debian architecture: `amd64` (both packages, built natively) or
    /// `arm64` (the gateway, cross-compiled, then run under qemu).
    pub arch: String,
}

/// The arm64 cross build: Rust target, and the Debian tools it needs.
const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
const ARM64_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    // multiarch: needs `dpkg --add-architecture arm64` (done when root)
    (
        "/usr/lib/aarch64-linux-gnu/pkgconfig/dbus-1.pc",
        "libdbus-1-dev:arm64",
    ),
    ("/usr/bin/aarch64-linux-gnu-pkg-config", "pkgconf:arm64"),
    ("/usr/bin/qemu-aarch64-static", "qemu-user-static"),
];

/// One binary package: the crate whose metadata describes it, its Debian
/// name, the programs it ships and its units.
struct Pkg {
    krate: &'static str,
    deb: &'static str,
    bins: &'static [Bin],
    /// `deploy/<unit>.service` files it ships.
    units: &'static [&'static str],
}

/// One program a package ships: its crate, its name, and its man page's one line.
struct Bin {
    krate: &'static str,
    name: &'static str,
    description: &'static str,
}

const PACKAGES: &[Pkg] = &[
    Pkg {
        krate: "hailan-gateway",
        deb: "hailan-gateway",
        bins: &[Bin {
            krate: "hailan-gateway",
            name: "hailan-gateway",
            description: "edge gateway for Bluetooth LE health devices",
        }],
        units: &["hailan-gateway"],
    },
    Pkg {
        krate: "hailan-ingest",
        deb: "hailan-server",
        bins: &[
            Bin {
                krate: "hailan-ingest",
                name: "hailan-ingest",
                description: "hailan ingestion service and admin",
            },
            Bin {
                krate: "hailan-api",
                name: "hailan-api",
                description: "hailan clinician API (JSON, FHIR R4, web page)",
            },
        ],
        units: &["hailan-ingest", "hailan-api"],
    },
];

/// The packages built, with where they are.
pub fn run(o: &Options) -> Result<Vec<PathBuf>> {
    let arm64 = match o.arch.as_str() {
        "amd64" => false,
        "arm64" => true,
        other => bail!("--arch {other}: amd64 or arm64"),
    };
    ensure_tools(TOOLS)?;
    if arm64 {
        ensure_tools(ARM64_TOOLS)?;
        ensure_rust_target(ARM64_TARGET)?;
    }
    ensure_cargo_deb()?;
    // arm64: the gateway only (gateways run on ARM boards; the server on amd64).
    let packages: Vec<&Pkg> = PACKAGES
        .iter()
        .filter(|p| !arm64 || p.deb == "hailan-gateway")
        .collect();
    let started = Instant::now();
    if !o.no_build {
        let names: Vec<&str> = packages
            .iter()
            .flat_map(|p| p.bins.iter().map(|b| b.krate))
            .collect();
        println!(
            "== cargo build --profile {} ({}, {})",
            o.profile,
            names.join(", "),
            o.arch
        );
        let mut build = crate::cargo().args(["build", "--locked", "--profile", &o.profile]);
        if arm64 {
            build = cross_env(build.args(["--target", ARM64_TARGET]));
        }
        for krate in &names {
            build = build.args(["-p", krate]);
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
    for p in packages {
        let mut bin = target_dir();
        if arm64 {
            bin.push(ARM64_TARGET);
        }
        let mut runnables = Vec::new();
        for b in p.bins {
            let bin = bin.join(profile_dir(&o.profile)).join(b.name);
            if !bin.is_file() {
                bail!(
                    "{} is not built: run `cargo xtask package --profile {} --arch {}` without --no-build",
                    bin.display(),
                    o.profile,
                    o.arch
                );
            }
            if arm64 {
                // Whatever ran in the man page's making also runs here, on arm64.
                qemu_smoke(&bin)?;
                qemu_window_proof(&bin, &o.profile)?;
            }
            let runnable = if arm64 { qemu_wrapper(&bin)? } else { bin };
            runnables.push((b, runnable));
        }
        render_assets(p, &runnables, &version)?;
        println!("== cargo deb -p {} ({} {version})", p.krate, p.deb);
        let mut deb = crate::cargo()
            // --strip: the release profile keeps line tables (backtraces in
            // development); a package ships stripped binaries (lintian).
            .args(["deb", "--locked", "--no-build", "--strip", "-p", p.krate])
            .args(["--profile", &o.profile])
            .args(["--deb-revision", &o.revision.to_string()]);
        if arm64 {
            deb = cross_env(deb.args(["--target", ARM64_TARGET]));
        }
        let printed = deb
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

fn render_assets(p: &Pkg, bins: &[(&Bin, PathBuf)], version: &str) -> Result<()> {
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
    // The man pages, from `--help` and `--version`; gzip -n: reproducible.
    for (b, bin) in bins {
        let man = dir.join(format!("{}.1", b.name));
        Cmd::new("help2man")
            .args([
                "--no-info",
                "--section",
                "1",
                "--source",
                "hailan",
                "--locale",
                "C.UTF-8",
            ])
            .args(["--name", b.description])
            .arg("--output")
            .arg(&man)
            .arg(bin)
            .env("LC_ALL", "C.UTF-8")
            .quiet()
            .run()
            .with_context(|| format!("help2man {}", b.name))?;
        Cmd::new("gzip").args(["-9", "-n", "-f"]).arg(&man).run()?;
    }
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

/// The environment of a cross build for arm64 with Debian's toolchain and
/// the arm64 (multiarch) libraries.
fn cross_env(cmd: Cmd) -> Cmd {
    cmd.env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    )
    .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
    .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
    .env(
        "PKG_CONFIG_aarch64_unknown_linux_gnu",
        "aarch64-linux-gnu-pkg-config",
    )
    .env("PKG_CONFIG_ALLOW_CROSS", "1")
}

/// A script that runs the arm64 `bin` under qemu (help2man runs it).
fn qemu_wrapper(bin: &Path) -> Result<PathBuf> {
    let dir = target_dir().join(ARM64_TARGET).join("qemu");
    fs::create_dir_all(&dir)?;
    let name = bin.file_name().context("binary name")?;
    let path = dir.join(name);
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec qemu-aarch64-static '{}' \"$@\"\n",
            bin.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The arm64 gateway runs under qemu-user: `--version`, and `decode` of every
/// outside GATT vector (proto/vectors/gatt.json) as the amd64 test of
/// `proto/src/gatt/tests.rs` reads them: an `error` vector exits 1, any other
/// prints every expected field with its value.
fn qemu_smoke(bin: &Path) -> Result<()> {
    let version = Cmd::new("qemu-aarch64-static")
        .arg(bin)
        .arg("--version")
        .output()?;
    println!("== under qemu-aarch64: {}", version.trim());
    let path = repo_root().join("proto/vectors/gatt.json");
    let vectors: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    let vectors = vectors.as_array().context("gatt.json: an array")?;
    let (mut decoded, mut refused) = (0, 0);
    for v in vectors {
        let (uuid, hex) = (v["characteristic_uuid"].as_str(), v["hex"].as_str());
        let (Some(uuid), Some(hex)) = (uuid, hex) else {
            bail!("gatt.json: a vector without characteristic_uuid or hex: {v}");
        };
        let out = std::process::Command::new("qemu-aarch64-static")
            .arg(bin)
            .args(["decode", uuid, hex])
            .stdin(std::process::Stdio::null())
            .output()
            .context("running qemu-aarch64-static")?;
        let label = format!("arm64 `decode {uuid} {hex}`");
        if v["expected"].get("error").is_some() {
            if out.status.code() != Some(1) {
                bail!("{label}: the vector is an error, it exited {}", out.status);
            }
            refused += 1;
            continue;
        }
        if !out.status.success() {
            bail!(
                "{label} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{label} printed no JSON"))?;
        let mut problems = Vec::new();
        subset(&label, &v["expected"], &got, &mut problems);
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        decoded += 1;
    }
    println!(
        "== under qemu-aarch64: gatt.json: {decoded} vectors decoded as expected, {refused} refused as expected"
    );
    Ok(())
}

/// The arm64 gateway proves a window (`hailan-gateway selftest`) with keys
/// made on this machine, and the amd64 `hailan-ingest zk verify` accepts the
/// bundle: the arm64 build's field and curve arithmetic agree with the
/// server's. The self-test's timing is not printed: under emulation it says
/// nothing about a board (BENCHMARKS.md takes figures from real hardware only).
fn qemu_window_proof(bin: &Path, profile: &str) -> Result<()> {
    let dir = target_dir().join(ARM64_TARGET).join("selftest");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = dir.join("zk");
    let bundle = dir.join("bundle.json");
    let ingest = |args: &[&str]| {
        crate::cargo()
            .args(["run", "--locked", "-q", "--profile", profile])
            .args(["-p", "hailan-ingest", "--bin", "hailan-ingest", "--"])
            .args(args)
    };
    let keys_arg = keys.to_str().context("non-UTF-8 target directory")?;
    ingest(&[
        "zk",
        "setup",
        "--dev-seed",
        "17",
        "--force",
        "--out",
        keys_arg,
    ])
    .quiet()
    .run()
    .context("amd64 `hailan-ingest zk setup` for the arm64 self-test")?;
    Cmd::new("qemu-aarch64-static")
        .arg(bin)
        .args(["selftest", "--zk-dir"])
        .arg(&keys)
        .arg("--out")
        .arg(&bundle)
        .quiet()
        .run()
        .context("arm64 `hailan-gateway selftest` under qemu")?;
    let verified = ingest(&[
        "zk",
        "verify",
        "--bundle",
        bundle.to_str().context("non-UTF-8 target directory")?,
        "--keys",
        keys_arg,
    ])
    .output()
    .context("the window proof made on arm64 does not verify on amd64")?;
    println!(
        "== under qemu-aarch64: a window proof made on arm64, {} on amd64",
        verified.trim()
    );
    Ok(())
}

/// Every field of `expected` is in `actual` with its value (the rules of
/// `check_subset` in proto/src/gatt/tests.rs: annotations skipped, numbers
/// compared as f64, `direction` by prefix).
fn subset(
    path: &str,
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    problems: &mut Vec<String>,
) {
    use serde_json::Value;
    const ANNOTATIONS: &[&str] = &[
        "note",
        "float_raw",
        "sfloat_raw",
        "encoding",
        "lenient_parsers",
    ];
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                if ANNOTATIONS.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{path}.{k}");
                match a.get(k) {
                    None => problems.push(format!("{p}: missing (expected {ev})")),
                    Some(Value::String(av)) if k == "direction" => {
                        if !ev.as_str().is_some_and(|e| e.starts_with(av.as_str())) {
                            problems.push(format!("{p}: expected {ev}, got {av}"));
                        }
                    }
                    Some(av) => subset(&p, ev, av, problems),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(&format!("{path}[{i}]"), ev, av, problems);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a && !e.is_number() => {}
        (e, a) => problems.push(format!("{path}: expected {e}, got {a}")),
    }
}

/// `rustup target add` when the standard library for `target` is missing.
fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Cmd::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup (the arm64 standard library comes from `rustup target add`)")?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    println!("== rustup target add {target}");
    Cmd::new("rustup").args(["target", "add", target]).run()
}

/// The Debian tools packaging uses, installed with apt when root (an
/// `:arm64` package first adds the architecture to dpkg).
fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing = crate::services::missing_packages(tools);
    if missing.is_empty() {
        return Ok(());
    }
    if missing.iter().any(|p| p.ends_with(":arm64")) {
        if !is_root() {
            bail!("packaging for arm64 needs, as root: dpkg --add-architecture arm64");
        }
        Cmd::new("dpkg")
            .args(["--add-architecture", "arm64"])
            .run()?;
    }
    println!("== installing {}", missing.join(" "));
    crate::services::apt_install(&missing)
}

/// cargo-deb, the pinned release, installed with `cargo install --locked`
/// when missing or another release.
pub fn ensure_cargo_deb() -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_units_run_the_packaged_binary_and_name_the_package_docs() {
        let unit = fs::read_to_string(repo_root().join("deploy/hailan-api.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/hailan-api "));
        let packaged = packaged_unit(&unit, "hailan-server");
        assert!(packaged.contains("ExecStart=/usr/bin/hailan-api "));
        assert!(!packaged.contains("/usr/local/"));
        assert!(packaged.contains("file:///usr/share/doc/hailan-server/README.md"));
    }

    #[test]
    fn decoded_fields_are_checked_like_the_proto_vector_test() {
        use serde_json::json;
        let check = |e: serde_json::Value, a: serde_json::Value| {
            let mut p = Vec::new();
            subset("v", &e, &a, &mut p);
            p
        };
        let got = json!({"heart_rate_bpm": 85, "rr_intervals_s": [0.0322265625], "x": 1});
        assert!(
            check(
                json!({"heart_rate_bpm": 85, "rr_intervals_s": [0.0322265625], "note": "n"}),
                got.clone()
            )
            .is_empty()
        );
        assert_eq!(check(json!({"heart_rate_bpm": 86}), got.clone()).len(), 1);
        assert_eq!(
            check(json!({"energy_expended_kj": null}), got.clone()).len(),
            1
        );
        assert_eq!(check(json!({"rr_intervals_s": [0.03]}), got).len(), 1);
        assert!(
            check(
                json!({"direction": "inward (toward)"}),
                json!({"direction": "inward"})
            )
            .is_empty()
        );
    }
}
