# Shared by the HTTP benchmark scripts (sourced): a scratch directory and
# the servers started in it, cleaned up on exit, and a wait for a port.
# The bench orgs' limits: far above what any measurement sends, so the
# numbers are the server's cost, not a tier's refusals.
UNLIMITED='{"rate_limits": {"requests_per_minute": 4000000000, "requests_per_day": 4000000000, "concurrent": 100000, "per_ip_requests_per_minute": 0}}'
PG=${MEMHOST_TEST_PG:-postgres://postgres@127.0.0.1:5432}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# port [path]: waits until something answers on 127.0.0.1:port.
wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
