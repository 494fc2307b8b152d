#!/usr/bin/env bash
# Instructions per GET /v1/memories/{id} (SQLite) under callgrind, for one or
# more server binaries: deterministic where throughput on a shared machine
# is not. 200 warm-up requests, then 2000 counted.
#
#   host/benches/instructions/get.sh /tmp/memhost-before target/release/memhost
#
# Needs valgrind and jq. The plugin instance pool is sized down to one call
# (MEMHOST_PLUGINS__MAX_CONCURRENT_CALLS=1): valgrind cannot map the default
# pool's address-space reservation.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=2000
for B in "$@"; do
  D=$(mktemp -d)
  export MEMHOST_DATA_DIR=$D/data MEMHOST_LOG=warn MEMHOST_LISTEN=127.0.0.1:18996 MEMHOST_PLUGINS__MAX_CONCURRENT_CALLS=1
  org=$("$B" orgs create --name b --plan enterprise \
    --overrides '{"rate_limits": {"requests_per_minute": 4000000000, "requests_per_day": 4000000000, "concurrent": 100000}}' --json | jq -r .id)
  key=$("$B" keys create --org "$org" --json | jq -r .key)
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/cg.out" "$B" serve >"$D/server.log" 2>&1 &
  vp=$!
  for _ in $(seq 1 1200); do curl -s -o /dev/null localhost:18996/health && break; sleep 0.5; done
  id=$(curl -s localhost:18996/v1/memories -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"text": "Alice likes green tea in the morning."}' | jq -r .data.id)
  python3 "$HERE/get_n.py" 18996 "$key" "/v1/memories/$id" 200
  callgrind_control -i on "$vp" >/dev/null
  python3 "$HERE/get_n.py" 18996 "$key" "/v1/memories/$id" "$N"
  callgrind_control -i off "$vp" >/dev/null
  kill "$vp"; wait "$vp" 2>/dev/null || true
  total=$(grep -o 'Collected : [0-9]*' "$D/server.log" | grep -o '[0-9]*$')
  printf '%-40s %s instructions per request (%s for %s requests)\n' "$B" "$(( total / N ))" "$total" "$N"
  rm -rf "$D"
done
