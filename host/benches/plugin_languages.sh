#!/usr/bin/env bash
# Builds the same pricing rule from memhost's templates in Rust, JavaScript
# (QuickJS and StarlingMonkey) and Python into target/bench-guests/, then
# runs the plugin_languages bench on them (see its header).
#
#     bash host/benches/plugin_languages.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
out="$root/target/bench-guests"
work="$out/projects"
bash .ci/install-guest-toolchains.sh >/dev/null
export MEMHOST_COMPONENTIZE_PY="$root/target/guest-toolchains/py/bin/componentize-py"
export MEMHOST_JCO="$root/target/guest-toolchains/js/node_modules/.bin/jco"
cargo build -q -p memhost --bin memhost
memhost="$root/target/debug/memhost"

rm -rf "$work" && mkdir -p "$work"
cd "$work"
for lang in rust python js; do
  "$memhost" plugin new pricing "bench-$lang" --lang "$lang" >/dev/null
done
# StarlingMonkey: the JS project with the other backend, u64 as BigInt.
cp -r bench-js bench-sm
sed -i 's/^js_backend = .*/js_backend = "starlingmonkey"/' bench-sm/memhost-plugin.toml
sed -i 's/^const BIGINT_U64 = false;/const BIGINT_U64 = true;/' bench-sm/app.js
for p in bench-rust bench-python bench-js bench-sm; do
  (cd "$p" && "$memhost" plugin build >/dev/null && "$memhost" plugin test >/dev/null) || { echo "$p: build or fixtures failed" >&2; exit 1; }
done
cp bench-rust/target/wasm32-wasip2/release/bench_rust.wasm "$out/rust.wasm"
cp bench-python/bench-python.wasm "$out/python.wasm"
cp bench-js/bench-js.wasm "$out/quickjs.wasm"
cp bench-sm/bench-js.wasm "$out/starlingmonkey.wasm"
cp bench-js/config.example.json "$out/config.json"
cd "$root"
MEMHOST_BENCH_GUESTS="$out" cargo bench -p memhost --bench plugin_languages
