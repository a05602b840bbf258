//! Errors of the state crate.

/// What can go wrong building or publishing state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arrow or DataFusion refused a batch; a bug, not worth retrying.
    #[error("building table `{table}`: {source}")]
    Build {
        /// The table.
        table: &'static str,
        /// The cause.
        source: datafusion::arrow::error::ArrowError,
    },
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Result with the state [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
