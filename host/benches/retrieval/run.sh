#!/usr/bin/env bash
# Retrieval-quality benchmark end to end: starts a fresh memhost (embedded
# SQLite in a scratch directory, a free port), creates an enterprise org with
# limits no run reaches and a key, runs run.py against it, stops the server.
#
#   host/benches/retrieval/run.sh                        # BIN=target/release/memhost
#   BIN=target/debug/memhost host/benches/retrieval/run.sh --json-out /tmp/retrieval.json
#   LABEL=semantic EMBEDDER=... MEMHOST_EMBEDDINGS__PROVIDER=... host/benches/retrieval/run.sh --modes hybrid,vector
#
# The server inherits the caller's environment, so every MEMHOST_* variable
# (and anything else the server reads, such as EMBEDDER) set by the caller
# reaches it unchanged; this script only sets MEMHOST_DATA_DIR and
# MEMHOST_LISTEN, MEMHOST_LOG if unset (warnings, and the start-up lines
# that name the embedder), and unsets the bare
# DATABASE_URL / REDIS_URL so an ambient value cannot point the "fresh" server
# at a shared database (MEMHOST_DATABASE_URL still passes through if you mean
# it). LABEL names the embedder in the table (default: $EMBEDDER, else
# $MEMHOST_EMBEDDINGS__MODEL, else $MEMHOST_EMBEDDINGS__PROVIDER, else
# "default"). SERVER_LOG=FILE keeps the server's log; its lines that mention
# an embedder or model are printed after the run either way, to show what
# actually served (a fresh data directory may start on one embedder and
# switch when a model arrives). Arguments go to run.py. Needs python3, curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
HERE="$ROOT/host/benches/retrieval"
# WORK (a scratch directory removed on exit), PIDS (killed on exit), UNLIMITED.
source "$ROOT/host/benches/http/lib.sh"

BIN=${BIN:-target/release/memhost}
if [ -x "$BIN" ]; then BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
elif [ -x "$ROOT/$BIN" ]; then BIN="$ROOT/$BIN"
else echo "no memhost binary at $BIN (build it, or set BIN)" >&2; exit 1; fi
LABEL=${LABEL:-${EMBEDDER:-${MEMHOST_EMBEDDINGS__MODEL:-${MEMHOST_EMBEDDINGS__PROVIDER:-default}}}}

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MEMHOST_DATA_DIR="$WORK/data" MEMHOST_LISTEN="127.0.0.1:$PORT" MEMHOST_LOG=${MEMHOST_LOG:-warn,memhost::app=info}
unset DATABASE_URL REDIS_URL
cd "$ROOT" # as the other benches: ./policies is the repository's

json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
org=$("$BIN" orgs create --name retrieval-bench --plan enterprise --overrides "$UNLIMITED" --json | json_field id)
key=$("$BIN" keys create --org "$org" --name retrieval-bench --scopes read,write,delete --json | json_field key)

"$BIN" serve >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
server=${PIDS[-1]}
for i in $(seq 1 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "memhost exited during start:" >&2; tail -n 30 "$WORK/serve.log" >&2; exit 1
  fi
  [ "$i" -lt 600 ] || { echo "memhost did not answer on port $PORT in 60 s" >&2; tail -n 30 "$WORK/serve.log" >&2; exit 1; }
  sleep 0.1
done

echo "binary: $BIN ($(sha256sum "$BIN" | cut -c1-12)); label: $LABEL; $(nproc) cores; $(date -u +%F)"
status=0
python3 "$HERE/run.py" --url "http://127.0.0.1:$PORT" --key "$key" --label "$LABEL" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "run.py failed ($status); the server's last log lines:" >&2
  tail -n 30 "$WORK/serve.log" >&2
fi
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
if grep -qiE 'embedd|model' "$WORK/serve.log"; then
  echo "server log, embedder lines:" >&2
  grep -iE 'embedd|model' "$WORK/serve.log" | head -n 10 | cut -c1-300 >&2
fi
[ -z "${SERVER_LOG:-}" ] || cp "$WORK/serve.log" "$SERVER_LOG"
exit "$status"
