//! Test and CI harness: a private `dbus-daemon`, the simulator as a child
//! process, and per-test bus isolation.
//!
//! `DBUS_SYSTEM_BUS_ADDRESS` is read once per process by libdbus (btleplug →
//! bluez-async → dbus), and setting it in-process needs `unsafe` (forbidden in
//! this workspace). So:
//! - a gateway test spawns the gateway as a child with the variable set
//!   ([`SimHarness::start`] gives the address and the device list), or
//! - a test whose own code is the BLE client wraps its body in [`isolated`]:
//!   the test re-runs itself as a child process with the variable pointing at
//!   a fresh private bus. That makes every test its own process under both
//!   `cargo nextest` and `cargo test` (which runs tests as threads).
//!
//! Everything started here is killed and reaped on drop, and only that.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable marking the child run of an [`isolated`] test.
pub const ISOLATED_ENV: &str = "HAILAN_SIM_ISOLATED_TEST";

/// A private `dbus-daemon` in a temporary directory. Killed on drop.
pub struct PrivateBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Start `dbus-daemon --session --nofork --address=unix:path=$DIR/bus.sock --print-address`
    /// and wait until it prints its address (it is listening then).
    ///
    /// `--nofork` rather than `--fork --print-pid`: the daemon stays our
    /// child, so we can kill *and reap* exactly it, with no pid-reuse race.
    pub fn start() -> anyhow::Result<PrivateBus> {
        let dir = tempfile::Builder::new()
            .prefix("hailan-bus-")
            .tempdir()
            .context("creating a directory for the private bus")?;
        let sock = dir.path().join("bus.sock");
        let mut child = Command::new("dbus-daemon")
            .arg("--session")
            .arg("--nofork")
            .arg("--nopidfile")
            .arg(format!("--address=unix:path={}", sock.display()))
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dbus-daemon (install the `dbus` package)")?;
        let stdout = child.stdout.take().context("dbus-daemon stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut bus = PrivateBus {
            child,
            address: String::new(),
            _dir: dir,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if !line.trim().is_empty() => {
                // The printed address carries a guid; the plain path is what
                // clients need and is stable.
                bus.address = format!("unix:path={}", sock.display());
                tracing::debug!("private bus at {} ({})", bus.address, line.trim());
                Ok(bus)
            }
            _ => bail!("dbus-daemon did not print its address within 10 s"),
        }
    }

    /// The bus address (`unix:path=…`), for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One device line as `hailan-sim run` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDeviceLine {
    /// `hr0`.
    pub name: String,
    /// `hr`.
    pub kind: String,
    /// `F0:4A:1A:01:00:00`.
    pub address: String,
    /// D-Bus object path.
    pub path: String,
    /// `just-works`, `passkey 123456`, `numeric 123456`, `pin 0000`.
    pub pairing: String,
}

impl SimDeviceLine {
    /// The flags of `hailan-gateway pair` that answer this device's pairing
    /// (`--passkey N`, `--confirm`, `--pin P`; none for Just Works).
    pub fn pair_flags(&self) -> Vec<String> {
        match self.pairing.split_once(' ') {
            Some(("passkey", n)) => vec!["--passkey".into(), n.into()],
            Some(("numeric", _)) => vec!["--confirm".into()],
            Some(("pin", p)) => vec!["--pin".into(), p.into()],
            _ => vec![],
        }
    }
}

/// The `hailan-sim` binary running as a child process. Killed on drop.
pub struct SimProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<Option<String>>,
    /// The devices it announced.
    pub devices: Vec<SimDeviceLine>,
}

impl SimProcess {
    /// Where `hailan-sim` is: `$HAILAN_SIM_BIN`, else next to (or one level
    /// above) the current executable — `target/<profile>/` for test binaries
    /// in `target/<profile>/deps/`.
    pub fn locate_binary() -> anyhow::Result<PathBuf> {
        if let Ok(p) = std::env::var("HAILAN_SIM_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().context("current_exe")?;
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let cand = d.join("hailan-sim");
            if cand.is_file() {
                return Ok(cand);
            }
            dir = d.parent();
        }
        bail!(
            "hailan-sim binary not found near {} (build it: cargo build -p hailan-firmware-sim, or set HAILAN_SIM_BIN)",
            exe.display()
        )
    }

