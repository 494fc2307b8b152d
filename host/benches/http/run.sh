#!/usr/bin/env bash
# HTTP benchmarks for BENCHMARKS.md: a bare axum baseline, then memhost
# GET/POST throughput and retrieval latency on SQLite and PostgreSQL, all in
# one run on this machine.
#
#   host/benches/http/run.sh              # 30 s per measurement, 64 connections
#   DUR=5s host/benches/http/run.sh       # quick look
#   BACKENDS=sqlite host/benches/http/run.sh
#   SECTIONS=limits host/benches/http/run.sh   # only GET with limits off / in process / Redis
#
# Needs wrk (apt-get install wrk) and, for postgres, the local PostgreSQL
# with pgvector (.ci/setup.sh). Prints one line per measurement.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
export BENCH_DIR="$ROOT/host/benches/http"
DUR=${DUR:-30s}
CONN=${CONN:-64}
BACKENDS=${BACKENDS:-"sqlite postgres"}
SIZES=${SIZES:-"10000 100000"}
SECTIONS=${SECTIONS:-"backends limits"}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
# Bench orgs get rate limits no measurement reaches (lib.sh's UNLIMITED);
# the limits section measures the limits.
source "$BENCH_DIR/lib.sh"

cd "$ROOT"
cargo build --release -q --bin memhost --example bare_axum --example bench_seed
BIN="$ROOT/target/release/memhost"
SEED="$ROOT/target/release/examples/bench_seed"

# name script url [connections] [threads]
measure() {
  local line
  line=$(wrk -t"${5:-2}" -c"${4:-$CONN}" -d"$DUR" -s "$BENCH_DIR/$2" "$3" | grep '^RESULT') || { echo "$1: wrk failed" >&2; exit 1; }
  printf '%-34s %s\n' "$1" "${line#RESULT }"
}

start_server() { # log name, then env assignments
  local log=$1; shift
  env "$@" "$BIN" serve >"$WORK/$log.log" 2>&1 &
  PIDS+=($!)
  server=${PIDS[-1]}
  wait_port 18998
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; wrk ${CONN} connections, ${DUR} each; $(date -u +%F)"

"$ROOT/target/release/examples/bare_axum" 127.0.0.1:18999 >/dev/null &
PIDS+=($!)
wait_port 18999
BENCH_KEY="" BENCH_PATH=/ measure "baseline: bare axum fixed JSON" get.lua http://127.0.0.1:18999
kill "${PIDS[-1]}"

for backend in $BACKENDS; do
  [[ " $SECTIONS " == *" backends "* ]] || break
  export MEMHOST_DATA_DIR="$WORK/$backend" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18998
  unset DATABASE_URL MEMHOST_SECRET
  if [ "$backend" = postgres ]; then
    db="memhost_bench_$$"
    psql -q "$PG/postgres" -c "CREATE DATABASE $db" >/dev/null
    export DATABASE_URL="$PG/$db" MEMHOST_SECRET=bench-secret-0123456789abcdef
  fi
  org=$("$BIN" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
  key=$("$BIN" keys create --org "$org" --scopes read,write,delete --json | jq -r .key)
  start_server "$backend"
  id=$(curl -s localhost:18998/v1/memories -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"text": "Alice likes green tea in the morning.", "metadata": {"user": "alice"}}' | jq -r .data.id)
  export BENCH_KEY="$key"
  BENCH_PATH="/v1/memories/$id" measure "$backend: GET /v1/memories/{id}" get.lua http://127.0.0.1:18998
  measure "$backend: POST /v1/memories" post.lua http://127.0.0.1:18998

  for n in $SIZES; do
    org_n=$("$BIN" orgs create --name "bench-$n" --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
    key_n=$("$BIN" keys create --org "$org_n" --scopes read --json | jq -r .key)
    start=$(date +%s)
    "$SEED" "$org_n" "$n" 2>/dev/null
    echo "$backend: seeded $n memories in $(( $(date +%s) - start ))s"
    if [ "$backend" = postgres ]; then
      # What autovacuum would do soon after a bulk load: fresh statistics, so
      # the planner knows the org is large and picks the HNSW index.
      psql -q "$DATABASE_URL" -c "ANALYZE memories" >/dev/null
    fi
    # One query first: embedded mode loads the org's vectors on first use.
    curl -s -o /dev/null localhost:18998/v1/retrieve -H "Authorization: Bearer $key_n" -H 'Content-Type: application/json' -d '{"context": "warm up"}'
    BENCH_KEY="$key_n" measure "$backend: retrieve @${n} (1 conn)" retrieve.lua http://127.0.0.1:18998 1 1
    BENCH_KEY="$key_n" measure "$backend: retrieve @${n} (${CONN} conn)" retrieve.lua http://127.0.0.1:18998
  done
  stop_server
  if [ "$backend" = postgres ]; then
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  fi
done

# Rate limits: the same GET with limits off, decided in process, and decided
# on Redis (one Lua call per request), on one SQLite data directory.
if [[ " $SECTIONS " == *" limits "* ]]; then
  export MEMHOST_DATA_DIR="$WORK/limits" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18998
  unset DATABASE_URL MEMHOST_SECRET
  org=$("$BIN" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
  key=$("$BIN" keys create --org "$org" --scopes read,write --json | jq -r .key)
  start_server limits-setup
  id=$(curl -s localhost:18998/v1/memories -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"text": "Alice likes green tea in the morning.", "metadata": {"user": "alice"}}' | jq -r .data.id)
  stop_server
  export BENCH_KEY="$key" BENCH_PATH="/v1/memories/$id"
  prefix="memhost:bench:$$:"
  for mode in off in-process redis; do
    case $mode in
      off) start_server "limits-$mode" MEMHOST_LIMITS__ENABLED=false ;;
      in-process) start_server "limits-$mode" ;;
      redis) start_server "limits-$mode" REDIS_URL="$REDIS" MEMHOST_LIMITS__REDIS_PREFIX="$prefix" ;;
    esac
    # Check the mode took: headers present exactly when limits are on.
    if curl -s -D - -o /dev/null "localhost:18998$BENCH_PATH" -H "Authorization: Bearer $key" | grep -qi '^ratelimit-limit'; then
      [ "$mode" != off ] || { echo "limits still on with ENABLED=false" >&2; exit 1; }
    else
      [ "$mode" = off ] || { echo "no RateLimit headers with limits $mode" >&2; exit 1; }
    fi
    measure "limits $mode: GET /v1/memories/{id}" get.lua http://127.0.0.1:18998
    stop_server
  done
  redis-cli -u "$REDIS" --scan --pattern "${prefix}*" | xargs -r redis-cli -u "$REDIS" DEL >/dev/null
fi
