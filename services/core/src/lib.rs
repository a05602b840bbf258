//! marktwin-core: what every marktwin service shares.
//!
//! - [`events`]: the event contracts, one versioned [`events::Envelope`]
//!   around a payload per source kind, with deterministic event ids;
//! - [`topics`]: every Kafka topic, declared once;
//! - [`backoff`]: jittered, capped retry delays;
//! - [`config`]: the layered, validated [`config::Config`];
//! - [`schema`]: the JSON Schema of each topic, generated from the types and
//!   checked in under `schemas/`;
//! - [`health`]: named readiness checks behind `/readyz`;
//! - [`metrics`]: every metric name;
//! - [`error`]: the crate's [`Error`] and [`Result`].
//!
//! This crate has no Kafka, HTTP or DataFusion dependency, so everything that
//! builds on the contracts compiles and tests quickly.

pub mod backoff;
pub mod codec;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod modbus;
pub mod opcua;
pub mod proto_sync;
pub mod schema;
pub mod sources;
pub mod topics;

/// A file of the repository, for tests: found from `CARGO_MANIFEST_DIR` as
/// cargo sets it when it runs the test, not as it was at compile time
/// (`env!`), because clones that share one target directory reuse each
/// other's test binaries and a compiled-in path points at the other clone.
#[cfg(test)]
pub(crate) fn repo_file(rel: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run under cargo test");
    std::path::PathBuf::from(dir).join("../..").join(rel)
}

pub use config::{BrokerStorage, Config};
pub use error::{Error, Result};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
