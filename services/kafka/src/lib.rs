//! marktwin-kafka: the Kafka plumbing every service shares.
//!
//! - [`client_config`]: librdkafka settings from [`marktwin_core::Config`]
//!   (bootstrap servers plus the `[kafka.client]` pass-through);
//! - [`ensure_topics`]: creates the declared topics that are missing;
//! - [`producer`], [`produce_all`], [`produce_keyed`]: acknowledged, idempotent
//!   produce (the latter with tombstones and delivery positions);
//! - [`DeadLetterSink`]: rejected records with their reason, counted;
//! - [`EmbeddedBroker`]: runs a Tansu broker as a child process for
//!   `marktwin up` and the tests, and stops it on drop.
//!
//! Any Kafka-protocol broker works; nothing here is specific to Tansu except
//! [`EmbeddedBroker`].

pub mod broker;
pub mod error;
pub mod produce;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use error::{Error, Result};
pub use produce::{DeadLetterSink, output_producer, produce_all, produce_keyed, producer};
pub use topics::ensure_topics;

use marktwin_core::Config;
use rdkafka::ClientConfig;

/// librdkafka settings shared by every client of this deployment.
///
/// `bootstrap` overrides `kafka.brokers` (the embedded broker's address).
pub fn client_config(cfg: &Config, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", "marktwin");
    for (k, v) in &cfg.kafka.client {
        c.set(k, v);
    }
    c
}
