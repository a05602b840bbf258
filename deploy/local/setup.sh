#!/usr/bin/env bash
# Installs what marktwin needs on this machine and is missing; safe to run
# again (it skips what is already there). Sourced by up.sh and test.sh.
#
#  - a Rust toolchain (cargo) must already be there;
#  - the Tansu broker: `cargo install tansu --locked --features libsql,dynostore`
#    into ~/.cargo/bin (about 12 minutes the first time);
#  - C build tools for librdkafka (gcc, make, cmake is not needed);
#  - the Python protocol peers of the tests (pymodbus, asyncua) and pyarrow
#    (to read the Parquet test data sets) in a venv at
#    $MARKTWIN_VENV (default ~/.cache/marktwin/venv), from
#    tests/peers/requirements.txt.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install Rust (https://rustup.rs) and run this again."
  exit 1
fi

# Build caches live outside the clone so a fresh clone (and CI) reuses them;
# an empty cache just means a longer first build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marktwin/target}"
mkdir -p "$CARGO_TARGET_DIR"
# Rebuilt test binaries leave their predecessors behind; keep the newest.
python3 deploy/local/prune_builds.py "$CARGO_TARGET_DIR" || log "could not prune stale builds"

need_apt=()
command -v gcc  >/dev/null 2>&1 || need_apt+=(gcc)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v perl >/dev/null 2>&1 || need_apt+=(perl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "Installing Debian packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    log "Missing build tools (${need_apt[*]}): install them with your package manager."
    exit 1
  fi
fi

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
if ! command -v tansu >/dev/null 2>&1; then
  log "Installing the Tansu broker $TANSU_VERSION (cargo install, about 12 minutes on 2 cores)..."
  # Its own target dir: its dependency versions differ from ours.
  CARGO_TARGET_DIR="$HOME/.cache/marktwin/tansu-target" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore
fi
log "Tansu: $(command -v tansu)"

export MARKTWIN_VENV="${MARKTWIN_VENV:-$HOME/.cache/marktwin/venv}"
peers_req="tests/peers/requirements.txt"
peers_stamp="$MARKTWIN_VENV/.marktwin-requirements"
if [ ! -x "$MARKTWIN_VENV/bin/python" ] || ! cmp -s "$peers_req" "$peers_stamp"; then
  log "Installing the Python test peers into $MARKTWIN_VENV ..."
  if ! python3 -m venv "$MARKTWIN_VENV" 2>/dev/null; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv "$MARKTWIN_VENV"
    else
      log "python3 -m venv failed: install python3-venv and run this again."
      exit 1
    fi
  fi
  "$MARKTWIN_VENV/bin/pip" install -q --disable-pip-version-check -r "$peers_req"
  cp "$peers_req" "$peers_stamp"
fi
