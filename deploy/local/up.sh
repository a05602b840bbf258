#!/usr/bin/env bash
# Command 1 of the README: install what is missing, build, and run the whole
# pipeline on this machine (`marktwin up`) with the embedded defaults. Extra
# arguments go to marktwin, e.g. `./deploy/local/up.sh --config my.toml`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/setup.sh
log "Building marktwin (release; the first build takes several minutes)..."
cargo build --release --locked -p marktwin
exec "$CARGO_TARGET_DIR/release/marktwin" "$@" up
