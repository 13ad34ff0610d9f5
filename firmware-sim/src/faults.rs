//! Fault injection: what a real BLE stack does to a gateway, on demand.
//!
//! From the library: [`crate::Simulator::inject`]. From the command line:
//! `--faults SPEC[,SPEC…]` where each SPEC is `KIND[=ARG][@AT][+FOR][%EVERY]`
//! (times like `500ms`, `5s`, `2m`; `AT` from simulator start):
//!
//! | spec | effect |
//! |---|---|
//! | `drop=hr0` | drop hr0's connection without warning (`Connected` → false) |
//! | `drop-on-connect=hr0` | hr0's next `Connect` succeeds, but the link drops before its services resolve |
//! | `refuse=bp0+30s` | `Connect` to bp0 fails (`org.bluez.Error.Failed`) for 30 s; `refuse+30s` = every device |
//! | `stall+20s` | discovery stops reporting devices and RSSI while `Discovering` stays true |
//! | `malformed=hr0` | hr0's next measurement notification is cut short |
//! | `out-of-range=temp0` | temp0's next measurement carries an implausible value |
//! | `rssi=hr0:-95` | hr0's RSSI becomes -95 dBm (and stops jittering) |
//! | `battery=hr0:15` | hr0's battery drops to 15 % (read and notified on 0x2A19) |
//! | `power-off+2s` | adapter powers off (rfkill-style: cannot be powered on) for 2 s, then on |
//! | `power-off` / `power-on` | adapter off (a client may power it on again) / on |
//! | `power-off=hci1+60s` | the same for adapter `hci1` (with `--adapters 2` or more; default `hci0`) |
//! | `unplug=hci1` / `plug=hci1` | the adapter is pulled out (its objects vanish) / put back (bonded devices reappear) |
//!
//! `DEVICE` is a name (`hr0`), an address, or `*` (every device): a
//! disconnect storm is `drop=*@5s%2s`.
//!
//! Example: `--faults 'drop=hr0@10s%30s,stall@60s+20s,power-off@120s+3s'`.

use std::time::Duration;

/// One fault, applied now.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Drop the connection of a device without warning.
    Drop {
        /// device name (`hr0`) or address.
        device: String,
    },
    /// The next `count` connects of a device come up (`Connected` → true,
    /// `Connect` returns) and drop before `ServicesResolved`, as a device
    /// walking out of range mid-connection does.
    DropOnConnect {
        /// device name, address or `*`.
        device: String,
        /// how many connects.
        count: u32,
    },
    /// Refuse connects to one device (or all, if `None`) for a while.
    RefuseConnects {
        /// device name or address; `None` = all devices.
        device: Option<String>,
        /// how long.
        duration: Duration,
    },
    /// Stop reporting discoveries (and RSSI) while `Discovering` stays true;
    /// `None` = until [`Fault::ResumeDiscovery`].
    StallDiscovery {
        /// how long.
        duration: Option<Duration>,
    },
    /// End a discovery stall.
    ResumeDiscovery,
    /// The device forgets its bond (a battery change, a factory reset):
    /// BlueZ keeps `Paired = true`, but what needs encryption is refused
    /// until the bond is removed (`Adapter1.RemoveDevice`) and made again.
    BondLost {
        /// device name or address.
        device: String,
    },
    /// The device leaves pairing mode before the next pairing completes:
    /// that `Device1.Pair` fails with `AuthenticationTimeout`.
    PairingModeTimeout {
        /// device name or address.
        device: String,
    },
    /// Make the next `count` measurement notifications of a device malformed.
    Malformed {
        /// device name or address.
        device: String,
        /// how many.
        count: u32,
    },
    /// Make the next `count` measurements of a device implausible.
    OutOfRange {
        /// device name or address.
        device: String,
        /// how many.
        count: u32,
    },
    /// Change the RSSI of a device.
    Rssi {
        /// device name or address.
        device: String,
        /// dBm.
        rssi: i16,
    },
    /// Set a device's battery level (a drained or swapped battery).
    Battery {
        /// device name, address or `*`.
        device: String,
        /// percent.
        percent: u8,
    },
    /// Power the adapter off; with a duration it stays blocked (as rfkill)
    /// and comes back on by itself afterwards.
    PowerOff {
        /// which adapter (`hci1`); `None` = `hci0`.
        adapter: Option<String>,
        /// how long it stays blocked.
        duration: Option<Duration>,
    },
    /// Power the adapter on.
    PowerOn {
        /// which adapter (`hci1`); `None` = `hci0`.
        adapter: Option<String>,
    },
    /// The adapter is pulled out: its links drop and its objects (the
    /// adapter and every device under it) vanish from the bus.
    Unplug {
        /// which adapter (`hci1`).
        adapter: String,
    },
    /// The adapter is put back: powered, not discovering, and the devices
    /// bonded through it back (BlueZ loads bonds from its storage).
    Plug {
        /// which adapter (`hci1`).
        adapter: String,
    },
    /// Set a device's clock `offset_s` seconds ahead of the true time
    /// (negative: behind), drifting `drift_ppm` parts per million.
    Clock {
        /// device name, address or `*`.
        device: String,
        /// seconds ahead of the true time.
        offset_s: i64,
        /// drift, parts per million (positive: runs fast).
        drift_ppm: f64,
    },
    /// The device's clock goes back to its default date
    /// (2000-01-01T00:00:00), as after a battery change.
    ClockReset {
        /// device name, address or `*`.
        device: String,
    },
    /// The shared device hands a user's queued measurements only to a link
    /// where that user consented (User Control Point), one user at a time.
    ConsentGated {
        /// device name, address or `*`.
        device: String,
    },
}

