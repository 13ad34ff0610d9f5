//! The pairing agent (`org.bluez.Agent1`, capability `KeyboardDisplay`).
//!
//! BlueZ asks an agent whenever pairing needs a person: a passkey the device
//! shows (`RequestPasskey`), a number both sides show (`RequestConfirmation`),
//! a legacy PIN (`RequestPinCode`), a number for the device's keyboard
//! (`DisplayPasskey`/`DisplayPinCode`). Without a registered agent only Just
//! Works pairing can succeed, so a glucose meter that shows a passkey could
//! never be paired.
//!
//! `pair` serves the agent and calls `Device1.Pair` on **one** D-Bus
//! connection: BlueZ uses the agent registered by the caller of `Pair`
//! (doc/org.bluez.Device.rst), so the owner's answers reach exactly this
//! pairing even while the daemon's agent is the default one.
//! [`serve_default`] is the daemon's agent: nobody is at a keyboard, so it
//! refuses every request that needs a person and says which command to run.

use anyhow::Context;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zbus::zvariant::ObjectPath;

/// Where the agent object lives on the gateway's connection.
const AGENT_PATH: &str = "/org/hailan/agent";
/// What the gateway can do: show a number and type one.
const CAPABILITY: &str = "KeyboardDisplay";
/// How long an owner may take to read and type a passkey at a prompt.
const PROMPT_TIME: Duration = Duration::from_secs(120);

/// What the owner gave for this pairing.
#[derive(Clone, Debug, Default)]
pub struct PairingAnswers {
    /// The 6-digit passkey the device shows (passkey entry).
    pub passkey: Option<u32>,
    /// A legacy PIN (1–16 characters).
    pub pin: Option<String>,
    /// Accept a numeric comparison without asking.
    pub confirm: bool,
    /// Ask on the terminal for what was not given (stdin is a TTY).
    pub interactive: bool,
}

impl PairingAnswers {
    /// Nothing given; ask only when standard input is a terminal.
    pub fn from_terminal() -> PairingAnswers {
        PairingAnswers {
            interactive: std::io::stdin().is_terminal(),
            ..PairingAnswers::default()
        }
    }
}

/// Parses a passkey as typed: 1 to 6 digits (`012345` keeps its zero).
pub fn parse_passkey(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not a passkey: the 6 digits the device shows"
        ));
    }
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// Why the agent said no: the pair error names the way forward.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    /// Passkey entry, and no passkey given nor a terminal to ask on.
    NeedsPasskey,
    /// Legacy PIN, and no PIN given nor a terminal.
    NeedsPin,
    /// Numeric comparison, and neither `--confirm` nor a terminal.
    NeedsConfirmation(u32),
    /// The owner answered "no" to the number.
    Declined(u32),
    /// BlueZ cancelled the request (timeout, or the device gave up).
    Canceled,
}

/// Errors an agent returns to BlueZ.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
enum AgentError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Rejected(String),
    Canceled(String),
}

/// The agent object.
struct Agent {
    answers: PairingAnswers,
    /// `Some(command)`: an owner's pairing; `None`: the daemon's agent.
    command: Option<String>,
    refusal: Arc<Mutex<Option<Refusal>>>,
}

impl Agent {
    fn refuse(&self, device: &ObjectPath<'_>, why: Refusal) -> AgentError {
        if self.command.is_none() {
            tracing::warn!(
                device = %device,
                "a device asks to pair ({why:?}) while the daemon runs: nothing is paired without the owner; run `hailan-gateway pair <device>`"
            );
        }
        if let Ok(mut r) = self.refusal.lock() {
            *r = Some(why);
        }
        AgentError::Rejected("Rejected".into())
    }

    fn can_ask(&self) -> bool {
        self.command.is_some() && self.answers.interactive
    }
}

/// Ask the owner one line on the terminal (off the async runtime).
async fn ask(prompt: String) -> Result<String, AgentError> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut err = std::io::stderr();
        let _ = write!(err, "{prompt}");
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| AgentError::Canceled(format!("prompt: {e}")))?
    .map_err(|e| AgentError::Canceled(format!("reading the terminal: {e}")))
}

#[zbus::interface(name = "org.bluez.Agent1", introspection_docs = false)]
impl Agent {
    async fn release(&self) {
        tracing::debug!("BlueZ released the pairing agent");
    }

    async fn request_pin_code(&self, device: ObjectPath<'_>) -> Result<String, AgentError> {
        if let Some(pin) = &self.answers.pin {
            return Ok(pin.clone());
        }
        if !self.can_ask() {
            return Err(self.refuse(&device, Refusal::NeedsPin));
        }
        let pin = ask("PIN code shown by the device or its manual: ".into()).await?;
        Ok(pin.trim().to_string())
    }

