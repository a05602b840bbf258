//! marktwin-edge: everything between a source system and the broker.
//!
//! - [`http`]: the incremental HTTP poller for ERP, CRM, SCM and cloud-POS
//!   APIs (cursor or updated-since paging, auth, retries, rate limit);
//! - [`folder`]: the drop folder for CSV / JSON exports;
//! - [`map`], [`clean`]: mapping records onto event kinds and cleaning them
//!   (validation, units, codes, ranges, duplicates) before any topic;
//! - [`fusion`]: readings of one object from several sources, combined;
//! - [`records`]: where a business source's records go;
//! - [`pseudonym`]: keyed HMAC-SHA256 of consumer ids and phones, applied
//!   before anything leaves the edge;
//! - [`cursor`]: durable source positions, so a restart neither repeats
//!   nor skips;
//! - [`modbus`], [`opcua`]: the industrial connectors and their simulators;
//! - [`telemetry`]: where those connectors' readings go;
//! - [`sim`]: the business-system simulators (seeded, deterministic);
//! - [`sink`], [`spool`]: acknowledged produce, or the disk spool while the
//!   broker is away.

pub mod clean;
pub mod cursor;
pub mod error;
pub mod folder;
pub mod fusion;
pub mod http;
pub mod map;
pub mod metrics;
pub mod modbus;
pub mod opcua;
pub mod pseudonym;
pub mod records;
pub mod sim;
pub mod sink;
pub mod spool;
pub mod telemetry;

pub use error::{Error, Result};
pub use metrics::EdgeMetrics;
