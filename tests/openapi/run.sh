#!/usr/bin/env bash
# Property-based test of the HTTP API against its own OpenAPI document:
# schemathesis (from PyPI) reads GET /api/openapi.json from a running
# `smartscheduler serve` and sends generated requests, valid and invalid, to
# every operation. It fails on any 5xx and on any answer the document does not
# describe (status, content type, headers, body schema), and checks that
# methods a path does not have are refused (405). tests/run-all.sh runs it.
#
#   tests/openapi/run.sh                 uses target/debug/smartscheduler (built by the test command)
#   SCHEMATHESIS_MAX_EXAMPLES=200 tests/openapi/run.sh
#
# schemathesis is installed into target/schemathesis-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug/smartscheduler"
version="4.32.5"
venv="$target/schemathesis-venv"
: "${SCHEMATHESIS_MAX_EXAMPLES:=60}"

if [ ! -x "$bin" ]; then
  cargo build -q -p smartscheduler-api
fi
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  echo "openapi: installing schemathesis $version from PyPI into $venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"; }; then
    echo "openapi: MISSING: could not install schemathesis $version (needs python3 with venv and PyPI)" >&2
    exit 1
  fi
fi

# shellcheck source=scripts/lib/listening.sh
. "$root/scripts/lib/listening.sh"

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

export SMARTSCHEDULER_JWT_SECRET="schemathesis-secret-not-for-production-0123"
export SMARTSCHEDULER_DATABASE_URL="sqlite://$tmp/api.db"
export SMARTSCHEDULER_DATA_DIR="$tmp"
export SMARTSCHEDULER_BIND="127.0.0.1:0"
# Generated negotiate calls must not run into the per-user hub limits.
export SMARTSCHEDULER_HUB_NEGOTIATE_PER_MINUTE=1000000
export NO_COLOR=1
"$bin" serve >"$tmp/server.log" 2>&1 &
pid=$!
base=$(wait_listening "$tmp/server.log" "$pid" "openapi: the service") || exit 1

admin=$("$bin" token --role Admin --ttl 3600)
# Some data, so that lists, the EventLog and its payloads are not empty.
"$bin" demo >/dev/null
post() { curl -sf -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d "$2" "$base$1"; }
contractor=$(post /api/contractors '{"name":"Schema Thesis","region":"north"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
job=$(post /api/jobs '{"jobType":"Flooring","region":"north","durationMinutes":60}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
post "/api/jobs/$job/assign" "{\"contractorId\":\"$contractor\",\"startUtc\":\"2030-01-01T09:00:00Z\",\"endUtc\":\"2030-01-01T10:00:00Z\"}" >/dev/null

echo "openapi: schemathesis $version against $base/api/openapi.json (max $SCHEMATHESIS_MAX_EXAMPLES examples per operation)"
status=0
# From the temporary folder: schemathesis keeps a cache in its working directory.
(cd "$tmp" && "$venv/bin/schemathesis" run "$base/api/openapi.json" \
  --header "Authorization: Bearer $admin" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method \
  --max-examples "$SCHEMATHESIS_MAX_EXAMPLES" \
  --workers 2 \
  --generation-database none \
  --no-color \
  --report junit --report-dir "$tmp/report") || status=$?
if [ "$status" -ne 0 ]; then
  echo "openapi: schemathesis found answers outside the document (exit $status); the service's log ends with:" >&2
  tail -n 30 "$tmp/server.log" >&2
  exit 1
fi
# schemathesis already fails on a 5xx; the service's own request log says the same.
if grep -E 'request .*status=5[0-9][0-9]' "$tmp/server.log" >&2; then
  echo "openapi: the service logged a 5xx answer during the run (above)" >&2
  exit 1
fi
if ! grep -qE 'request .*status=2[0-9][0-9]' "$tmp/server.log"; then
  echo "openapi: no request log lines found: the 5xx check above saw nothing" >&2
  exit 1
fi
echo "openapi: ok"
