#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, adapter and
# black-box HTTP suites), the end-to-end suite that drives the real binary
# with the official @microsoft/signalr client, schemathesis against the
# OpenAPI document, the JavaScript client package (clients/js), and the
# benchmark smoke run. Starts PostgreSQL and Redis
# when they are down. With CI=true a missing service is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

if ! bash scripts/services.sh; then
  if [ "${CI:-}" = "true" ]; then
    echo "run-all: a required service is missing (see above); failing because CI=true" >&2
    exit 1
  fi
  echo "run-all: continuing without the missing service(s); their suites say so and skip" >&2
fi

status=0
echo "== Rust workspace tests"
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast 2>&1 | tee -a "$log" || status=1

echo "== Chromium for the browser tests (tests/e2e/browser.test.mjs)"
if [ -x /usr/bin/chromium ]; then
  echo "run-all: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium) is installed"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "run-all: /usr/bin/chromium is missing: apt-get install -y chromium"
  if ! (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium); then
    if [ "${CI:-}" = "true" ]; then
      echo "run-all: installing chromium failed; failing because CI=true" >&2
      exit 1
    fi
    echo "run-all: installing chromium failed; the browser tests skip" >&2
  fi
else
  echo "run-all: /usr/bin/chromium is missing and cannot be installed here (not root, or no apt-get):" \
    "install it with 'sudo apt-get install chromium'; the browser tests skip" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "run-all: failing because CI=true" >&2
    exit 1
  fi
fi

echo "== Python's signalrcore for the third-party client test (tests/e2e/python/install.sh)"
if ! bash tests/e2e/python/install.sh; then
  echo "run-all: signalrcore is missing; python-client.test.mjs skips (fails with CI=true)" >&2
fi

echo "== End-to-end tests (real binary, official SignalR client, and signalrcore)"
export SMARTSCHEDULER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/smartscheduler"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error && npm test) 2>&1 | tee -a "$log" || status=1

echo "== JavaScript client (clients/js: @smartscheduler/events-client against the real binary)"
# Its tests reuse tests/e2e/lib/harness.mjs, whose packages the step above installed.
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build && npm test) 2>&1 | tee -a "$log" || status=1

echo "== OpenAPI: schemathesis against the running service (tests/openapi/run.sh)"
openapi_pass=0
openapi_fail=0
if bash tests/openapi/run.sh; then openapi_pass=1; else openapi_fail=1; status=1; fi

echo "== Benchmark smoke (scripts/bench.sh --smoke: tiny sizes, debug build)"
if bash scripts/bench.sh --smoke; then echo "ss-bench smoke: ok"; else echo "ss-bench smoke: FAILED" >&2; status=1; fi

# One closing line over every runner: cargo's 'test result' lines and node's summary.
cargo_pass=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
cargo_fail=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
node_pass=$(grep -E '^ℹ pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
node_fail=$(grep -E '^ℹ fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
echo "$((cargo_pass + node_pass + openapi_pass)) passed, $((cargo_fail + node_fail + openapi_fail)) failed"
exit "$status"
