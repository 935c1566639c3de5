#!/usr/bin/env bash
# Builds the example steps and runs each through `runbox exec`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
steps_dir="${CARGO_TARGET_DIR}-wasm-steps"
cargo build --quiet -p runbox --manifest-path "$root/Cargo.toml"
CARGO_TARGET_DIR="$steps_dir" cargo build --quiet --release --target wasm32-wasip1 --manifest-path "$root/steps/Cargo.toml"
runbox="$CARGO_TARGET_DIR/debug/runbox"
demo="$(mktemp -d)"
trap 'rm -rf "$demo"' EXIT
cat > "$demo/tools.toml" <<'TOML'
[tools.http_probe]
mode = "read"
argv = ["echo", "503"]
[tools.http_probe.args]
service = { type = "string" }
TOML
cat > "$demo/probe.toml" <<'TOML'
[grants]
tools = ["http_probe"]
TOML
echo "== probe (Rust) =="
"$runbox" exec "$steps_dir/wasm32-wasip1/release/probe.wasm" --policy "$demo/probe.toml" --tools "$demo/tools.toml" --input '{"service":"api"}'
echo "== escalate (WAT) =="
"$runbox" exec "$root/steps/wat/escalate.wat" --input '{"message":"api still down"}' || true
