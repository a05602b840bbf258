//! Errors of the board.

/// What can go wrong setting up or answering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion refused a table or a query.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Encoding a result failed.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A metric could not be registered (a duplicate name: a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Result with the board [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
