#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment holding the real Moonlight client the
# whole-system GameStream tests drive: moonlight-python 0.3.0 (it bundles moonlight-common-c).
# The venv goes to $LUMEN_TEST_VENV, or else target/lumen-test-venv in this checkout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${LUMEN_TEST_VENV:-$root/target/lumen-test-venv}"
version="0.3.0"

if [ -x "$venv/bin/python" ] \
    && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moonlight-python') != '$version')" 2>/dev/null; then
    echo "$venv"
    exit 0
fi
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "moonlight-python==$version" >&2
echo "$venv"
