#!/usr/bin/env bash
# Command 2 of the README: install what is missing, then check formatting,
# lints and run every test (unit, schema drift, and the integration tests
# against a real Tansu broker on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/setup.sh
started=$SECONDS
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --locked --workspace
log "All tests passed in $((SECONDS - started)) s."
