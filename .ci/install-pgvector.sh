#!/usr/bin/env bash
# Builds and installs the pgvector extension for the local PostgreSQL from
# Debian's source package (bookworm has no binary package; trixie has the source).
# Idempotent: does nothing when the extension is already available.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1)}
PG_MAJOR=${PG_MAJOR:-15}
SHAREDIR=$(/usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config --sharedir 2>/dev/null || echo /usr/share/postgresql/"$PG_MAJOR")

if [ -f "$SHAREDIR/extension/vector.control" ]; then
  echo "pgvector: already installed for PostgreSQL $PG_MAJOR"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

SRC_LIST=/etc/apt/sources.list.d/memhost-trixie-src.sources
if [ ! -f "$SRC_LIST" ]; then
  $SUDO tee "$SRC_LIST" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends build-essential dpkg-dev "postgresql-server-dev-$PG_MAJOR" >/dev/null

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source -qq --download-only pgvector >/dev/null
tar xf pgvector_*.orig.tar.* 
cd pgvector-*/
make -s PG_CONFIG=/usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config OPTFLAGS="" >/dev/null
$SUDO make -s PG_CONFIG=/usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config install >/dev/null
echo "pgvector: installed for PostgreSQL $PG_MAJOR"
