//! A shared device's user slots (User Data Service 0x181C): the owner's
//! `pair <device> --user-index N --consent C` proves the consent code to
//! the device, `--consent C` alone registers a new user slot. Both are a
//! write to the User Control Point (0x2A9F) answered by an indication on
//! it; the bytes come from proto's [`UserControl`].
//!
//! The daemon may hold the device's link meanwhile: a link found up is
//! used and left up, one made here is closed again.

use super::adapter::Radio;
use super::{BleConfig, gatt};
use anyhow::{Context, bail};
use btleplug::api::{Peripheral as _, WriteType};
use futures::StreamExt;
use hailan_proto::gatt::uds::{USER_CONTROL_POINT, USER_DATA_SERVICE, UserControl, response_name};
use tokio::time::Instant;

/// The device's answer to a User Control Point request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserControlAnswer {
    /// 0x01 success … 0x05 user not authorized ([`response_name`]).
    pub value: u8,
    /// The new slot's user index, for a successful Register New User.
    pub user_index: Option<u8>,
}

impl UserControlAnswer {
    /// The answer's name (`Success`, `User Not Authorized` …).
    pub fn name(&self) -> &'static str {
        response_name(self.value)
    }
}

/// See [`super::Ble::user_control`].
pub(crate) async fn user_control(
    radio: &Radio,
    cfg: &BleConfig,
    who: &str,
    request: UserControl,
) -> anyhow::Result<UserControlAnswer> {
    let deadline = Instant::now() + cfg.pair_timeout;
    let p = super::pair::find(radio, who, deadline).await?;
    let was_connected = p.is_connected().await.unwrap_or(false);
    if !was_connected {
        tokio::time::timeout_at(deadline, p.connect())
            .await
            .with_context(|| format!("connecting to {who}: pair timeout"))?
            .with_context(|| format!("connecting to {who}"))?;
    }
    let r = ask(&p, who, request, deadline).await;
    if !was_connected && let Err(e) = p.disconnect().await {
        tracing::warn!(device = %who, "disconnecting after the user control point: {e}");
    }
    r
}

async fn ask(
    p: &btleplug::platform::Peripheral,
    who: &str,
    request: UserControl,
    deadline: Instant,
) -> anyhow::Result<UserControlAnswer> {
    p.discover_services()
        .await
        .with_context(|| format!("discovering services of {who}"))?;
    let Some(c) = gatt::find(p, USER_DATA_SERVICE, USER_CONTROL_POINT) else {
        bail!("{who} has no User Control Point (0x2A9F): it is not a device with user slots");
    };
    let mut notes = p
        .notifications()
        .await
        .with_context(|| format!("opening the notification stream of {who}"))?;
    p.subscribe(&c)
        .await
        .with_context(|| format!("subscribing to the User Control Point of {who}"))?;
    tokio::time::timeout_at(
        deadline,
        p.write(&c, &request.encode(), WriteType::WithResponse),
    )
    .await
    .with_context(|| format!("writing the User Control Point of {who}: pair timeout"))?
    .with_context(|| format!("writing the User Control Point of {who}"))?;
    let answer = async {
        while let Some(n) = notes.next().await {
            if gatt::uuid16(n.uuid.as_u128()) != Some(USER_CONTROL_POINT) {
                continue;
            }
            match UserControl::decode(&n.value) {
                Ok(UserControl::Response {
                    request_op_code,
                    value,
                    user_index,
                }) if request_op_code == request.op_code() => {
                    return Some(UserControlAnswer { value, user_index });
                }
                Ok(other) => {
                    tracing::debug!(device = %who, "user control point: {other:?} ignored")
                }
                Err(e) => {
                    tracing::warn!(device = %who, "user control point: undecodable {:02X?}: {e}", n.value)
                }
            }
        }
        None
    };
    let r = tokio::time::timeout_at(deadline, answer).await;
    if let Err(e) = p.unsubscribe(&c).await {
        tracing::debug!(device = %who, "unsubscribing the user control point: {e}");
    }
    match r {
        Ok(Some(a)) => Ok(a),
        Ok(None) => bail!("{who} went away before answering the User Control Point"),
        Err(_) => bail!("{who} did not answer the User Control Point within the pair timeout"),
    }
}
