//! Benchmarks of marktwin live under `benches/` (criterion, `cargo bench -p
//! marktwin-benches`); each compares our path with a baseline measured in
//! the same run, because this machine is shared and absolute times are not
//! comparable between runs.
