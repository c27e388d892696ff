#!/usr/bin/env bash
# Fuzzes what hostile clients reach first, with the project's property tests:
#   crates/realtime/tests/realtime/fuzz_protocol.rs      RecordBuffer, parse_handshake,
#                                                        parse_message, the records the server writes
#   crates/realtime/tests/realtime/fuzz_messagepack.rs   the MessagePack codec: FrameBuffer,
#                                                        parse_message, the records the server writes
#   crates/infrastructure/tests/infrastructure/fuzz_tokens.rs
#                                                        JwtTokens::verify,
#                                                        SignedConnectionTokens::redeem
# (modules of each crate's one test binary, run with their module as filter).
# It runs them round after round, each with fresh random inputs and many cases
# (PROPTEST_CASES), until SECONDS (default 180) are up, then prints how many
# executions ran, per target and in all, and the result.
#
# A failure stops the run. proptest has then saved the failing case's seed in
# crates/realtime/proptest-regressions/fuzz_protocol.txt or
# crates/infrastructure/proptest-regressions/fuzz_tokens.txt, and every later
# `cargo test` replays it before anything new: commit that file with the fix,
# so the failure stays a regression test.
#
# Usage: scripts/fuzz.sh [SECONDS]
#   FUZZ_CASES  most cases per property per round (default 100000); rounds are
#               sized from a first, short calibration round so that the run
#               ends close to SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-180}
max_cases=${FUZZ_CASES:-100000}
if ! [[ "$budget" =~ ^[0-9]+$ && "$max_cases" =~ ^[0-9]+$ ]] || [ "$max_cases" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (FUZZ_CASES: a positive number)" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "fuzz: building the property tests"
binaries=()
filters=()
# package, test binary, module
for target in "smartscheduler-realtime realtime fuzz_protocol" "smartscheduler-realtime realtime fuzz_messagepack" \
  "smartscheduler-infrastructure infrastructure fuzz_tokens"; do
  set -- $target
  cargo test -p "$1" --test "$2" --no-run --message-format=json >"$work/build.json"
  bin=$(grep -o '"executable":"[^"]*/'"$2"'-[^"]*"' "$work/build.json" | tail -n1 | cut -d'"' -f4)
  [ -x "$bin" ] || { echo "fuzz: cannot find the $2 test binary" >&2; exit 1; }
  binaries+=("$bin")
  filters+=("$3::")
done

declare -A executions=()
rounds=0
total=0
started=$(date +%s)
cases=$(( max_cases < 2000 ? max_cases : 2000 )) # the calibration round
result="ok"

while :; do
  now=$(date +%s)
  remaining=$(( started + budget - now ))
  [ "$rounds" -gt 0 ] && [ "$remaining" -le 0 ] && break
  rounds=$((rounds + 1))
  round_start=$now
  pids=()
  for i in "${!binaries[@]}"; do
    PROPTEST_CASES=$cases "${binaries[$i]}" "${filters[$i]}" --nocapture >"$work/out.$i" 2>&1 &
    pids+=($!)
  done
  failed=0
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed=1
  done
  for i in "${!binaries[@]}"; do
    while read -r _ name count; do
      executions[$name]=$(( ${executions[$name]:-0} + count ))
      total=$((total + count))
    done < <(grep '^fuzz-executions ' "$work/out.$i" || true)
  done
  elapsed=$(( $(date +%s) - round_start ))
  echo "fuzz: round $rounds: $cases cases per property, ${elapsed}s, $total executions so far"
  if [ "$failed" -ne 0 ]; then
    result="FAILED"
    for i in "${!binaries[@]}"; do
      if grep -q 'FAILED\|panicked' "$work/out.$i"; then
        echo "---- ${binaries[$i]##*/} ${filters[$i]}" >&2
        grep -v '^fuzz-executions \|^test .* ok$' "$work/out.$i" | tail -n 60 >&2
      fi
    done
    break
  fi
  # Size the next round to what is left: at most FUZZ_CASES, at least 1000.
  remaining=$(( started + budget - $(date +%s) ))
  [ "$remaining" -le 0 ] && break
  [ "$elapsed" -lt 1 ] && elapsed=1
  cases=$(( cases * remaining / elapsed ))
  [ "$cases" -gt "$max_cases" ] && cases=$max_cases
  [ "$cases" -lt 1000 ] && cases=1000
done

echo
echo "fuzz: $(( $(date +%s) - started ))s, $rounds rounds, executions per target:"
for name in $(printf '%s\n' "${!executions[@]}" | sort); do
  printf '  %-26s %12d\n' "$name" "${executions[$name]}"
done
printf '  %-26s %12d\n' "total" "$total"
if [ "$result" = "ok" ]; then
  echo "fuzz: result: ok, no failure"
else
  echo "fuzz: result: FAILED; the seed is saved under crates/*/proptest-regressions/: fix the bug, keep that file (commit it), rerun" >&2
  exit 1
fi
