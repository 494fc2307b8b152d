#!/usr/bin/env bash
# The request path's cost: GET /v1/memories/{id} and POST /v1/memories on
# SQLite and PostgreSQL with two server binaries (BEFORE and AFTER, e.g. the
# commit before a change and after it), alternating in one run; then an
# unauthenticated flood (wrong keys from one address) against each, with a
# keyed client's latency measured beside it.
#
#   BEFORE=/tmp/memhost-before AFTER=target/release/memhost host/benches/http/request_path.sh
#   DUR=10s ROUNDS=1 BACKENDS=sqlite …      # quicker
#   SKIP_FLOOD=1 …                           # only the GET/POST rounds
#   BEFORE=$B AFTER=$B BEFORE_ENV=MEMHOST_BENCHMARK_METERING_OFF=true …
#                                            # one binary, metering off vs on
#
# BEFORE_ENV / AFTER_ENV: extra VAR=value settings for that side's server.
# A binary that has `memhost models` gets one model directory, installed
# once before the first round (MODELS_DIR to reuse one), so no server
# fetches and loads the semantic model, then re-embeds, while it is measured.
#
# Needs wrk and jq (apt-get install wrk jq) and, for postgres, the local
# PostgreSQL with pgvector (.ci/setup.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
export BENCH_DIR="$ROOT/host/benches/http"
DUR=${DUR:-20s}
CONN=${CONN:-64}
ROUNDS=${ROUNDS:-2}
# The flood runs a little longer than the keyed client measured inside it.
FLOOD_DUR=${FLOOD_DUR:-$(( ${DUR%s} + 4 ))s}
BACKENDS=${BACKENDS:-"sqlite postgres"}
BEFORE=${BEFORE:?the binary before the change}
AFTER=${AFTER:-$ROOT/target/release/memhost}
source "$BENCH_DIR/lib.sh"
read -r -a BEFORE_SETTINGS <<<"${BEFORE_ENV:-}"
read -r -a AFTER_SETTINGS <<<"${AFTER_ENV:-}"
MODELS_DIR=${MODELS_DIR:-$WORK/models}
has_models() { "$1" models --help >/dev/null 2>&1; }
for bin in "$BEFORE" "$AFTER"; do
  if has_models "$bin" && [ -z "$(ls -A "$MODELS_DIR" 2>/dev/null)" ]; then
    echo "installing the embedding model into $MODELS_DIR (once)"
    MEMHOST_DATA_DIR="$WORK/model-pull" MEMHOST_MODELS__DIR="$MODELS_DIR" MEMHOST_LOG=warn "$bin" models pull all-minilm-l6-v2 >/dev/null
  fi
