#!/usr/bin/env bash
# Installs the third-party Python SignalR client the e2e suite drives
# (python-client.test.mjs): signalrcore from PyPI, pinned, into
# tests/e2e/python/.venv. Does nothing when that version is already there.
# tests/run-all.sh runs it before the e2e suite.
set -euo pipefail
cd "$(dirname "$0")"
version="1.0.2"
venv="$(pwd)/.venv"

if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('signalrcore') != '$version')" 2>/dev/null; then
  exit 0
fi
echo "e2e: installing signalrcore $version from PyPI into $venv"
if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "signalrcore==$version"; }; then
  echo "e2e: MISSING: could not install signalrcore $version (needs python3 with venv and PyPI)" >&2
  exit 1
fi
