#!/usr/bin/env bash
# Builds {name}.wasm from main.zig and runbox.zig with Zig 0.17.1
# (`scripts/bootstrap.sh --zig-steps` installs it from PyPI's ziglang into a
# venv; RUNBOX_ZIG_STEPS names another such venv, RUNBOX_ZIG a zig executable).
set -euo pipefail
cd "$(dirname "$0")"
runbox_root="{root}"
zig_version=0.17.1
venv="${RUNBOX_ZIG_STEPS:-${CARGO_TARGET_DIR:-$runbox_root/target}-zig-steps}"
if [ -n "${RUNBOX_ZIG:-}" ]; then
    zig=("$RUNBOX_ZIG")
elif "$venv/bin/python3" -c "import ziglang" 2>/dev/null; then
    zig=("$venv/bin/python3" -m ziglang)
else
    echo "build: Zig is not in $venv: run $runbox_root/scripts/bootstrap.sh --zig-steps (or set RUNBOX_ZIG_STEPS or RUNBOX_ZIG)" >&2
    exit 1
fi
have=$("${zig[@]}" version)
if [ "$have" != "$zig_version" ]; then
    echo "build: warning: this step was written for Zig $zig_version, not $have (Zig's std changes between releases)" >&2
fi
# wasm32-wasi: a WASI command exporting `_start` and `memory`, importing
# only the runbox functions it calls. ReleaseSafe keeps Zig's safety checks:
# a failed one escalates with its message (runbox.panic).
# --stack: Zig's default stack is 16 MiB of linear memory, which would make
# the module's initial memory ~17 MiB, over small `memory_mib` limits; 64 KiB
# makes it about 2 pages (128 KiB). Keep big buffers on the heap (the
# arena), or raise it here.
"${zig[@]}" build-exe main.zig -target wasm32-wasi -O ReleaseSafe -fstrip \
    --stack 65536 -femit-bin={name}.wasm
echo "built {name}.wasm"
