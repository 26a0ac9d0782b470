#!/usr/bin/env bash
# Runs every lumen test: unit, integration, sandbox self-tests and the whole-system tests.
# The README's test command and CI (.ci/run) both call this script, so they cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

# The whole-system tests start the real binaries (broker and the four workers), so build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${LUMEN_TEST_THREADS:-2}"
