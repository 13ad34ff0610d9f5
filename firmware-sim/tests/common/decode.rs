//! Reading the bytes with the project's decoders (`hailan_proto::gatt`), the
//! same ones the gateway uses.

use anyhow::Context;
use hailan_proto::gatt::{self, Characteristic, Decoded};

/// Decode a characteristic value.
pub fn decode(uuid16: u16, bytes: &[u8]) -> anyhow::Result<Decoded> {
    let c = Characteristic::from_uuid16(uuid16)
        .with_context(|| format!("proto has no codec for {uuid16:04x}"))?;
    Ok(gatt::decode(c, bytes)?)
}

/// The DESIGN §3 fixed-point slots proto makes of a measurement.
pub fn slots(uuid16: u16, bytes: &[u8]) -> anyhow::Result<Vec<u64>> {
    let reading = decode(uuid16, bytes)?
        .to_reading()
        .map_err(|e| anyhow::anyhow!("no reading: {e:?}"))?;
    Ok(reading.slots.into_iter().map(u64::from).collect())
}