    async fn display_pin_code(
        &self,
        device: ObjectPath<'_>,
        pincode: String,
    ) -> Result<(), AgentError> {
        if self.command.is_none() {
            return Err(self.refuse(&device, Refusal::Canceled));
        }
        eprintln!("type the PIN {pincode} on the device ({device})");
        Ok(())
    }

    async fn request_passkey(&self, device: ObjectPath<'_>) -> Result<u32, AgentError> {
        if let Some(p) = self.answers.passkey {
            return Ok(p);
        }
        if !self.can_ask() {
            return Err(self.refuse(&device, Refusal::NeedsPasskey));
        }
        loop {
            let line = ask("passkey shown on the device (6 digits): ".into()).await?;
            match parse_passkey(&line) {
                Ok(p) => return Ok(p),
                Err(e) => eprintln!("{e}"),
            }
        }
    }

    async fn display_passkey(
        &self,
        device: ObjectPath<'_>,
        passkey: u32,
        entered: u16,
    ) -> Result<(), AgentError> {
        if self.command.is_none() {
            return Err(self.refuse(&device, Refusal::Canceled));
        }
        if entered == 0 {
            eprintln!("type the passkey {passkey:06} on the device ({device})");
        }
        Ok(())
    }

    async fn request_confirmation(
        &self,
        device: ObjectPath<'_>,
        passkey: u32,
    ) -> Result<(), AgentError> {
        if self.answers.confirm {
            eprintln!("accepting {passkey:06} without comparing it (--confirm)");
            return Ok(());
        }
        if !self.can_ask() {
            return Err(self.refuse(&device, Refusal::NeedsConfirmation(passkey)));
        }
        let line = ask(format!("does the device show {passkey:06}? [y/N] ")).await?;
        if matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
            Ok(())
        } else {
            Err(self.refuse(&device, Refusal::Declined(passkey)))
        }
    }

    async fn request_authorization(&self, device: ObjectPath<'_>) -> Result<(), AgentError> {
        // Just Works pairing the owner started is authorised by starting it;
        // one a device starts by itself is not.
        if self.command.is_some() {
            Ok(())
        } else {
            Err(self.refuse(&device, Refusal::Canceled))
        }
    }

    async fn authorize_service(&self, _device: ObjectPath<'_>, _uuid: String) {
        // Services of a bonded device: the gateway only talks to devices the
        // owner paired.
    }

    async fn cancel(&self) {
        if let Ok(mut r) = self.refusal.lock()
            && r.is_none()
        {
            *r = Some(Refusal::Canceled);
        }
        if self.command.is_some() {
            eprintln!("BlueZ cancelled the pairing request");
        }
    }
}

async fn call(
    conn: &zbus::Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> zbus::Result<()> {
    conn.call_method(Some("org.bluez"), path, Some(iface), method, body)
        .await
        .map(drop)
}

async fn register(conn: &zbus::Connection, agent: Agent) -> anyhow::Result<()> {
    conn.object_server()
        .at(AGENT_PATH, agent)
        .await
        .context("serving the pairing agent")?;
    let path = ObjectPath::try_from(AGENT_PATH).context("agent path")?;
    call(
        conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RegisterAgent",
        &(path, CAPABILITY),
    )
    .await
    .context("registering the pairing agent with BlueZ (AgentManager1.RegisterAgent)")
}

/// Pair `device_path` (`/org/bluez/hci0/dev_…`) with `Device1.Pair`, with our
/// agent answering from `answers`. `who` and `command` name the device and
/// the command that pairs it in errors. "Already paired" is success.
pub(crate) async fn pair(
    device_path: &str,
    who: &str,
    command: &str,
    answers: &PairingAnswers,
    timeout: Duration,
) -> anyhow::Result<()> {
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system D-Bus (BlueZ) for pairing")?;
    let refusal = Arc::new(Mutex::new(None));
    register(
        &conn,
        Agent {
            answers: answers.clone(),
            command: Some(command.to_string()),
            refusal: refusal.clone(),
        },
    )
    .await?;
    let timeout = if answers.interactive {
        timeout + PROMPT_TIME
    } else {
        timeout
    };
    let r = tokio::time::timeout(
        timeout,
        call(&conn, device_path, "org.bluez.Device1", "Pair", &()),
    )
    .await;
    if r.is_err() {
        let _ = call(
            &conn,
            device_path,
            "org.bluez.Device1",
            "CancelPairing",
            &(),
        )
        .await;
    }
    if let Ok(path) = ObjectPath::try_from(AGENT_PATH) {
        let _ = call(
            &conn,
            "/org/bluez",
            "org.bluez.AgentManager1",
            "UnregisterAgent",
            &(path,),
        )
        .await;
    }
    let refused = refusal.lock().ok().and_then(|r| r.clone());
    match r {
        Err(_) => anyhow::bail!(
            "pairing {who}: no answer within {timeout:?}: put the device in pairing mode and run `{command}` again"
        ),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let (name, msg) = match &e {
                zbus::Error::MethodError(name, msg, _) => {
                    (name.to_string(), msg.clone().unwrap_or_default())
                }
                other => (String::new(), other.to_string()),
            };
            if name == "org.bluez.Error.AlreadyExists" || msg.contains("Already Paired") {
                tracing::debug!(device = %who, "already bonded");
                return Ok(());
            }
            Err(anyhow::anyhow!(pair_error(
                who,
                command,
                &name,
                &msg,
                refused.as_ref()
            )))
        }
    }
}

