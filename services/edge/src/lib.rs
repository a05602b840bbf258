//! marktwin-edge: everything between a source system and the broker.
//!
//! - [`sim`]: the built-in cloud-POS simulator (seeded, deterministic);
//! - [`pos`]: mapping and validating vendor POS records into
//!   [`marktwin_core::events::PosTransaction`] events;
//! - [`pseudonym`]: keyed HMAC-SHA256 of consumer ids and phones, applied
//!   before anything leaves the edge;
//! - [`cursor`]: durable cursors, so a restart neither repeats nor skips;
//! - [`poller`]: the incremental HTTP poller that ties them together and
//!   produces with acknowledgement, rejects going to the dead-letter topic;
//! - [`modbus`], [`opcua`]: the industrial connectors and their simulators;
//! - [`telemetry`]: where those connectors' readings go;
//! - [`sink`], [`spool`]: acknowledged produce, or the disk spool while the
//!   broker is away.

pub mod cursor;
pub mod error;
pub mod modbus;
pub mod opcua;
pub mod poller;
pub mod pos;
pub mod pseudonym;
pub mod sim;
pub mod sink;
pub mod spool;
pub mod telemetry;

pub use error::{Error, Result};
pub use poller::{EdgeMetrics, PosPoller};
