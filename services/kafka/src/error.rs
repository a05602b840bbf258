//! Errors of the Kafka plumbing.

use std::path::PathBuf;

/// What can go wrong talking to or running a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused or did not answer; usually worth retrying.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic could not be created.
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// The embedded broker binary is missing.
    #[error(
        "the embedded broker needs `{binary}` on PATH or in ~/.cargo/bin; install it with `cargo install tansu --locked --features libsql,dynostore` or set kafka.brokers"
    )]
    TansuMissing {
        /// What was looked for.
        binary: String,
    },
    /// The embedded broker did not answer in time.
    #[error("the embedded broker did not answer on {addr} within {secs}s; see {log}")]
    BrokerTimeout {
        /// Its address.
        addr: String,
        /// How long we waited.
        secs: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// A metric could not be registered (a duplicate name: a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Kafka(_) | Error::BrokerTimeout { .. })
    }
}

/// Result with the Kafka [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
