#!/usr/bin/env bash
# Retrieval at scale for BENCHMARKS.md (issue 14): embedding throughput,
# POST /v1/memories with the semantic model against the hashing embedder, and
# retrieval latency at 100 000 and 1 000 000 memories of one org (SQLite's
# in-process int8 scan) and at 100 000 on PostgreSQL (HNSW) with a selective
# filter, all in process through MemoryService (bench_retrieve), in one run.
#
#   MODELS=target/tmp/models host/benches/retrieval/scale.sh
#   SIZES="100000" BACKENDS=sqlite host/benches/retrieval/scale.sh   # quicker
#
# MODELS: a models directory holding all-minilm-l6-v2 (`memhost models pull`).
# Needs wrk (apt-get install wrk) and, for postgres, the local PostgreSQL with
# pgvector (.ci/setup.sh). SKIP_EMBED=1 skips the throughput part.
# Seeding uses the hashing embedder (the scan costs the same whatever made
# the vectors; embedding a million texts would take most of an hour here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
MODELS=$(cd "${MODELS:-target/tmp/models}" && pwd)
SIZES=${SIZES:-"100000 1000000"}
BACKENDS=${BACKENDS:-"sqlite postgres"}
QUERIES=${QUERIES:-300}
export BENCH_DIR="$ROOT/host/benches/http"
source "$BENCH_DIR/lib.sh"
cargo build --release -q --bin memhost --example bench_embed --example bench_seed --example bench_retrieve --example bench_scan
BIN=target/release/memhost
EX=target/release/examples
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"

if [ -z "${SKIP_EMBED:-}" ]; then
  echo "== embedding throughput, one thread"
  "$EX/bench_embed" "$MODELS/all-minilm-l6-v2" 2000
fi

echo "== the in-process scan alone at 1 000 000 vectors: int8 against sign pass + int8, with its recall"
"$EX/bench_scan" 1000000 100 100 4000,16000 2>/dev/null

echo "== POST /v1/memories: semantic model vs hashing embedder (wrk, 10 s each)"
for model in all-minilm-l6-v2 hash; do
  export MEMHOST_DATA_DIR="$WORK/post-$model" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18997 \
    MEMHOST_MODELS__DIR="$MODELS" MEMHOST_MODELS__AUTO_PULL=false MEMHOST_EMBEDDINGS__MODEL=$model
  org=$("$BIN" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
  key=$("$BIN" keys create --org "$org" --name bench --scopes read,write --json | jq -r .key)
  "$BIN" serve >"$WORK/post-$model.log" 2>&1 &
  pid=$!
  wait_port 18997 /health
  for c in 1 16; do
    line=$(BENCH_KEY=$key wrk -t1 -c$c -d10s -s "$BENCH_DIR/post.lua" http://127.0.0.1:18997 | grep '^RESULT')
    printf '%-40s %s\n' "POST $model, $c connection(s)" "${line#RESULT }"
  done
  kill $pid; wait $pid 2>/dev/null || true
done
unset MEMHOST_EMBEDDINGS__MODEL

retrieve() { # label, then bench_retrieve arguments after the org
  local label=$1; shift
  printf '%-44s ' "$label"
  "$EX/bench_retrieve" "$org" "$QUERIES" "$@" | tail -1
}

for backend in $BACKENDS; do
  export MEMHOST_DATA_DIR="$WORK/scale-$backend" MEMHOST_LOG=warn MEMHOST_MODELS__DIR="$MODELS" \
    MEMHOST_MODELS__AUTO_PULL=false MEMHOST_EMBEDDINGS__MODEL=hash
  unset DATABASE_URL MEMHOST_SECRET
  if [ "$backend" = postgres ]; then
    db="memhost_scale_$$"
    psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" MEMHOST_SECRET=bench-secret-0123456789abcdef0123
  fi
  org=$("$BIN" orgs create --name scale --plan enterprise --json | jq -r .id)
  seeded=0
  for size in $SIZES; do
    [ "$backend" = postgres ] && [ "$size" -gt 100000 ] && break
    started=$(date +%s)
    "$EX/bench_seed" "$org" $((size - seeded)) >/dev/null 2>&1
    seeded=$size
    # What autovacuum does after a bulk load, sooner: the planner's and the
    # keyword budget's statistics.
    [ "$backend" = postgres ] && psql -q -h 127.0.0.1 -U postgres -d "$db" -c "ANALYZE memories"
    echo "== $backend, $size memories (seeded in $(( $(date +%s) - started )) s)"
    retrieve "hybrid" hybrid
    retrieve "vector" vector
    retrieve "keyword" keyword
    retrieve "hybrid, filter user_id (1 in 100)" hybrid '{"user_id": "user-7"}'
    retrieve "vector, filter bucket = 3 (1 in 10)" vector '{"bucket": 3}'
  done
  if [ "$backend" = postgres ]; then
    unset DATABASE_URL
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db" >/dev/null
  fi
done
