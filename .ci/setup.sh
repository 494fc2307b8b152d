#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks for the full test suite:
# build dependencies of the host, the pgvector extension for PostgreSQL, the
# Python and JavaScript plugin toolchains, and redis-server (the limits tests start private ones and share the local one).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for pkg in pkg-config libssl-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash .ci/install-pgvector.sh

# Python (componentize-py) and JavaScript (jco) plugin toolchains, for the
# tests that build the templates in those languages.
bash .ci/install-guest-toolchains.sh

# The plugins build for wasm32-wasip2. rust-toolchain.toml lists the target,
# but rustup adds listed targets only when it installs the toolchain, not to
# one that is already installed (the host's build script also checks).
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi

# PostgreSQL is started before a session on this kind of machine; start it if it is not.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -n | tail -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
# Redis too (rate-limit counters shared by instances in the tests).
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting Redis"
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
echo "setup: ready"