/// A fault on a schedule (from the command line).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledFault {
    /// The fault.
    pub fault: Fault,
    /// When, from simulator start.
    pub at: Duration,
    /// Repeat period, if any.
    pub every: Option<Duration>,
}

/// Parse a duration like `250ms`, `5s`, `2m`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use 500ms, 5s, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parse a comma-separated list of fault specs.
pub fn parse_faults(spec: &str) -> Result<Vec<ScheduledFault>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(item: &str) -> Result<ScheduledFault, String> {
    // split off %EVERY, +FOR, @AT (in any order after the head)
    let mut head = item;
    let mut every = None;
    let mut duration = None;
    let mut at = Duration::ZERO;
    while let Some(pos) = head.rfind(['%', '+', '@']) {
        let (h, tail) = head.split_at(pos);
        let val = parse_duration(&tail[1..]).map_err(|e| format!("{item}: {e}"))?;
        match &tail[..1] {
            "%" => every = Some(val),
            "+" => duration = Some(val),
            _ => at = val,
        }
        head = h;
    }
    let (kind, arg) = match head.split_once('=') {
        Some((k, a)) => (k, Some(a.to_string())),
        None => (head, None),
    };
    let need = |what: &str| arg.clone().ok_or(format!("{item}: {kind} needs ={what}"));
    let fault = match kind {
        "drop" => Fault::Drop {
            device: need("DEVICE")?,
        },
        "drop-on-connect" => Fault::DropOnConnect {
            device: need("DEVICE")?,
            count: 1,
        },
        "refuse" => Fault::RefuseConnects {
            device: arg.clone(),
            duration: duration.ok_or(format!("{item}: refuse needs +DURATION"))?,
        },
        "stall" => Fault::StallDiscovery { duration },
        "resume" => Fault::ResumeDiscovery,
        "bond-lost" => Fault::BondLost {
            device: need("DEVICE")?,
        },
        "pairing-mode-timeout" => Fault::PairingModeTimeout {
            device: need("DEVICE")?,
        },
        "malformed" => Fault::Malformed {
            device: need("DEVICE")?,
            count: 1,
        },
        "out-of-range" => Fault::OutOfRange {
            device: need("DEVICE")?,
            count: 1,
        },
        "rssi" => {
            let a = need("DEVICE:DBM")?;
            let (d, r) = a
                .split_once(':')
                .ok_or(format!("{item}: rssi needs =DEVICE:DBM"))?;
            Fault::Rssi {
                device: d.to_string(),
                rssi: r.parse().map_err(|_| format!("{item}: bad dBm {r:?}"))?,
            }
        }
        "battery" => {
            let a = need("DEVICE:PERCENT")?;
            let (d, p) = a
                .split_once(':')
                .ok_or(format!("{item}: battery needs =DEVICE:PERCENT"))?;
            Fault::Battery {
                device: d.to_string(),
                percent: p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or(format!("{item}: bad percent {p:?}"))?,
            }
        }
        "power-off" => Fault::PowerOff {
            adapter: arg.clone(),
            duration,
        },
        "power-on" => Fault::PowerOn {
            adapter: arg.clone(),
        },
        "clock" => {
            let a = need("DEVICE:SECONDS[:PPM]")?;
            let mut parts = a.split(':');
            let device = parts.next().unwrap_or_default().to_string();
            let offset_s = parts.next().and_then(|s| s.parse().ok()).ok_or(format!(
                "{item}: clock needs =DEVICE:SECONDS[:PPM] (signed seconds)"
            ))?;
            let drift_ppm = match parts.next() {
                None => 0.0,
                Some(p) => p
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && p.abs() <= 1e5)
                    .ok_or(format!("{item}: bad drift {p:?} (parts per million)"))?,
            };
            Fault::Clock {
                device,
                offset_s,
                drift_ppm,
            }
        }
        "unplug" => Fault::Unplug {
            adapter: need("ADAPTER")?,
        },
        "plug" => Fault::Plug {
            adapter: need("ADAPTER")?,
        },
        "clock-reset" => Fault::ClockReset {
            device: need("DEVICE")?,
        },
        "consent-gated" => Fault::ConsentGated {
            device: need("DEVICE")?,
        },
        other => return Err(format!("{item}: unknown fault {other:?}")),
    };
    Ok(ScheduledFault { fault, at, every })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clock_faults() {
        let f = parse_faults("clock=bp0:180,clock=scale0:-60:25.5,clock-reset=temp0@2s")
            .expect("parse");
        assert_eq!(
            f[0].fault,
            Fault::Clock {
                device: "bp0".into(),
                offset_s: 180,
                drift_ppm: 0.0
            }
        );
        assert_eq!(
            f[1].fault,
            Fault::Clock {
                device: "scale0".into(),
                offset_s: -60,
                drift_ppm: 25.5
            }
        );
        assert_eq!(f[2].at, Duration::from_secs(2));
        assert!(parse_faults("clock=bp0").is_err());
        assert!(parse_faults("clock=bp0:10:fast").is_err());
    }

    #[test]
    fn parses_specs() {
        let f = parse_faults("drop=hr0@10s%30s, stall@1m+20s,rssi=bp0:-95,power-off@2s+500ms")
            .expect("parse");
        assert_eq!(
            f[0],
            ScheduledFault {
                fault: Fault::Drop {
                    device: "hr0".into()
                },
                at: Duration::from_secs(10),
                every: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            f[1].fault,
            Fault::StallDiscovery {
                duration: Some(Duration::from_secs(20))
            }
        );
        assert_eq!(f[1].at, Duration::from_secs(60));
        assert_eq!(
            f[2].fault,
            Fault::Rssi {
                device: "bp0".into(),
                rssi: -95
            }
        );
        assert_eq!(
            f[3].fault,
            Fault::PowerOff {
                adapter: None,
                duration: Some(Duration::from_millis(500))
            }
        );
        assert_eq!(
            parse_faults("power-off=hci1+60s").expect("adapter")[0].fault,
            Fault::PowerOff {
                adapter: Some("hci1".into()),
                duration: Some(Duration::from_secs(60))
            }
        );
        let storm = parse_faults("drop=*@5s%2s").expect("storm");
        assert_eq!(storm[0].fault, Fault::Drop { device: "*".into() });
        assert_eq!(storm[0].every, Some(Duration::from_secs(2)));
        assert_eq!(
            parse_faults("battery=scale0:7").expect("battery")[0].fault,
            Fault::Battery {
                device: "scale0".into(),
                percent: 7
            }
        );
        assert!(parse_faults("battery=scale0:101").is_err());
        assert_eq!(
            parse_faults("drop-on-connect=hr1").expect("drop-on-connect")[0].fault,
            Fault::DropOnConnect {
                device: "hr1".into(),
                count: 1
            }
        );
        assert!(parse_faults("refuse=hr0").is_err());
        assert!(parse_faults("explode").is_err());
        assert!(parse_faults("drop=hr0@soon").is_err());
    }
}