/// One line saying why pairing failed and what to do (nothing was stored).
fn pair_error(
    who: &str,
    command: &str,
    name: &str,
    msg: &str,
    refused: Option<&Refusal>,
) -> String {
    let short = name.strip_prefix("org.bluez.Error.").unwrap_or(name);
    match refused {
        Some(Refusal::NeedsPasskey) => {
            return format!(
                "pairing {who}: the device shows a passkey to type; run `{command}` on a terminal and type the 6 digits on its screen (most devices show a new one each time), or `{command} --passkey NNNNNN` if its passkey is fixed (printed on it or in its manual)"
            );
        }
        Some(Refusal::NeedsPin) => {
            return format!(
                "pairing {who}: the device asks for a PIN; run `{command} --pin PIN` with the PIN from its screen or manual"
            );
        }
        Some(Refusal::NeedsConfirmation(n)) => {
            return format!(
                "pairing {who}: the device asks to compare the number {n:06} (a new one each attempt); run `{command}` on a terminal to compare it, or `{command} --confirm` to accept it unseen (no protection against an impostor in range, as Just Works)"
            );
        }
        Some(Refusal::Declined(n)) => {
            return format!(
                "pairing {who}: the number {n:06} was refused ({short}); nothing was paired"
            );
        }
        Some(Refusal::Canceled) | None => {}
    }
    let cause = match short {
        "AuthenticationFailed" => "wrong passkey or PIN, or the device refused the keys",
        "AuthenticationCanceled" => "the pairing was cancelled",
        "AuthenticationRejected" => "the device or the agent declined",
        "AuthenticationTimeout" => {
            "the device did not answer in time: put it in pairing mode and try again"
        }
        "ConnectionAttemptFailed" => "the device could not be reached",
        _ => "BlueZ refused",
    };
    let said = if msg.is_empty() || msg == short {
        String::new()
    } else {
        format!(": {msg}")
    };
    format!(
        "pairing {who} failed: {short} ({cause}){said}; nothing was stored, run `{command}` to try again"
    )
}

/// The daemon's agent: registered as BlueZ's default agent so a device that
/// asks to pair by itself (a lost bond) is refused, logged, and left to the
/// owner. Keep the returned connection for as long as the agent should live.
pub async fn serve_default() -> anyhow::Result<zbus::Connection> {
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system D-Bus (BlueZ) for the pairing agent")?;
    register(
        &conn,
        Agent {
            answers: PairingAnswers::default(),
            command: None,
            refusal: Arc::new(Mutex::new(None)),
        },
    )
    .await?;
    let path = ObjectPath::try_from(AGENT_PATH).context("agent path")?;
    call(
        &conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RequestDefaultAgent",
        &(path,),
    )
    .await
    .context("making the pairing agent BlueZ's default (AgentManager1.RequestDefaultAgent)")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passkeys_are_up_to_six_digits_and_keep_leading_zeros() {
        assert_eq!(parse_passkey("012345"), Ok(12345));
        assert_eq!(parse_passkey(" 999999\n"), Ok(999_999));
        for bad in ["", "1234567", "12a456", "-1", "12 34"] {
            assert!(parse_passkey(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_passkey_names_the_command_with_the_flag() {
        let e = pair_error(
            "glucose0",
            "hailan-gateway pair glucose0",
            "org.bluez.Error.AuthenticationRejected",
            "",
            Some(&Refusal::NeedsPasskey),
        );
        assert!(
            e.contains("`hailan-gateway pair glucose0 --passkey NNNNNN`"),
            "{e}"
        );
        let e = pair_error(
            "bp0",
            "hailan-gateway pair bp0",
            "org.bluez.Error.AuthenticationRejected",
            "",
            Some(&Refusal::NeedsConfirmation(42)),
        );
        assert!(e.contains("000042") && e.contains("--confirm"), "{e}");
    }

    #[test]
    fn each_bluez_failure_is_named_with_its_cause() {
        for (name, cause) in [
            ("AuthenticationFailed", "wrong passkey"),
            ("AuthenticationCanceled", "cancelled"),
            ("AuthenticationRejected", "declined"),
            ("AuthenticationTimeout", "pairing mode"),
        ] {
            let e = pair_error(
                "g",
                "hailan-gateway pair g",
                &format!("org.bluez.Error.{name}"),
                "",
                None,
            );
            assert!(
                e.contains(name) && e.contains(cause) && !e.contains('\n'),
                "{e}"
            );
        }
    }
}
