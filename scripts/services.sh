#!/usr/bin/env bash
# Makes sure the servers the test suites talk to are up: PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379. Starts whichever is down with
# the machine's own commands; says plainly what is missing when it cannot.
# Exit status: 0 when both answer, 1 otherwise.
set -u

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

missing=()

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    echo "services: PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  pg_up || missing+=("PostgreSQL at 127.0.0.1:5432 (install postgresql, or set SMARTSCHEDULER_TEST_POSTGRES_URL)")
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: Redis is down; starting it"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
  fi
  redis_up || missing+=("Redis at 127.0.0.1:6379 (install redis-server)")
fi

if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "services: MISSING: $m"; done
  exit 1
fi
echo "services: PostgreSQL and Redis are up"
