#!/usr/bin/env bash
# The disk-pressure example, end to end, on the embedded default store:
# steps written in Python (measure) and TypeScript (prune), built as
# WebAssembly components from the scaffolds of `runbox new step`, against
# a real volume (a directory with a quota) whose logs fill it. The runbook
# measures read-only, prunes old logs once a named human (alice) approves,
# measures again and resolves.
#
# Environment (all optional):
#   RUNBOX_DATA_DIR   store directory (default: ~/.local/share/runbox)
#   RUNBOX_BIN        a built runbox binary (default: cargo build)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

# Bold headings for a person at a terminal; plain text otherwise or under NO_COLOR.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

# componentize-py and componentize-js, beside the target dir (once).
"$root/scripts/bootstrap.sh" --python-steps --js-steps

if [ -z "${RUNBOX_BIN:-}" ]; then
    # The test command's own build, as in api-outage/run.sh.
    say "building runbox (the first build compiles RocksDB and wasmtime: ~25 minutes on 2 cores)"
    cargo test --quiet --workspace --no-run --manifest-path "$root/Cargo.toml"
    RUNBOX_BIN="$target/debug/runbox"
fi
runbox() { "$RUNBOX_BIN" "$@"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/runbox-disk-pressure.XXXXXX")"
say "staging the example in $work"
cp "$here/runbook.toml" "$here/tools.toml" "$here/disk.py" "$work/"
mkdir -p "$work/modules"

# Each step starts as the scaffold a newcomer gets, with the example's
# source and world put in; the scaffold's build.sh builds it.
build_step() {
    local name=$1 lang=$2 source=$3
    say "runbox new step $name --lang $lang, with $name/$source; ./build.sh"
    runbox new step "$name" --lang "$lang" --dir "$work/build/$name" > /dev/null
    cp "$here/$name/$source" "$work/build/$name/$source"
    cp "$here/$name/world.wit" "$work/build/$name/wit/world.wit"
    "$work/build/$name/build.sh"
    cp "$work/build/$name/$name.wasm" "$work/modules/"
}
build_step measure python app.py
build_step prune ts app.ts

say "filling the volume: 31 logs of 1 MiB against a 32 MiB quota"
(cd "$work" && python3 disk.py fill logs 31 1 32 && python3 disk.py usage logs)

data_dir="${RUNBOX_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/runbox}"
# shellcheck source=../demo.sh
. "$here/../demo.sh"
demo_token
demo_alice

id="DISK-$(date +%Y%m%d-%H%M%S)-$$"
say "runbox test: every branch of the runbook in memory, tools scripted (cases/)"
runbox test "$work/runbook.toml" --case "$here"/cases/*.toml

say "runbox pin: the reviewer pins the components they reviewed"
runbox pin "$work/runbook.toml"

say "runbox review --deny warnings: what each step may touch (the merge gate)"
runbox review "$work/runbook.toml" --deny warnings

say "runbox open $id"
runbox open "$id" --runbook "$work/runbook.toml" --param volume=logs

say "runbox run $id   (measure, then stop at the approval gate)"
set +e
runbox run "$id"
code=$?
set -e
echo "(exit code $code: 3 = awaiting approval)"
[ "$code" -eq 3 ] || { runbox timeline "$id"; exit 1; }

say "runbox approve $id prune --as alice --key …   (alice signs her approval of this attempt)"
runbox approve "$id" prune --as alice --key "$alice_key"

say "runbox run $id   (prune, verify, resolve)"
runbox run "$id"
echo "the volume now: $(cd "$work" && python3 disk.py usage logs)"

say "runbox replay $id   (every attempt re-run against what it saw: no tool runs, nothing is written)"
runbox replay "$id"

say "runbox verify $id"
runbox verify "$id"

say "runbox timeline $id"
runbox timeline "$id"
echo "(the example's files stay in $work; remove it when done: rm -r $work)"
