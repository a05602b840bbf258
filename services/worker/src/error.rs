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
    /// A table's rows could not be written as JSON: a bug.
    #[error("encoding the rows of table `{table}`: {source}")]
    Encode {
        /// The table.
        table: &'static str,
        /// The cause.
        source: datafusion::arrow::error::ArrowError,
    },
    /// A table names a key column it does not have: a bug.
    #[error("table `{table}` has no key column `{column}`")]
    KeyColumn {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
    },
    /// The parts were put together wrongly: a bug.
    #[error("worker setup: {0}")]
    Setup(String),
    /// A change record's key names no table of its operator: a bug.
    #[error("change record `{0}` belongs to no table of its operator")]
    Unrouted(String),
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) => true,
            Error::State(e) => e.is_retryable(),
            Error::Partitions(_)
            | Error::Encode { .. }
            | Error::KeyColumn { .. }
            | Error::Unrouted(_)
            | Error::Setup(_) => false,
        }
    }
}

/// Result with the worker [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
