//! The ground-truth log: every value the simulator put on the air (and every
//! glucose record it stored), as JSON lines and as an in-process stream.

use crate::model::{DeviceKind, Measurement};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// What happened to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruthEvent {
    /// Sent as a notification (`GattCharacteristic1.Value` changed).
    Notify,
    /// Sent as an indication (looks the same on D-Bus).
    Indicate,
    /// A glucose record stored on the device (sent later through RACP).
    Stored,
}

/// One line of the ground truth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TruthRecord {
    /// Milliseconds since the simulator started.
    pub t_ms: u64,
    /// Seconds since the Unix epoch.
    pub unix: i64,
    /// Device name as the CLI and fault specs call it (`hr0`, `bp0`, …).
    pub device: String,
    /// Device address (`F0:4A:1A:01:00:00`).
    pub address: String,
    /// Device kind.
    pub kind: DeviceKind,
    /// What happened.
    pub event: TruthEvent,
    /// Characteristic, 16-bit UUID in lower-case hex (`2a37`).
    pub characteristic: String,
    /// The bytes sent (hex), empty for [`TruthEvent::Stored`]; the packets of
    /// a multiple-packet value (body composition) separated by a space.
    pub bytes: String,
    /// The typed value (the truth).
    pub measurement: Measurement,
    /// How far ahead of the true time the device's clock was when it took
    /// the value, in seconds: its time stamp on the air is `measurement`'s
    /// time plus this (which stays the true time).
    #[serde(default)]
    pub device_clock_offset_s: i64,
    /// DESIGN §3 fixed-point slots of the value.
    pub slots: Vec<u64>,
    /// The bytes were deliberately malformed (fault injection).
    pub malformed: bool,
    /// The value was deliberately implausible (fault injection).
    pub out_of_range: bool,
    /// When it was handed to D-Bus (in-process only, for latency measurements).
    #[serde(skip)]
    pub sent_at: Option<std::time::Instant>,
}

/// Sink for truth records: memory, broadcast, and optionally a file.
pub struct TruthLog {
    records: Mutex<Vec<TruthRecord>>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    tx: broadcast::Sender<TruthRecord>,
}

impl TruthLog {
    /// A log, writing JSON lines to `file` if given.
    pub fn new(file: Option<std::fs::File>) -> TruthLog {
        let (tx, _) = broadcast::channel(65_536);
        TruthLog {
            records: Mutex::new(Vec::new()),
            file: file.map(|f| Mutex::new(std::io::BufWriter::new(f))),
            tx,
        }
    }

    /// Record one value.
    pub fn push(&self, rec: TruthRecord) {
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
            && let Ok(line) = serde_json::to_string(&rec)
        {
            // Flush per line: the file is read while the simulator runs.
            let _ = writeln!(f, "{line}").and_then(|_| f.flush());
        }
        let _ = self.tx.send(rec.clone());
        if let Ok(mut r) = self.records.lock() {
            r.push(rec);
        }
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> Vec<TruthRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// A live stream of records from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TruthRecord> {
        self.tx.subscribe()
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
