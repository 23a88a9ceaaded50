#!/usr/bin/env bash
# The demo: set-up (idempotent), build, then a lab of network namespaces with
# the lb-control daemon and three backends; sends real requests, shows where
# they went, and stays up until Ctrl-C. Extra arguments go to lb-demo
# (e.g. --hold-secs 30).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins --locked
exec target/debug/lb-demo "$@"
