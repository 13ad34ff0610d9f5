//! The Debian packages (`cargo xtask package`) install, upgrade and purge as
//! Debian says — in a throw-away Debian 12 root filesystem built from Debian
//! packages with mmdebstrap, never on this machine's own root.
//!
//! The packages are built from the dev-profile binaries the suite has just
//! built (`--profile dev --no-build`: the packaging is under test, not the
//! optimiser; users get `--profile release`, the default). The base root
//! filesystem (bookworm with adduser, bluez, systemd) is made once and kept as
//! a tarball in `.hailan/packaging/`; each run unpacks a fresh copy.
//!
//! Needs root (chroot, dpkg) and mmdebstrap, lintian, help2man, dpkg-dev:
//! `cargo xtask services` installs them.

use anyhow::{Context, Result, bail, ensure};
use hailan_tests::repo_root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What the base root filesystem holds besides apt: the packages' own
/// dependencies (so installing them needs no network) and systemd, whose
/// `systemd-analyze verify` checks the installed units.
const BASE_INCLUDE: &str = "adduser,bluez,systemd,libdbus-1-3";
const SUITE: &str = "bookworm";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn state_dir() -> PathBuf {
    hailan_tests::setting("HAILAN_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".hailan"))
}

/// Run a host command; its stdout, or an error with everything it printed.
fn host(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The base root filesystem tarball, made with mmdebstrap when missing.
fn base_rootfs() -> Result<PathBuf> {
    let dir = state_dir().join("packaging");
    let tar = dir.join(format!(
        "{SUITE}-amd64-{}.tar",
        BASE_INCLUDE.replace(',', "+")
    ));
    if tar.is_file() {
        return Ok(tar);
    }
    ensure!(
        Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing: `cargo xtask services` installs it (apt-get install mmdebstrap)"
    );
    std::fs::create_dir_all(&dir)?;
    let partial = dir.join("partial.tar");
    let started = Instant::now();
    host(
        Command::new("mmdebstrap")
            .args(["--quiet", "--mode=root", "--variant=apt"])
            .arg(format!("--include={BASE_INCLUDE}"))
            .arg(SUITE)
            .arg(&partial),
    )
    .context("building the base root filesystem (needs the Debian mirror)")?;
    std::fs::rename(&partial, &tar)?;
    eprintln!(
        "base root filesystem {} made in {:.0} s",
        tar.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(tar)
}

/// `cargo xtask package --profile dev --no-build --revision N --out DIR`;
/// the .deb paths it printed.
fn package(revision: u32, out: &Path) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let printed = host(
        Command::new(cargo)
            .current_dir(repo_root())
            .args(["xtask", "package", "--profile", "dev", "--no-build"])
            .args(["--revision", &revision.to_string()])
            .arg("--out")
            .arg(out),
    )?;
    let debs: Vec<PathBuf> = printed
        .lines()
        .filter(|l| l.starts_with('/') && l.ends_with(".deb"))
        .map(PathBuf::from)
        .collect();
    ensure!(
        debs.len() == 2,
        "expected two packages, `cargo xtask package` printed:\n{printed}"
    );
    for deb in &debs {
        let name = deb.file_name().unwrap_or_default().to_string_lossy();
        ensure!(
            name.ends_with(&format!("-{revision}_amd64.deb")),
            "{name}: not revision {revision} for amd64"
        );
    }
    Ok(debs)
}

/// A Debian root filesystem unpacked in a temporary directory.
struct Chroot {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Chroot {
    fn unpack(tar: &Path) -> Result<Chroot> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root)?;
        host(
            Command::new("tar")
                .args([
                    "--extract",
                    "--numeric-owner",
                    "--same-permissions",
                    "--file",
                ])
                .arg(tar)
                .arg("-C")
                .arg(&root),
        )?;
        Ok(Chroot { _dir: dir, root })
    }

    /// `sh -c script` inside, as root with a clean environment; its stdout.
    fn sh(&self, script: &str) -> Result<String> {
        host(
            Command::new("chroot")
                .arg(&self.root)
                .args(["/usr/bin/env", "-i"])
                .args([
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "LC_ALL=C.UTF-8",
                    "DEBIAN_FRONTEND=noninteractive",
                ])
                .args(["/bin/sh", "-c", script]),
        )
        .with_context(|| format!("in the chroot: {script}"))
    }

    /// Whether `path` exists inside.
    fn exists(&self, path: &str) -> bool {
        self.path(path).symlink_metadata().is_ok()
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> Result<String> {
        std::fs::read_to_string(self.path(path)).with_context(|| format!("reading {path} inside"))
    }

    /// `owner:group mode` of `path`, names as the chroot's own databases say.
    fn stat(&self, path: &str) -> Result<String> {
        Ok(self
            .sh(&format!("stat -c '%U:%G %a' {path}"))?
            .trim()
            .to_owned())
    }

    fn copy_in(&self, debs: &[PathBuf], dir: &str) -> Result<Vec<String>> {
        std::fs::create_dir_all(self.path(dir))?;
        debs.iter()
            .map(|deb| {
                let name = deb.file_name().context("deb name")?.to_string_lossy();
                let inside = format!("{dir}/{name}");
                std::fs::copy(deb, self.path(&inside))?;
                Ok(inside)
            })
            .collect()
    }
}

/// The `${Status}` and `${Version}` dpkg records for `pkg`.
fn dpkg_state(c: &Chroot, pkg: &str) -> Result<String> {
    Ok(c.sh(&format!(
        "dpkg-query -W -f='${{Status}} ${{Version}}' {pkg} 2>/dev/null || true"
    ))?
    .trim()
    .to_owned())
}

/// Everything a fresh install must leave, checked inside `c`.
fn check_installed(c: &Chroot, version: &str) -> Result<()> {
    for pkg in ["hailan-gateway", "hailan-server"] {
        assert_eq!(
            dpkg_state(c, pkg)?,
            format!("install ok installed {version}")
        );
    }
    // The binaries run.
    for bin in ["hailan-gateway", "hailan-ingest", "hailan-api"] {
        assert_eq!(c.stat(&format!("/usr/bin/{bin}"))?, "root:root 755");
        let v = c.sh(&format!("{bin} --version"))?;
        assert!(v.starts_with(&format!("{bin} 0.")), "{bin} --version: {v}");
        assert!(
            c.exists(&format!("/usr/share/man/man1/{bin}.1.gz")),
            "{bin}: no man page"
        );
    }
    // System users: no login, no home, the gateway in the bluetooth group.
    for user in ["hailan-gateway", "hailan", "hailan-api"] {
        let entry = c.sh(&format!("getent passwd {user}"))?;
        let fields: Vec<&str> = entry.trim().split(':').collect();
        let uid: u32 = fields[2].parse()?;
        assert!(uid < 1000, "{user} is not a system user: {entry}");
        assert_eq!(fields[6], "/usr/sbin/nologin", "{user}: {entry}");
    }
    let groups = c.sh("id -nG hailan-gateway")?;
    assert!(
        groups.split_whitespace().any(|g| g == "bluetooth"),
        "hailan-gateway must be in the bluetooth group: {groups}"
    );
    // Configuration: conffiles, each read by its own service user only.
    for (file, group) in [
        ("gateway.toml", "hailan-gateway"),
        ("ingest.toml", "hailan"),
        ("api.toml", "hailan-api"),
    ] {
        assert_eq!(
            c.stat(&format!("/etc/hailan/{file}"))?,
            format!("root:{group} 640"),
            "{file}"
        );
    }
    let conffiles = c.sh("dpkg-query -W -f='${Conffiles}\\n' hailan-gateway hailan-server")?;
    for file in ["gateway.toml", "ingest.toml", "api.toml"] {
        assert!(
            conffiles.contains(&format!("/etc/hailan/{file} ")),
            "{file} is not a conffile: {conffiles}"
        );
    }
    assert_eq!(
        c.read("/etc/hailan/gateway.toml")?,
        std::fs::read_to_string(repo_root().join("deploy/gateway.example.toml"))?
    );
    // Secrets and state, as the units and the configuration expect them.
    assert_eq!(
        c.stat("/var/lib/hailan-gateway")?,
        "hailan-gateway:hailan-gateway 700"
    );
    assert_eq!(
        c.stat("/etc/hailan/owner.key")?,
        "hailan-gateway:hailan-gateway 600"
    );
    let key = c.read("/etc/hailan/owner.key")?;
    assert!(
        key.len() == 65 && key.trim_end().chars().all(|ch| ch.is_ascii_hexdigit()),
        "owner.key must be 64 hex digits: {key:?}"
    );
    assert_eq!(
        c.stat("/etc/hailan/mqtt.password")?,
        "hailan-gateway:hailan-gateway 600"
    );
    assert_eq!(c.stat("/etc/hailan/api-keys")?, "hailan-api:hailan-api 600");
    assert_eq!(c.stat("/etc/hailan/zk")?, "root:root 755");
    // The API's user reads its configuration and key ring (empty until the
    // operator adds the owners' keys).
    let checked = c.sh(
        "setpriv --reuid hailan-api --regid hailan-api --init-groups \
         hailan-api --config /etc/hailan/api.toml --check-config",
    )?;
    assert!(
        checked.contains("configuration OK") && checked.contains("0 data key(s)"),
        "hailan-api --check-config: {checked}"
    );
    // The service user can use them: its key is accepted, its state opens.
    let init = c.sh(
        "setpriv --reuid hailan-gateway --regid hailan-gateway --init-groups \
         hailan-gateway --config /etc/hailan/gateway.toml init",
    )?;
    assert!(
        init.contains("/etc/hailan/owner.key (exists, kept)"),
        "init as hailan-gateway: {init}"
    );
    assert_eq!(
        c.stat("/var/lib/hailan-gateway/gateway.db")?,
        "hailan-gateway:hailan-gateway 600"
    );
    // The units: the packaged paths, users that exist, not enabled before
    // they are configured, and systemd accepts them.
    for (unit, user, bin) in [
        ("hailan-gateway", "hailan-gateway", "hailan-gateway"),
        ("hailan-ingest", "hailan", "hailan-ingest"),
        ("hailan-api", "hailan-api", "hailan-api"),
    ] {
        let path = format!("/usr/lib/systemd/system/{unit}.service");
        let text = c.read(&path)?;
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .with_context(|| format!("{unit}: no ExecStart"))?;
        assert!(
            exec.starts_with(&format!("/usr/bin/{bin} ")),
            "{unit}: {exec}"
        );
        assert!(text.contains(&format!("\nUser={user}\n")), "{unit}: User=");
        assert!(
            text.contains(&format!("file:///usr/share/doc/{}/", owner_pkg(unit))),
            "{unit}: Documentation="
        );
        assert_eq!(
            c.sh(&format!("systemctl is-enabled {unit} || true"))?
                .trim(),
            "disabled"
        );
        let verify = c.sh(&format!("systemd-analyze verify {path} 2>&1"))?;
        assert!(verify.trim().is_empty(), "{unit}: {verify}");
        // ... and would say so if they were wrong: the hand-installed path
        // (/usr/local/bin) is not in the package.
        let broken = c.sh(&format!(
            "sed 's|^ExecStart=/usr/bin/|ExecStart=/usr/local/bin/|' {path} > /tmp/{unit}.service && \
             systemd-analyze verify /tmp/{unit}.service 2>&1 || true"
        ))?;
        assert!(
            !broken.trim().is_empty(),
            "{unit}: a broken copy passes verify"
        );
    }
    // The broker configuration and ACLs for the server's operator.
    for f in ["hailan.conf", "hailan.acl", "hailan-services.acl"] {
        let inside = c.read(&format!("/usr/share/doc/hailan-server/mosquitto/{f}"))?;
        assert_eq!(
            inside,
            std::fs::read_to_string(repo_root().join("deploy/mosquitto").join(f))?,
            "{f}"
        );
    }
    Ok(())
}

fn owner_pkg(unit: &str) -> &'static str {
    if unit == "hailan-gateway" {
        "hailan-gateway"
    } else {
        "hailan-server"
    }
}

#[test]
fn the_packages_install_upgrade_and_purge_in_a_debian_root() -> Result<()> {
    if !is_root() {
        bail!(
            "the packaging test needs root (chroot, dpkg inside a throw-away root filesystem): run `cargo xtask test` as root"
        );
    }
    let work = tempfile::tempdir()?;
    let started = Instant::now();
    let v1 = package(1, &work.path().join("v1"))?;
    let v2 = package(2, &work.path().join("v2"))?;
    eprintln!(
        "packages (twice, with lintian) in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let c = Chroot::unpack(&base_rootfs()?)?;
    let v1 = c.copy_in(&v1, "/tmp/v1")?;
    let v2 = c.copy_in(&v2, "/tmp/v2")?;

    // Install.
    c.sh(&format!("dpkg -i {}", v1.join(" ")))?;
    check_installed(&c, "0.1.0-1")?;

    // Upgrade, after the operator edited a conffile: the edit is kept (no
    // prompt: the packaged file did not change), and so are the data key and
    // the modes.
    let edited = c
        .read("/etc/hailan/gateway.toml")?
        .replace("gateway_id = \"gw-home-1\"", "gateway_id = \"gw-kept-7\"");
    assert!(
        edited.contains("gw-kept-7"),
        "the example's gateway_id changed"
    );
    std::fs::write(c.path("/etc/hailan/gateway.toml"), &edited)?;
    let key = c.read("/etc/hailan/owner.key")?;
    c.sh(&format!("dpkg -i {}", v2.join(" ")))?;
    assert_eq!(c.read("/etc/hailan/gateway.toml")?, edited);
    assert!(!c.exists("/etc/hailan/gateway.toml.dpkg-dist"));
    assert_eq!(
        c.read("/etc/hailan/owner.key")?,
        key,
        "the data key is kept"
    );
    assert!(
        c.exists("/var/lib/hailan-gateway/gateway.db"),
        "state is kept"
    );
    for pkg in ["hailan-gateway", "hailan-server"] {
        assert_eq!(dpkg_state(&c, pkg)?, "install ok installed 0.1.0-2");
    }
    assert_eq!(
        c.stat("/etc/hailan/gateway.toml")?,
        "root:hailan-gateway 640"
    );
    assert_eq!(c.stat("/etc/hailan/api.toml")?, "root:hailan-api 640");

    // Remove: the program goes, configuration, key and state stay.
    c.sh("dpkg -r hailan-gateway")?;
    assert_eq!(
        dpkg_state(&c, "hailan-gateway")?,
        "deinstall ok config-files 0.1.0-2"
    );
    assert!(!c.exists("/usr/bin/hailan-gateway"));
    assert!(!c.exists("/usr/lib/systemd/system/hailan-gateway.service"));
    assert_eq!(c.read("/etc/hailan/gateway.toml")?, edited);
    assert_eq!(c.read("/etc/hailan/owner.key")?, key);
    assert!(c.exists("/var/lib/hailan-gateway/gateway.db"));

    // Purge: everything the packages made goes; the system users stay
    // (Debian practice: files they owned may remain).
    c.sh("dpkg -P hailan-gateway hailan-server")?;
    for pkg in ["hailan-gateway", "hailan-server"] {
        assert_eq!(dpkg_state(&c, pkg)?, "", "{pkg} is not purged");
    }
    for gone in [
        "/etc/hailan",
        "/var/lib/hailan-gateway",
        "/usr/bin/hailan-ingest",
        "/usr/bin/hailan-api",
        "/usr/lib/systemd/system/hailan-api.service",
        "/usr/share/doc/hailan-server",
    ] {
        assert!(!c.exists(gone), "{gone} is left after purge");
    }
    let helper_state = c.sh("ls -A /var/lib/systemd/deb-systemd-helper-enabled")?;
    assert!(
        !helper_state.contains("hailan"),
        "unit state left: {helper_state}"
    );
    for user in ["hailan-gateway", "hailan", "hailan-api"] {
        c.sh(&format!("getent passwd {user}"))?;
    }
    eprintln!(
        "install, upgrade, remove and purge in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
