//! Running commands with errors that say which command failed and what it printed.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where local service state lives: `<repo>/.hailan` (git-ignored).
pub fn state_dir() -> PathBuf {
    repo_root().join(".hailan")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // /proc/self/status "Uid:\treal\teffective…"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command to run.
pub struct Cmd {
    inner: Command,
    quiet: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            inner: Command::new(program),
            quiet: false,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.inner.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.inner.env(k, v);
        self
    }

    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        self.inner.envs(vars.iter().map(|(k, v)| (k, v)));
        self
    }

    pub fn current_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.inner.current_dir(d.into());
        self
    }

    /// Capture output; print it only if the command fails.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    fn describe(&self) -> String {
        let mut s = self.inner.get_program().to_string_lossy().into_owned();
        for a in self.inner.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Run, inheriting stdout/stderr unless quiet; fail on a non-zero exit.
    pub fn run(mut self) -> Result<()> {
        if self.quiet {
            return self.output().map(drop);
        }
        let what = self.describe();
        let status = self
            .inner
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run `{what}`"))?;
        if !status.success() {
            bail!("`{what}` failed ({status})");
        }
        Ok(())
    }

    /// Run, printing stdout as it comes (stderr inherited) and returning it;
    /// fail on a non-zero exit.
    pub fn tee(mut self) -> Result<String> {
        use std::io::{BufRead, Write};
        let what = self.describe();
        let mut child = self
            .inner
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{what}`"))?;
        let mut seen = String::new();
        if let Some(out) = child.stdout.take() {
            for line in std::io::BufReader::new(out).lines() {
                let line = line?;
                println!("{line}");
                std::io::stdout().flush()?;
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("`{what}` failed ({status})");
        }
        Ok(seen)
    }

    /// Run capturing output and return stdout; on a non-zero exit, fail
    /// with everything the command printed.
    pub fn output(mut self) -> Result<String> {
        let what = self.describe();
        let out = self
            .inner
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{what}`"))?;
        if !out.status.success() {
            bail!(
                "`{what}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
