//! The procedures of OPERATIONS.md as the tests run them. The
//! `postgresql.conf` lines, SQL and commands are templates with
//! `{PLACEHOLDERS}`: the tests fill them with temporary paths and ports,
//! OPERATIONS.md shows them filled with [`DOC_VALUES`], and the test
//! `operations_md_quotes_what_the_tests_run` (ingest/tests/operations.rs)
//! fails when the document and these templates drift apart.

use anyhow::{Context, Result};
use std::path::Path;

/// The values OPERATIONS.md fills the templates with.
pub const DOC_VALUES: &[(&str, &str)] = &[
    ("ARCHIVE", "/var/lib/postgresql/wal-archive"),
    ("BACKUP", "/var/backups/hailan/base-2026-12-01"),
    ("DATA", "/var/lib/postgresql/15/restore"),
    ("PRIMARY_HOST", "db1.internal"),
    ("PRIMARY_PORT", "5432"),
    ("REPL_USER", "replicator"),
    ("NAME", "standby1"),
    ("TARGET", "2026-12-01 10:41:59.999999+00"),
];

/// The primary: WAL archiving (the safe form that never overwrites an
/// archived segment) and commit timestamps (so "what was committed before
/// T" can be asked of the primary, as the drill does).
pub const ARCHIVE_CONF: &[&str] = &[
    "wal_level = replica",
    "archive_mode = on",
    "archive_command = 'test ! -f {ARCHIVE}/%f && cp %p {ARCHIVE}/%f'",
    "archive_timeout = 60",
    "track_commit_timestamp = on",
];

/// The base backup, taken while the primary serves (plain format, with the
/// WAL it needs streamed alongside, checkpoint at once).
pub const BASE_BACKUP: &str = "pg_basebackup -h {PRIMARY_HOST} -p {PRIMARY_PORT} -U {REPL_USER} -D {BACKUP} -X stream -c fast";

/// Added to the restored copy's `postgresql.conf` (with an empty
/// `recovery.signal` next to it): replay the archive up to and including
/// the last transaction committed at or before TARGET, then open read-write.
/// Archiving stays off until the operator has decided where the restored
/// server archives (it starts a new timeline).
pub const RESTORE_CONF: &[&str] = &[
    "restore_command = 'cp {ARCHIVE}/%f %p'",
    "recovery_target_time = '{TARGET}'",
    "recovery_target_action = 'promote'",
    "archive_mode = off",
];

/// Restoring: a copy of the base backup becomes the new data directory,
/// told to recover by `recovery.signal` (then [`RESTORE_CONF`] is appended
/// to its `postgresql.conf` and it is started).
pub const RESTORE_STEPS: &[&str] = &["cp -a {BACKUP} {DATA}", "touch {DATA}/recovery.signal"];

/// Run [`RESTORE_STEPS`] from `backup` into `data`.
pub fn restore_steps(backup: &Path, data: &Path) -> Result<()> {
    for step in render_all(
        RESTORE_STEPS,
        &[("BACKUP", path_str(backup)?), ("DATA", path_str(data)?)],
    ) {
        let args: Vec<&str> = step.split_whitespace().collect();
        let (program, rest) = args.split_first().context("empty step")?;
        let mut c = std::process::Command::new(program);
        c.args(rest);
        crate::process::checked(c, &step)?;
    }
    Ok(())
}

/// The standby's connection to the primary, appended to its
/// `postgresql.auto.conf` after the line `pg_basebackup -R` wrote there (the
/// last one wins); `application_name` is the name
/// `synchronous_standby_names` lists.
pub const STANDBY_CONF: &[&str] = &[
    "primary_conninfo = 'host={PRIMARY_HOST} port={PRIMARY_PORT} user={REPL_USER} application_name={NAME}'",
];

/// Run on the primary once the standby streams: from then on a commit
/// returns only after the standby has flushed its WAL.
pub const SYNC_ON_PRIMARY: &[&str] = &[
    "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({NAME})'",
    "ALTER SYSTEM SET synchronous_commit = 'on'",
    "SELECT pg_reload_conf()",
];

/// Fill `{NAME}` placeholders from `vars`.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// [`render`] each line.
pub fn render_all(templates: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
    templates.iter().map(|t| render(t, vars)).collect()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("a temporary path that is not UTF-8")
}

/// [`ARCHIVE_CONF`] archiving into `archive`.
pub fn archive_conf(archive: &Path) -> Result<Vec<String>> {
    Ok(render_all(ARCHIVE_CONF, &[("ARCHIVE", path_str(archive)?)]))
}

/// [`RESTORE_CONF`] from `archive` up to `target`.
pub fn restore_conf(archive: &Path, target: &str) -> Result<Vec<String>> {
    Ok(render_all(
        RESTORE_CONF,
        &[("ARCHIVE", path_str(archive)?), ("TARGET", target)],
    ))
}

/// [`STANDBY_CONF`] for a test standby of the primary on `port` (the test
/// clusters trust the superuser on loopback: it stands in for `replicator`).
pub fn standby_conf(port: u16, name: &str) -> Vec<String> {
    render_all(
        STANDBY_CONF,
        &[
            ("PRIMARY_HOST", "127.0.0.1"),
            ("PRIMARY_PORT", &port.to_string()),
            ("REPL_USER", "postgres"),
            ("NAME", name),
        ],
    )
}

/// [`BASE_BACKUP`] of the test primary on `port` into `backup`, as
/// arguments (the first is the program).
pub fn base_backup_args(port: u16, backup: &Path) -> Result<Vec<String>> {
    Ok(render(
        BASE_BACKUP,
        &[
            ("PRIMARY_HOST", "127.0.0.1"),
            ("PRIMARY_PORT", &port.to_string()),
            ("REPL_USER", "postgres"),
            ("BACKUP", path_str(backup)?),
        ],
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect())
}

/// Run [`BASE_BACKUP`] against the test primary on `port` into `backup`.
pub fn base_backup(port: u16, backup: &Path) -> Result<()> {
    let args = base_backup_args(port, backup)?;
    let (program, rest) = args.split_first().context("empty backup command")?;
    let mut c = crate::postgres::as_postgres(program);
    c.args(rest);
    crate::process::checked(c, "pg_basebackup")
}
