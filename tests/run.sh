#!/usr/bin/env bash
# The whole Blitz test suite: installs what it needs, then runs every test.
#
#   tests/run.sh            # everything (what CI runs)
#
# Steps: install test tools (apt/pip, idempotent) -> format and lint checks ->
# cargo tests of every crate (unit, golden files, spec corpus snapshots) ->
# end-to-end tests (pytest) that start the real binaries with real clients,
# then a subset of them again on the polling driver.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Optional runtime parts are features. The workspace build has blitzc's
# (interp, tls, h2); lint the runtime alone without any and with each.
cargo clippy -p blitz-runtime --all-targets --quiet -- -D warnings
cargo clippy -p blitz-runtime --features h2 --all-targets --quiet -- -D warnings
cargo clippy -p blitz-runtime --features tls --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace
cargo test -p blitz-runtime --lib
# Gateways ship in release, where integer overflow wraps instead of
# panicking: the runtime's unit tests run there too (a timer tick that
# wrapped around spun a worker only in release).
cargo test --release -p blitz-runtime --features h2,tls --lib

step "end-to-end tests (pytest)"
# The runtime's example gateway is built once, in release, for the e2e tests.
cargo build --release -p blitz-runtime --features h2,tls,mimalloc --example hello_gateway
python3 -m pytest tests -q -p no:cacheprovider

step "end-to-end tests again on the polling driver (a subset)"
# Where io_uring is disabled (container seccomp profiles) the gateway runs
# on compio's polling driver (DESIGN.md); the whole suite passes there too
# (BLITZ_DRIVER=poll), and this subset keeps that path from regressing.
BLITZ_DRIVER=poll python3 -m pytest -q -p no:cacheprovider \
    tests/runtime/test_proxy_basics.py tests/runtime/test_framing.py tests/runtime/test_full_duplex.py \
    tests/runtime/test_upstream_faults.py tests/runtime/test_tls_runtime.py tests/runtime/test_h2_flow.py \
    tests/runtime/test_upgrade.py tests/runtime/test_lifecycle.py
