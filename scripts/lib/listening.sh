# Sourced by scripts/bench.sh and tests/openapi/run.sh.
#
# wait_listening LOG PID WHO: waits up to 30 s for the "listening on
# http://127.0.0.1:PORT" line that smartscheduler, ss-floor and the socket.io
# peer print, and echoes that base URL. If the process exits first, or never
# says, it prints the log and a line naming WHO to stderr and returns 1.
wait_listening() {
  local log=$1 pid=$2 who=$3 base=""
  for _ in $(seq 1 300); do
    base=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$log" | head -1 | sed 's/listening on //' || true)
    if [ -n "$base" ]; then
      echo "$base"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$log" >&2
      echo "$who did not start" >&2
      return 1
    fi
    sleep 0.1
  done
  cat "$log" >&2
  echo "$who did not report its address" >&2
  return 1
}
