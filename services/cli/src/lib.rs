//! The `marktwin` binary's library: [`app`] assembles a process from the
//! service crates, so `marktwin up` and the integration tests run the same
//! code. `main.rs` only parses the command line, loads config and starts
//! logging.

pub mod app;
