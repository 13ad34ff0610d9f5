//! Helpers for the clinician API tests: the `hailan-api` process
//! (connected as a login that is only a member of `hailan_api`), key rings,
//! users with tokens, and HTTP with a bearer token.

use crate::settings::log_note;
use crate::{HasUrl, free_port};
use anyhow::{Context, Result};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Executor};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The API's login role in tests: `LOGIN IN ROLE hailan_api`, nothing else.
pub const API_LOGIN: &str = "hailan_api_login";
const API_PASSWORD: &str = "hailan-api-test";

/// Make sure the API's login role exists in `pool`'s cluster (roles are
/// cluster-wide; a lost creation race with a parallel test is fine).
pub async fn ensure_api_login(pool: &PgPool) -> Result<()> {
    pool.execute(AssertSqlSafe(format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{API_LOGIN}') THEN
             BEGIN
               CREATE ROLE {API_LOGIN} LOGIN PASSWORD '{API_PASSWORD}' IN ROLE hailan_api;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END;
           END IF;
         END $$"
    )))
    .await
    .context("creating the API's login role")?;
    Ok(())
}

/// `url` with the API's login as user.
pub fn as_api_login(url: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("URL without scheme")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{API_LOGIN}:{API_PASSWORD}@{host}"))
}

/// A key ring file (mode 0600) with the test data keys: `owner-key-1`
/// (`TestDevice`) and `owner-key-test` (the gateway tests).
pub fn write_key_ring(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("api-keys");
    std::fs::write(
        &path,
        format!(
            "# test data keys\nowner-key-1 = {}\n{} = {}\n",
            hex::encode([7u8; 32]),
            crate::gateway::TEST_DATA_KEY_ID,
            hex::encode(crate::gateway::TEST_DATA_KEY)
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// A user with an API token.
pub struct User {
    /// `users.id`: the id the RLS policies and care grants name.
    pub id: uuid::Uuid,
    /// The user's DID (`did:hailan:test:<random>`), unique per test user.
    pub did: String,
    /// A bearer token (`hl_<64 hex>`) the API accepts for one day.
    pub token: String,
}

/// Create a user of `kind` with a 1-day token.
pub async fn user(pool: &PgPool, kind: &str, name: &str) -> Result<User> {
    let did = format!("did:hailan:test:{}", uuid::Uuid::new_v4().simple());
    let id = hailan_ingest::admin::add_user(pool, &did, kind, Some(name)).await?;
    let token = hailan_ingest::admin::issue_token(pool, &did, 1, Some("test")).await?;
    Ok(User { id, did, token })
}

/// How a starting API process ended its wait.
enum Ready {
    Yes,
    /// Another process bound the port first.
    PortTaken,
}

/// A running `hailan-api`; killed on drop.
pub struct ApiProcess {
    /// The `hailan-api` child process.
    pub child: std::process::Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Its stdout and stderr (`api-<port>.log` in the log directory); the
    /// last lines are printed on drop.
    pub log: PathBuf,
}

impl ApiProcess {
    /// Start the API against `db` (as the API login), reading from
    /// `read_url` when given, with `key_ring` and the zk keys in `zk_dir`.
    pub async fn start(
        db: &impl HasUrl,
        read_url: Option<&str>,
        key_ring: &Path,
        zk_dir: &Path,
        log_dir: &Path,
    ) -> Result<ApiProcess> {
        Self::start_with_env(db, read_url, key_ring, zk_dir, log_dir, &[]).await
    }

    /// Like [`ApiProcess::start`], with more environment (`HAILAN_API__API__…`).
    pub async fn start_with_env(
        db: &impl HasUrl,
        read_url: Option<&str>,
        key_ring: &Path,
        zk_dir: &Path,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<ApiProcess> {
        // The port was free a moment ago; another test's process may take it
        // before ours binds it. Ready means *our* process says it listens
        // (a 200 from /healthz alone could be another test's API), and a
        // port taken meanwhile is tried again with another.
        let binary = crate::gateway::workspace_binary("hailan-api")?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port()?;
            let log = log_dir.join(format!("api-{port}.log"));
            let out = std::fs::File::create(&log)?;
            let err = out.try_clone()?;
            let mut cmd = std::process::Command::new(&binary);
            cmd.env("DATABASE_URL", as_api_login(db.url())?)
                .env("HAILAN_API__API__LISTEN", format!("127.0.0.1:{port}"))
                .env("HAILAN_API__API__KEY_RING", key_ring)
                .env("HAILAN_API__ZK__KEYS_DIR", zk_dir)
                .env_remove("HAILAN_API_CONFIG")
                .envs(env.iter().copied())
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            if let Some(r) = read_url {
                cmd.env("HAILAN_API__API__READ_DATABASE_URL", as_api_login(r)?);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut p = ApiProcess { child, port, log };
            match p.wait_ready().await? {
                Ready::Yes => return Ok(p),
                Ready::PortTaken if attempts < 5 => continue,
                Ready::PortTaken => {
                    anyhow::bail!("no free port for the API after {attempts} attempts")
                }
            }
        }
    }

    /// Wait until this process logs that it listens and answers `/healthz`.
    async fn wait_ready(&mut self) -> Result<Ready> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log_text();
                if log.contains("Address already in use") {
                    return Ok(Ready::PortTaken);
                }
                anyhow::bail!("hailan-api exited ({status}):\n{log}");
            }
            if self.log_text().contains("clinician API listening")
                && let Ok((200, _)) = crate::http_get(self.port, "/healthz").await
            {
                return Ok(Ready::Yes);
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                anyhow::bail!("the API did not come up in 30 s:\n{}", self.log_text());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Everything the API has logged so far (empty if the log is unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET with a bearer token; (status, body).
    pub async fn get(&self, token: &str, path: &str) -> Result<(u16, String)> {
        http_get_auth(self.port, path, Some(token)).await
    }

    /// `method` with a bearer token and a JSON body; (status, body).
    pub async fn send(
        &self,
        method: &str,
        token: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let a = http_request(self.port, method, path, Some(token), body).await?;
        Ok((a.code, a.body))
    }

    /// GET with a bearer token, expecting 200 and JSON.
    pub async fn json(&self, token: &str, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get(token, path).await?;
        anyhow::ensure!(code == 200, "GET {path}: {code} {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        log_note(&format!("--- last lines of {} ---", self.log.display()));
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0) with an optional bearer token.
pub async fn http_get_auth(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let a = http_get_answer(port, path, token).await?;
    Ok((a.code, a.body))
}

/// An HTTP answer: status, headers (names in lower case), body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub code: u16,
    /// Header (name in lower case, value trimmed) pairs, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Like [`http_get_auth`], with the answer's headers.
pub async fn http_get_answer(port: u16, path: &str, token: Option<&str>) -> Result<Answer> {
    http_request(port, "GET", path, token, None).await
}

/// One HTTP/1.0 request (`body`: JSON); the answer with its headers.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}{content}\r\n{}",
            body.unwrap_or("")
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let buf = String::from_utf8(buf).context("response is not UTF-8")?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {buf:?}"))?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        code,
        headers,
        body: body.to_owned(),
    })
}

/// A hot standby of a [`crate::PrivatePostgres`] (`pg_basebackup -R`, its own
/// port), streaming from it. Stopped on drop.
pub struct Standby {
    /// The temporary directory holding the standby's data directory
    /// (`data`) and its sockets; deleted on drop.
    pub dir: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// `postgres://hailan:hailan@127.0.0.1:<port>/hailan`: the primary's
    /// database, read-only until [`Standby::promote`].
    pub url: String,
}

impl HasUrl for Standby {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Standby {
    /// Base-backup `primary` and start it as a streaming hot standby.
    pub async fn start(primary: &crate::PrivatePostgres) -> Result<Standby> {
        Self::start_named(primary, None).await
    }

    /// Like [`Standby::start`]; with `name`, the standby connects as
    /// `application_name = name`, which is how the primary's
    /// `synchronous_standby_names` refers to it
    /// ([`crate::ops::standby_conf`]).
    pub async fn start_named(
        primary: &crate::PrivatePostgres,
        name: Option<&str>,
    ) -> Result<Standby> {
        let dir = tempfile::Builder::new()
            .prefix("hailan-standby-")
            .tempdir()?;
        std::process::Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status()?;
        let data = dir.path().join("data");
        let mut backup = crate::postgres::as_postgres("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        crate::process::checked(backup, "pg_basebackup")?;
        if let Some(name) = name {
            // After the primary_conninfo `-R` wrote there: the last one wins.
            crate::append_to(
                &data,
                "postgresql.auto.conf",
                &crate::ops::standby_conf(primary.port, name),
            )?;
        }
        let port = free_port()?;
        let s = Standby {
            url: format!("postgres://hailan:hailan@127.0.0.1:{port}/hailan"),
            dir,
            port,
        };
        s.pg_ctl(&["start", "-w", "-t", "30"])?;
        Ok(s)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        crate::postgres::pg_ctl(self.dir.path(), self.port, args)
    }

    /// Promote it to a read-write primary (`pg_ctl promote`, waiting until done).
    pub fn promote(&self) -> Result<()> {
        self.pg_ctl(&["promote", "-w", "-t", "30"])
    }

    /// Run `sql` (one text column, one row) on the standby as the
    /// superuser, e.g. to pause or resume replay.
    pub async fn superuser(&self, sql: &str) -> Result<String> {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.port
        ))
        .await?;
        let v: String = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut c)
            .await?;
        c.close().await?;
        Ok(v)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
    }
}

/// What the outside FHIR validator (`tests/fhir-validator`: @medplum/core
/// reading HL7's R4 StructureDefinitions, vital-signs profiles included,
/// installed by `cargo xtask services`) says of `resource` (a resource or a
/// Bundle): `Ok(errors)`, empty when it is valid. Warnings are not errors
/// (hailan's own `urn:hailan:` extensions have no published definition).
pub fn fhir_profile_errors(resource: &str, dir: &Path) -> Result<Vec<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-validator/validate.mjs");
    let file = dir.join(format!("fhir-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, resource)?;
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg("--quiet")
        .arg(&file)
        .output()
        .context("running node (cargo xtask services installs the FHIR validator)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) | Some(1) => Ok(text
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_owned)
            .collect()),
        _ => anyhow::bail!(
            "the FHIR validator could not run ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Validate `bundle` with the `fhir.resources` package (FHIR R4B models,
/// whose Observation and Bundle are R4's) from the set-up's Python.
pub fn validate_fhir(bundle: &str, dir: &Path) -> Result<String> {
    let python = crate::setting("HAILAN_PYTHON").unwrap_or_else(|| "python3".into());
    let file = dir.join("bundle.json");
    std::fs::write(&file, bundle)?;
    let script = r#"
import json, sys
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
text = open(sys.argv[1]).read()
b = Bundle.model_validate_json(text)
assert b.type == "searchset", b.type
n = 0
for e in b.entry or []:
    o = Observation.model_validate(e.resource.model_dump())
    assert o.category[0].coding[0].code == "vital-signs"
    n += 1
print("valid", n)
"#;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .context("running python (cargo xtask services installs fhir.resources)")?;
    anyhow::ensure!(
        out.status.success(),
        "FHIR validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