done
# side binary: the environment of that side's server (models dir, settings).
side_env() {
  local -a e=()
  has_models "$2" && e+=("MEMHOST_MODELS__DIR=$MODELS_DIR")
  if [ "$1" = before ]; then e+=("${BEFORE_SETTINGS[@]}"); else e+=("${AFTER_SETTINGS[@]}"); fi
  if [ ${#e[@]} -gt 0 ]; then printf '%s\n' "${e[@]}"; fi
}
# The server's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
measure() { # label script [connections] [threads]
  local out t0 t1 n
  t0=$(cpu_ticks)
  out=$(wrk -t"${4:-2}" -c"${3:-$CONN}" -d"$DUR" -s "$BENCH_DIR/$2" http://127.0.0.1:18998) || { echo "$1: wrk failed" >&2; exit 1; }
  t1=$(cpu_ticks)
  n=$(grep '^RESULT' <<<"$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
  # Server CPU per request: less sensitive than throughput to what else
  # shares the machine (here: wrk itself).
  printf '%-44s %s cpu_us_per_req=%s %s\n' "$1" "$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)" \
    "$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))" "$(grep '^STATUS' <<<"$out" | cut -d' ' -f2- || true)"
}
start_server() { # binary log [VAR=value …]
  env "${@:3}" "$1" serve >"$WORK/$2.log" 2>&1 &
  PIDS+=($!)
  server=${PIDS[-1]}
  wait_port 18998 /health
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; wrk ${CONN} connections, ${DUR} each, ${ROUNDS} rounds; $(date -u +%F)"
echo "before: $BEFORE ($(sha256sum "$BEFORE" | cut -c1-12)) ${BEFORE_ENV:-}; after: $AFTER ($(sha256sum "$AFTER" | cut -c1-12)) ${AFTER_ENV:-}"

for backend in $BACKENDS; do
  for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    dir="$WORK/$backend-$which"
    export MEMHOST_DATA_DIR="$dir" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18998
    unset DATABASE_URL MEMHOST_SECRET
    if [ "$backend" = postgres ]; then
      db="memhost_bench_rp_${which}_$$"
      psql -q "$PG/postgres" -c "CREATE DATABASE $db" >/dev/null
      echo "$PG/$db" >"$WORK/$backend-$which.db"
      export DATABASE_URL="$PG/$db" MEMHOST_SECRET=bench-secret-0123456789abcdef
    fi
    org=$("$bin" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
    "$bin" keys create --org "$org" --scopes read,write,delete --json | jq -r .key >"$WORK/$backend-$which.key"
  done
  for round in $(seq 1 "$ROUNDS"); do
    for which in before after; do
      bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
      export MEMHOST_DATA_DIR="$WORK/$backend-$which" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18998
      unset DATABASE_URL MEMHOST_SECRET
      if [ "$backend" = postgres ]; then
        export DATABASE_URL=$(cat "$WORK/$backend-$which.db") MEMHOST_SECRET=bench-secret-0123456789abcdef
      fi
      export BENCH_KEY=$(cat "$WORK/$backend-$which.key")
      mapfile -t settings < <(side_env "$which" "$bin")
      start_server "$bin" "$backend-$which-$round" "${settings[@]}"
      id=$(curl -s localhost:18998/v1/memories -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
            -d '{"text": "Alice likes green tea in the morning.", "metadata": {"user": "alice"}}' | jq -r .data.id)
      BENCH_PATH="/v1/memories/$id" measure "$backend $which r$round: GET /v1/memories/{id}" get.lua
      measure "$backend $which r$round: POST /v1/memories" post.lua
      stop_server
    done
  done
done

if [ -n "${SKIP_FLOOD:-}" ]; then
  for which in before after; do
    f="$WORK/postgres-$which.db"
    [ -f "$f" ] && psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $(basename "$(cat "$f")") WITH (FORCE)" >/dev/null
  done
  exit 0
fi

# The flood: 62 connections send wrong keys from one address while one
# connection with a valid key reads a memory from another; first the keyed
# client alone. Addresses come from X-Forwarded-For, as behind a proxy.
export MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18998 MEMHOST_LIMITS__TRUST_FORWARDED_FOR=true
unset DATABASE_URL MEMHOST_SECRET
for which in before after; do
  bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
  export MEMHOST_DATA_DIR="$WORK/flood-$which"
  org=$("$bin" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
  export BENCH_KEY=$("$bin" keys create --org "$org" --scopes read,write --json | jq -r .key)
  mapfile -t settings < <(side_env "$which" "$bin")
  start_server "$bin" "flood-$which" "${settings[@]}"
  id=$(curl -s localhost:18998/v1/memories -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
        -d '{"text": "Alice likes green tea in the morning."}' | jq -r .data.id)
  export BENCH_PATH="/v1/memories/$id"
  measure "flood $which: keyed GET alone (1 conn)" get.lua 1 1
  (DUR=$FLOOD_DUR BENCH_PATH=/v1/memories measure "flood $which: wrong keys (62 conn)" flood.lua 62 1) &
  flood=$!
  sleep 2
  measure "flood $which: keyed GET during flood (1 conn)" get.lua 1 1
  wait "$flood"
  stop_server
done
for which in before after; do
  f="$WORK/postgres-$which.db"
  [ -f "$f" ] && psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $(basename "$(cat "$f")") WITH (FORCE)" >/dev/null
done
true
