//! Errors of the edge.

/// What can go wrong at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source API failed or answered nonsense; retried with backoff.
    #[error("source `{source_name}`: {detail}")]
    Source {
        /// The source.
        source_name: String,
        /// What happened.
        detail: String,
    },
    /// The broker did not acknowledge; retried with backoff.
    #[error("producing to `{topic}`: {detail}")]
    Produce {
        /// The topic.
        topic: String,
        /// What happened.
        detail: String,
    },
    /// The pseudonymisation key is missing or unusable.
    #[error("pseudonymisation key: {0}")]
    Key(String),
    /// Local state (cursor) could not be read or written.
    #[error("edge state: {0}")]
    Io(#[from] std::io::Error),
    /// Kafka client setup failed.
    #[error(transparent)]
    Kafka(#[from] marktwin_kafka::Error),
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Source { .. } | Error::Produce { .. } | Error::Io(_)
        )
    }
}

/// Result with the edge [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
