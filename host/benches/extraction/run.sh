#!/usr/bin/env bash
# Extraction off the request path (issue 15), on SQLite (embedded mode):
#
# 1. rule extraction throughput: one batch job of DIALOGUES dialogues of six
#    turns each (extract-rules), turns per second from the job's start to its
#    end (no other load);
# 2. POST /v1/memories latency (wrk, CONN connections, DUR) alone, then with
#    extraction jobs running beside it (JOBS jobs of DIALOGUES dialogues
#    queued first, the host's two workers busy on them throughout);
# 3. POST /v1/query/answer latency: the same question (cache hits) and a new
#    question every time (misses), with the local extractive answerer over
#    MEMORIES memories. With a remote LLM answerer a miss also waits for it.
#
#   BIN=target/release/memhost host/benches/extraction/run.sh
#   DUR=10s DIALOGUES=500 …    # quicker
#
# The hashing embedder (MEMHOST_EMBEDDINGS__MODEL=hash), so the numbers are
# the host's own cost, not the semantic model's. Needs wrk, jq and curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
export BENCH_DIR="$ROOT/host/benches/http"  # common.lua, post.lua
HERE="$ROOT/host/benches/extraction"
BIN=${BIN:-$ROOT/target/release/memhost}
DUR=${DUR:-15s}
CONN=${CONN:-8}
DIALOGUES=${DIALOGUES:-1000}
JOBS=${JOBS:-10}
MEMORIES=${MEMORIES:-2000}
for tool in wrk jq curl; do command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk jq curl)" >&2; exit 1; }; done
source "$ROOT/host/benches/http/lib.sh"

export MEMHOST_DATA_DIR="$WORK/data" MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18997
export MEMHOST_EMBEDDINGS__MODEL=hash MEMHOST_MODELS__AUTO_PULL=false MEMHOST_JOBS__MAX_PENDING_PER_ORG=1000
unset DATABASE_URL REDIS_URL
API=http://127.0.0.1:18997
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F); binary $BIN ($(sha256sum "$BIN" | cut -c1-12))"

org=$("$BIN" orgs create --name bench --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
export BENCH_KEY=$("$BIN" keys create --org "$org" --scopes read,write,delete --json | jq -r .key)
"$BIN" serve >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_port 18997 /health

# A batch of dialogues (six turns: three user statements, three replies).
batch() { # n tag
  jq -cn --argjson n "$1" --arg tag "$2" '{dialogues: [range(0; $n) | . as $i | {user_id: "user\($i % 50)", messages: [
    {role: "user", content: "Hi! I love green tea in the morning and my sister lives in Porto number \($i)."},
    {role: "assistant", content: "Nice to hear that."},
    {role: "user", content: "I work as a nurse at the city hospital, \($tag) \($i)."},
    {role: "assistant", content: "That sounds demanding."},
    {role: "user", content: "My favorite book is Dune; I prefer hiking over running."},
    {role: "assistant", content: "Good choices."}]}]}'
}
post() { curl -s "$API$1" -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' -d @-; }
wait_job() { # id
  while :; do
    s=$(curl -s "$API/v1/batch/$1" -H "Authorization: Bearer $BENCH_KEY" | jq -r .data.status)
    [ "$s" = completed ] || [ "$s" = failed ] || [ "$s" = canceled ] && break
    sleep 0.2
  done
  curl -s "$API/v1/batch/$1" -H "Authorization: Bearer $BENCH_KEY" | jq -c '.data | {status, done_items, failed_items, started_at, finished_at}'
}
secs() { # rfc3339 → seconds with fraction
  python3 -c "import sys,datetime;print(datetime.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')).timestamp())" "$1"
}

# 1. Rule extraction throughput.
id=$(batch "$DIALOGUES" solo | post /v1/batch/extract | jq -r .data.id)
job=$(wait_job "$id")
t=$(python3 -c "print($(secs "$(jq -r .finished_at <<<"$job")") - $(secs "$(jq -r .started_at <<<"$job")"))")
echo "rule extraction: $DIALOGUES dialogues, $((DIALOGUES * 6)) turns in ${t}s: $(python3 -c "print(round($DIALOGUES * 6 / $t))") turns/s, $(python3 -c "print(round($DIALOGUES / $t))") dialogues/s ($job)"

# 2. POST /v1/memories alone, then beside extraction jobs.
echo "POST /v1/memories alone:          $(wrk -t2 -c"$CONN" -d"$DUR" -s "$ROOT/host/benches/http/post.lua" "$API" | grep '^RESULT' | cut -d' ' -f2-)"
ids=()
for j in $(seq 1 "$JOBS"); do ids+=($(batch "$DIALOGUES" "load$j" | post /v1/batch/extract | jq -r .data.id)); done
sleep 1
echo "POST /v1/memories beside jobs:    $(wrk -t2 -c"$CONN" -d"$DUR" -s "$ROOT/host/benches/http/post.lua" "$API" | grep '^RESULT' | cut -d' ' -f2-)"
running=$(curl -s "$API/v1/batch?status=running" -H "Authorization: Bearer $BENCH_KEY" | jq '.data.jobs | length')
echo "  (jobs still running at the end of the measurement: $running of $JOBS)"
for i in "${ids[@]}"; do curl -s "$API/v1/batch/$i/cancel" -X POST -H "Authorization: Bearer $BENCH_KEY" >/dev/null || true; done

# 3. Answers: cache hits vs misses, over a fresh org's memories.
org2=$("$BIN" orgs create --name bench2 --plan enterprise --overrides "$UNLIMITED" --json | jq -r .id)
export BENCH_KEY=$("$BIN" keys create --org "$org2" --scopes read,write,delete --json | jq -r .key)
for chunk in $(seq 0 $(( MEMORIES / 1000 - 1 ))); do
  jq -cn --argjson c "$chunk" '{memories: [range(0; 1000) | {text: "Memory \($c * 1000 + .): Alice likes item \(.) in the morning, with tea number \(. % 37)."}]}' \
    | post /v1/batch/memories >/dev/null
done
echo "POST /v1/query/answer, cache hit:  $(wrk -t2 -c"$CONN" -d"$DUR" -s "$HERE/answer_hit.lua" "$API" | grep '^RESULT' | cut -d' ' -f2-)"
echo "POST /v1/query/answer, cache miss: $(wrk -t2 -c"$CONN" -d"$DUR" -s "$HERE/answer_miss.lua" "$API" | grep '^RESULT' | cut -d' ' -f2-)"
curl -s "$API/metrics" | grep '^memhost_response_cache_total' || true
