#!/usr/bin/env bash
# Installs the plugin toolchains for Python and JavaScript guests, at the
# versions memhost's templates pin (host/src/cli/scaffold.rs), into
# target/guest-toolchains/ (or $1): componentize-py from PyPI in a virtual
# environment, jco and the preview2-shim pin from npm. The tests that build
# the Python and JS templates use these. Idempotent: quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="${1:-target/guest-toolchains}"
COMPONENTIZE_PY=0.25.0
JCO=1.35.0
PREVIEW2_SHIM=0.25.0
mkdir -p "$dest"

if [ ! -x "$dest/py/bin/componentize-py" ] || ! "$dest/py/bin/componentize-py" --version | grep -q "$COMPONENTIZE_PY"; then
  echo "guest toolchains: componentize-py $COMPONENTIZE_PY (PyPI)"
  rm -rf "$dest/py"
  python3 -m venv "$dest/py"
  "$dest/py/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
fi

if [ ! -x "$dest/js/node_modules/.bin/jco" ] || [ "$("$dest/js/node_modules/.bin/jco" --version)" != "$JCO" ]; then
  echo "guest toolchains: jco $JCO, preview2-shim $PREVIEW2_SHIM (npm)"
  rm -rf "$dest/js"
  mkdir -p "$dest/js"
  cat > "$dest/js/package.json" <<JSON
{
  "name": "memhost-guest-toolchains",
  "private": true,
  "type": "module",
  "devDependencies": {"@bytecodealliance/jco": "$JCO", "@bytecodealliance/preview2-shim": "$PREVIEW2_SHIM"},
  "overrides": {"@bytecodealliance/preview2-shim": "$PREVIEW2_SHIM"}
}
JSON
  (cd "$dest/js" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
echo "guest toolchains: ready in $dest"
