#!/usr/bin/env bash
# The long fault-injection run (the short one is tests/e2e/chaos.test.mjs, in
# `npm test`): ROUNDS rounds, each a fresh two-node cluster on a private
# PostgreSQL and Redis with a burst of assignments and faults drawn at random
# (kill -9, SIGSTOP past the lease, lease-session and random-session kills,
# PostgreSQL and Redis restarts, network resets and stalls), checked by the
# checker of tests/e2e/lib/chaos-checker.mjs (rules in docs/reliability.md).
# Prints a line per round and a summary; exits non-zero on any violation.
#
# Usage: scripts/chaos.sh [--rounds N] [--events N] [--faults N] [--seed N] [--out FILE]
#   defaults: 20 rounds, 300 assignments and 4 faults a round, a random seed
#   (printed: the same seed replays the same choices), records appended to
#   target/chaos/rounds.jsonl.
#   SMARTSCHEDULER_BIN  the binary (default target/debug/smartscheduler, built if missing)
#   CHAOS_LEASE_MS      SMARTSCHEDULER_PUBLISHER_LEASE_MS of the nodes (default 1500)
set -euo pipefail
cd "$(dirname "$0")/.."

export SMARTSCHEDULER_BIN=${SMARTSCHEDULER_BIN:-$PWD/target/debug/smartscheduler}
if [ ! -x "$SMARTSCHEDULER_BIN" ]; then
  echo "chaos: building the debug binary"
  cargo build -p smartscheduler-api
fi
if [ ! -d tests/e2e/node_modules/@microsoft/signalr ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi

args=("$@")
has_out=0
for a in "${args[@]}"; do [ "$a" = "--out" ] && has_out=1; done
[ "$has_out" = 1 ] || args+=(--out "$PWD/target/chaos/rounds.jsonl")
exec node tests/e2e/chaos-run.mjs "${args[@]}"
