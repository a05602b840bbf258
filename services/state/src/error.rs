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
    /// A checkpoint could not be read back: a column is missing or has the
    /// wrong type, or a value is out of range.
    #[error("checkpoint table `{table}`: {detail}")]
    Restore {
        /// The checkpoint table.
        table: &'static str,
        /// What is wrong, naming the column.
        detail: String,
    },
    /// A query table read back does not have the expected columns.
    #[error("table `{table}`: {detail}")]
    Read {
        /// The table.
        table: &'static str,
        /// What is wrong, naming the column.
        detail: String,
    },
    /// Arrow IPC could not write or read a checkpoint file.
    #[error("checkpoint file `{path}`: {source}")]
    Ipc {
        /// The object's path.
        path: String,
        /// The cause.
        source: datafusion::arrow::error::ArrowError,
    },
    /// The checkpoint store failed (disk, permissions, object store).
    #[error("checkpoint store: {0}")]
    Store(#[from] object_store::Error),
    /// A checkpoint manifest is not valid JSON of the expected shape.
    #[error("checkpoint manifest `{path}`: {source}")]
    Manifest {
        /// The object's path.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether trying again unchanged can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store(_))
    }
}

/// Result with the state [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
