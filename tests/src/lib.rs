//! Integration tests of marktwin live under `tests/`; this crate has no
//! library code of its own.
