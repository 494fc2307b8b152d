#!/usr/bin/env bash
# Round trips to PostgreSQL per request: the statements PostgreSQL logs
# (log_statement = all, on a scratch database only) while one client sends N
# requests one after another, divided by N. A lone client makes every usage
# batch hold one event, so the metering writer's share is its worst case;
# under load a batch's statements are shared by all its requests.
#
#   BIN=target/release/memhost N=200 host/benches/http/round_trips.sh
#
# Needs jq, the local PostgreSQL (.ci/setup.sh) and read access to its log
# (LOG, default /var/log/postgresql/postgresql-15-main.log).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
source "$ROOT/host/benches/http/lib.sh"
BIN=${BIN:-$ROOT/target/release/memhost}
N=${N:-200}
LOG=${LOG:-/var/log/postgresql/postgresql-15-main.log}
db="memhost_bench_rt_$$"
psql -q "$PG/postgres" -c "CREATE DATABASE $db" >/dev/null
psql -q "$PG/postgres" -c "ALTER DATABASE $db SET log_statement = 'all'" >/dev/null
# No batch-job workers: their queue poll (a transaction every 250 ms each)
# would be counted as the requests' statements.
export DATABASE_URL="$PG/$db" MEMHOST_SECRET=bench-secret-0123456789abcdef MEMHOST_LOG=warn \
  MEMHOST_LISTEN=127.0.0.1:18997 MEMHOST_DATA_DIR="$WORK/data" MEMHOST_JOBS__WORKERS=0
org=$("$BIN" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
key=$("$BIN" keys create --org "$org" --scopes read,write,delete --json | jq -r .key)
"$BIN" serve >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_port 18997 /health
id=$(curl -s localhost:18997/v1/memories -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
      -d '{"text": "Alice likes green tea in the morning."}' | jq -r .data.id)
# Warm: the key cache, prepared statements, the quota cache.
for _ in 1 2 3 4 5; do curl -s -o /dev/null "localhost:18997/v1/memories/$id" -H "Authorization: Bearer $key"; done
count() { grep -c "@$db .*\(statement\|execute\)" "$LOG" || true; }
per_request() { # label curl-args…
  local label=$1; shift
  local before after
  before=$(count)
  for _ in $(seq 1 "$N"); do curl -s -o /dev/null "$@" -H "Authorization: Bearer $key"; done
  sleep 1.5 # let once-a-second work (usage cache, heartbeats) show as what it is
  after=$(count)
  echo "$label: $(( after - before )) statements for $N requests = $(awk "BEGIN {printf \"%.2f\", ($after - $before) / $N}") per request"
}
echo "binary: $BIN ($(sha256sum "$BIN" | cut -c1-12)); $(date -u +%F)"
per_request "GET /v1/memories/{id}" "localhost:18997/v1/memories/$id"
per_request "POST /v1/memories" localhost:18997/v1/memories -H 'Content-Type: application/json' \
  -d '{"text": "Bob prefers coffee."}'
echo "statements of the last POST, in order:"
grep "@$db .*\(statement\|execute\)" "$LOG" | tail -14 | sed -E 's/.*(statement|execute [^:]*): /  /' | cut -c1-110
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
