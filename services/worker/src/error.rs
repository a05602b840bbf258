//! Errors of the worker.

/// What can stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka client failed; a restart usually helps.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Building a table snapshot failed: a bug.
    #[error(transparent)]
    State(#[from] marktwin_state::Error),
    /// The input topics cannot be processed together.
    #[error("{0}")]
    Partitions(String),
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) => true,
            Error::State(e) => e.is_retryable(),
            Error::Partitions(_) => false,
        }
    }
}

/// Result with the worker [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
