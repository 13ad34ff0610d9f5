//! hailan-proto: the contract between gateway, broker, ingest and the clinician
//! API (DESIGN §2). Pure code: no sockets, no files, no async, no clock and no
//! OS randomness — callers pass time and a CSPRNG in.
//!
//! - [`data_type`]: the clinical data-type table (DESIGN §3).
//! - [`envelope`]: the versioned MQTT envelope and its one CBOR codec (§4).
//! - [`columns`]: the column each envelope field is stored in, and its limits.
//! - [`topic`]: MQTT topic names.
//! - [`header`]: canonical reading/window headers and the proof context `x` (§5.1).
//! - [`group`]: taken readings → proven, sealed groups (one assembly for every publisher).
//! - [`cid`]: content identifiers (CIDv1, raw, sha2-256) of sealed values.
//! - [`seal`]: AES-256-GCM sealing of values with the header as associated data.
//! - [`quality`]: the quality flags a device set on a measurement, named.
//! - [`stored`]: the JSON a sealed value is stored as (`health_data.value`).
//! - [`gatt`]: Bluetooth SIG measurement codecs.
//! - [`zk`]: the Groth16 statement, prover and batch verifier (§5).

#![deny(missing_docs)]

pub mod cid;
pub mod clock;
pub mod columns;
pub mod data_type;
pub mod envelope;
pub mod gatt;
pub mod group;
pub mod header;
pub mod quality;
pub mod seal;
pub mod stored;
pub mod topic;
pub mod zk;

pub use data_type::{DataType, DataTypeSpec, SlotSpec};
pub use envelope::{Body, Envelope, ProvenGroup, Reading, Sealed};
pub use header::{ReadingHeader, WindowHeader};
