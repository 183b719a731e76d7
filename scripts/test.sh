#!/usr/bin/env bash
# Runs every test Warren has, on a fresh machine with only the Rust toolchain:
# formatting, lints, the Rust unit and integration tests, then the cross-language interop suite
# (which installs its Python and Node clients from the package registries under interop/).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --all-targets

if [ -x interop/run.sh ]; then
    step "interop suite"
    interop/run.sh
fi
