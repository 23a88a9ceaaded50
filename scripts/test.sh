#!/usr/bin/env bash
# Runs every test of the project on this host: set-up first (idempotent),
# then the Rust test suites, which include the BPF fixture tests (root) and
# the API fuzz test (schemathesis from setup.sh's virtualenv against a real
# daemon in a namespace; lb-control/tests/daemon.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Gates: one format for both workspaces (rustfmt.toml), no lint warnings
# (the [workspace.lints] table in Cargo.toml, clippy's defaults).
cargo fmt --all --check
(cd lb-ebpf && cargo fmt --all --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start the daemon and lbctl binaries.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
