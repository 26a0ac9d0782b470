#!/usr/bin/env bash
# Runs every lumen test: unit, integration, sandbox self-tests and the whole-system tests.
# The README's test command and CI (.ci/run) both call this script, so they cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."

# As root, the broker runs its workers as uid 65534, which must be able to reach the binaries. A checkout
# under a private directory (e.g. /root) is not reachable for it: build somewhere it is.
if [ "$(id -u)" -eq 0 ] && [ -z "${CARGO_TARGET_DIR:-}" ] \
    && ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$PWD"; then
    export CARGO_TARGET_DIR=/var/tmp/lumen-target
    mkdir -p "$CARGO_TARGET_DIR" && chmod 755 "$CARGO_TARGET_DIR"
    echo "tests/run.sh: $PWD is not reachable by uid 65534; building in $CARGO_TARGET_DIR"
fi

# The real Moonlight client (moonlight-python, which bundles moonlight-common-c) for the GameStream tests.
LUMEN_TEST_VENV="$(tests/python/setup-venv.sh)"
export LUMEN_TEST_VENV

# The whole-system tests start the real binaries (broker and the four workers), so build them first.
cargo build --workspace --bins

# The streaming tests write decoded frames and state dirs: a nearly full disk fails them with
# ENOSPC in the client, which is told apart from a real failure by these figures.
disk() { df -h "${CARGO_TARGET_DIR:-target}" "${TMPDIR:-/tmp}" || true; }
echo "tests/run.sh: disk space before the tests:"
disk
if ! cargo test --workspace --no-fail-fast -- --test-threads="${LUMEN_TEST_THREADS:-2}"; then
    echo "tests/run.sh: tests failed; disk space now:"
    disk
    exit 1
fi
