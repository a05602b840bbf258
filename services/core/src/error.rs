//! Errors of the core crate.

use std::path::PathBuf;

/// What can go wrong loading config and handling contracts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is out of its allowed range; names the field.
    #[error("invalid config: `{field}` {message}")]
    InvalidConfig {
        /// Dotted path of the field, e.g. `kafka.brokers`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The config could not be read or parsed; the text names the key.
    #[error("cannot load config: {0}")]
    ConfigLoad(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::InvalidConfig`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether trying again unchanged can succeed. Config errors never do.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io { .. })
    }
}

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
