#!/usr/bin/env bash
# Benchmarks: builds `smartscheduler` and `ss-bench`, starts the service on a
# free loopback port with a temporary SQLite file and a fixed secret, runs the
# `persist` and `fanout` scenarios and appends their JSON lines to
# docs/bench-results.jsonl. See docs/benchmarks.md.
#
#   scripts/bench.sh            release builds, full sizes
#   scripts/bench.sh --smoke    debug builds, tiny sizes (a few seconds); results not kept
#
# Sizes can be overridden: PERSIST_COUNT, PERSIST_CONCURRENCY, FANOUT_CLIENTS,
# FANOUT_EVENTS, FANOUT_ASSIGN_CONCURRENCY.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

smoke=false
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=true ;;
    *) echo "usage: scripts/bench.sh [--smoke]" >&2; exit 2 ;;
  esac
done

if $smoke; then
  profile=debug
  # The same build as the test command's, so it is a no-op there.
  cargo build -q --workspace --all-targets
  : "${PERSIST_COUNT:=200}" "${PERSIST_CONCURRENCY:=16}" "${FANOUT_CLIENTS:=50}" "${FANOUT_EVENTS:=20}"
else
  profile=release
  cargo build --release -p smartscheduler-api -p smartscheduler-bench
  : "${PERSIST_COUNT:=5000}" "${PERSIST_CONCURRENCY:=32}" "${FANOUT_CLIENTS:=1000}" "${FANOUT_EVENTS:=500}"
fi
: "${FANOUT_ASSIGN_CONCURRENCY:=4}"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/$profile/smartscheduler"
bench="$target/$profile/ss-bench"

# One process may hold at most the hard limit of open files (20,000 here).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: open-file limit $(ulimit -n), profile $profile"

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

export SMARTSCHEDULER_JWT_SECRET="ss-bench-secret-not-for-production-0123456789"
export SMARTSCHEDULER_DATA_DIR="$tmp"
export SMARTSCHEDULER_DATABASE_URL="sqlite://$tmp/bench.db"
export SMARTSCHEDULER_BIND="127.0.0.1:0"
# Every client uses one token (one user): lift the per-user hub limits above the client count.
export SMARTSCHEDULER_HUB_CONNECTIONS_PER_USER=100000
export SMARTSCHEDULER_HUB_NEGOTIATE_PER_MINUTE=1000000
export NO_COLOR=1

"$bin" serve >"$tmp/server.log" 2>&1 &
pid=$!
base=""
for _ in $(seq 1 300); do
  base=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$tmp/server.log" | head -1 | sed 's/listening on //' || true)
  [ -n "$base" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "bench: the service did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { cat "$tmp/server.log" >&2; echo "bench: the service did not report its address" >&2; exit 1; }
echo "bench: service pid $pid on $base"

SS_BENCH_TOKEN=$("$bin" token --role Admin --ttl 7200)
export SS_BENCH_TOKEN

out="$tmp/results.jsonl"
status=0
echo "bench: persist --count $PERSIST_COUNT --concurrency $PERSIST_CONCURRENCY"
"$bench" persist --base "$base" --count "$PERSIST_COUNT" --concurrency "$PERSIST_CONCURRENCY" | tee -a "$out" || status=1
echo "bench: fanout --clients $FANOUT_CLIENTS --events $FANOUT_EVENTS --assign-concurrency $FANOUT_ASSIGN_CONCURRENCY"
"$bench" fanout --base "$base" --clients "$FANOUT_CLIENTS" --events "$FANOUT_EVENTS" \
  --assign-concurrency "$FANOUT_ASSIGN_CONCURRENCY" | tee -a "$out" || status=1

if [ "$status" -ne 0 ]; then
  echo "bench: a scenario failed; the service's log ends with:" >&2
  tail -n 20 "$tmp/server.log" >&2
  exit 1
fi

if ! $smoke; then
  stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  grep -E '^\{"scenario"' "$out" | sed -E "s/\}\$/,\"at\":\"$stamp\",\"rev\":\"$rev\",\"cores\":$(nproc)}/" >>docs/bench-results.jsonl
  echo "bench: results appended to docs/bench-results.jsonl"
fi
echo "bench: ok"