    /// Spawn `bin run --bus ADDRESS ARGS…` and wait for its `READY` line.
    pub fn spawn(bin: &Path, bus_address: &str, args: &[&str]) -> anyhow::Result<SimProcess> {
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--bus")
            .arg(bus_address)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel::<Option<String>>();
        std::thread::spawn(move || {
            // Protocol lines (DEVICE/BUS/READY, then OK/ERR replies to
            // commands) go to the channel; anything else is echoed.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let protocol = ["OK ", "ERR ", "DEVICE ", "PAIRING ", "BUS "]
                    .iter()
                    .any(|p| line.starts_with(p))
                    || line.trim() == "READY";
                if !protocol {
                    println!("[hailan-sim] {line}");
                    continue;
                }
                if tx.send(Some(line)).is_err() {
                    break;
                }
            }
            let _ = tx.send(None);
        });
        let mut devices = vec![];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    match f.as_slice() {
                        ["READY"] => {
                            return Ok(SimProcess {
                                child,
                                stdin,
                                replies: rx,
                                devices,
                            });
                        }
                        ["DEVICE", name, kind, address, path] => devices.push(SimDeviceLine {
                            name: name.to_string(),
                            kind: kind.to_string(),
                            address: address.to_string(),
                            path: path.to_string(),
                            pairing: "just-works".into(),
                        }),
                        ["PAIRING", name, method @ ..] => {
                            if let Some(d) = devices.iter_mut().find(|d| d.name == *name) {
                                d.pairing = method.join(" ");
                            }
                        }
                        _ => {}
                    }
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("hailan-sim exited before READY")
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("hailan-sim not READY within 20 s")
                }
            }
        }
    }

    /// Send a control command (`fault drop=hr0`, `measure bp0`) to its stdin
    /// and wait for the reply: when this returns Ok a fault has been applied
    /// (a `measure` has been requested). An `ERR` reply is an error.
    pub fn command(&mut self, line: &str) -> anyhow::Result<()> {
        self.ask(line).map(drop)
    }

    /// Send one stdin command and return its answer (after `OK `).
    pub fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().context("simulator stdin closed")?;
        writeln!(stdin, "{line}").context("writing to simulator stdin")?;
        stdin.flush().context("flushing simulator stdin")?;
        match self.replies.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(reply)) => match reply.strip_prefix("OK ") {
                Some(answer) => Ok(answer.to_owned()),
                None => bail!("hailan-sim: {reply}"),
            },
            Ok(None) => bail!("hailan-sim exited"),
            Err(_) => bail!("hailan-sim did not answer {line:?} within 10 s"),
        }
    }

    /// `links`: links up now, and the most ever up at once.
    pub fn links(&mut self) -> anyhow::Result<(usize, usize)> {
        let answer = self.ask("links")?;
        Ok((field(&answer, "now=")?, field(&answer, "peak=")?))
    }

    /// `linked NAME`: the adapter (`hci1`) holding the device's link, if
    /// it is connected.
    pub fn linked(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let answer = self.ask(&format!("linked {name}"))?;
        let adapter = answer
            .split_whitespace()
            .find_map(|f| f.strip_prefix("adapter="))
            .with_context(|| format!("no adapter= in {answer:?}"))?;
        Ok((adapter != "none").then(|| adapter.to_string()))
    }

    /// `now`: the devices' clock (ms since the epoch), and whether it is
    /// real time (no replay, or the replay caught up).
    pub fn now(&mut self) -> anyhow::Result<(i64, bool)> {
        let answer = self.ask("now")?;
        Ok((field(&answer, "unix_ms=")?, field(&answer, "caught_up=")?))
    }

    /// `stored NAME`: the records the device holds for RACP (a meter's
    /// glucose records, an oximeter's stored spot-checks).
    pub fn stored(&mut self, name: &str) -> anyhow::Result<usize> {
        let answer = self.ask(&format!("stored {name}"))?;
        field(&answer, "records=")
    }

    /// `clock NAME`: how far the device's clock is ahead of the true time
    /// (ms), and how many times a client set it.
    pub fn clock(&mut self, name: &str) -> anyhow::Result<(i64, u32)> {
        let answer = self.ask(&format!("clock {name}"))?;
        Ok((field(&answer, "offset_ms=")?, field(&answer, "sets=")?))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private bus with the simulator binary on it: what a gateway test needs.
/// Spawn the gateway with `DBUS_SYSTEM_BUS_ADDRESS` = [`SimHarness::bus_address`].
/// Field order matters: the simulator is killed before its bus.
pub struct SimHarness {
    /// The simulator process.
    pub sim: SimProcess,
    /// Its bus.
    pub bus: PrivateBus,
}

impl SimHarness {
    /// Start a private bus and `hailan-sim run ARGS…` on it (e.g.
    /// `["--devices", "hr=2,bp=1", "--seed", "7", "--ground-truth", path]`).
    pub fn start(args: &[&str]) -> anyhow::Result<SimHarness> {
        let bus = PrivateBus::start()?;
        let bin = SimProcess::locate_binary()?;
        let sim = SimProcess::spawn(&bin, bus.address(), args)?;
        Ok(SimHarness { sim, bus })
    }

    /// The address for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        self.bus.address()
    }
}

/// Run an async test body in its own process with its own private bus.
///
/// Called from a `#[test] fn NAME`, with `test_name` = the name libtest
/// knows (`NAME`, or `module::NAME`). In the parent run it starts a
/// [`PrivateBus`], re-runs this test binary for exactly that test with
/// `DBUS_SYSTEM_BUS_ADDRESS` set, waits (up to `timeout`), and fails if the
/// child failed. In the child run it executes `body(bus_address)` on a tokio
/// runtime.
pub fn isolated<F, Fut>(test_name: &str, timeout: Duration, body: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if std::env::var(ISOLATED_ENV).ok().as_deref() == Some(test_name) {
        let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .context("isolated child without DBUS_SYSTEM_BUS_ADDRESS")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        return rt.block_on(body(bus));
    }
    let bus = PrivateBus::start()?;
    let exe = std::env::current_exe().context("current_exe")?;
    let mut child = Command::new(&exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(ISOLATED_ENV, test_name)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("re-running {} for {test_name}", exe.display()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        // A watchdog on the child's exit, not a wait for a test event.
        if let Some(s) = child.try_wait().context("waiting for test child")? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{test_name}: timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(bus);
    if !status.success() {
        bail!("{test_name}: child run failed ({status})");
    }
    Ok(())
}

/// The value of `name=` in a one-line answer.
fn field<T: std::str::FromStr>(answer: &str, name: &str) -> anyhow::Result<T> {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .with_context(|| format!("no {name} in {answer:?}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} in {answer:?} is not a number"))
}
