#!/usr/bin/env bash
# The api-outage example, end to end, on the embedded default store:
# a real HTTP service on loopback with an injected fault, real tools, and a
# runbook that diagnoses, checks the restart budget, waits for a named
# human's approval (scripted here as alice), restarts, verifies and resolves.
#
# With --agent, a scripted assistant (agent.py) drives the incident over MCP
# while alice approves from the CLI, as a human beside an AI assistant would.
#
# With --oncall, the on-call loop (oncall.sh): an alert posted to a real
# Alertmanager reaches `runbox serve`, whose routes.toml opens the incident,
# and the approval request reaches a local webhook receiver (receiver.py),
# which verifies its signature and prints it. Its data dir is in the work dir.
#
# With --console, the web console: `runbox serve` prints its address and a
# one-time link that enrolls a passkey for alice; she signs in and approves
# the restart in the browser (console.sh). Its data dir is in the work dir.
#
# Environment (all optional):
#   RUNBOX_DATA_DIR   store directory (default: ~/.local/share/runbox)
#   RUNBOX_BIN        a built runbox binary (default: cargo build)
#   RUNBOX_STEPS_DIR  built Rust step modules (default: cargo build of steps/)
#   RUNBOX_PYTHON     a python3 with the `mcp` package (--agent; default: bootstrap's venv)
set -euo pipefail
mode=cli
[ "${1:-}" = "--agent" ] && mode=agent
[ "${1:-}" = "--oncall" ] && mode=oncall
[ "${1:-}" = "--console" ] && mode=console
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

# Bold headings for a person at a terminal; plain text otherwise or under NO_COLOR.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

# Installs what a fresh machine lacks (Debian packages, the wasm32 target),
# or stops at once naming the command to run.
if [ "$mode" = agent ]; then
    "$root/scripts/bootstrap.sh" --python-mcp
elif [ "$mode" = oncall ]; then
    "$root/scripts/bootstrap.sh" --alertmanager
else
    "$root/scripts/bootstrap.sh"
fi

if [ -z "${RUNBOX_BIN:-}" ]; then
    # The test command's own build (`scripts/test` is `cargo test
    # --workspace`): one feature set and profile, so `./scripts/test` after
    # this example compiles nothing again (a `-p runbox` build unifies other
    # features, and the tests would rebuild wasmtime and RocksDB).
    say "building runbox (the first build compiles RocksDB and wasmtime: ~25 minutes on 2 cores)"
    cargo test --quiet --workspace --no-run --manifest-path "$root/Cargo.toml"
    RUNBOX_BIN="$target/debug/runbox"
fi
if [ -z "${RUNBOX_STEPS_DIR:-}" ]; then
    say "building the steps for wasm32-wasip1"
    CARGO_TARGET_DIR="$target-wasm-steps" cargo build --quiet --release \
        --target wasm32-wasip1 --manifest-path "$root/steps/Cargo.toml"
    RUNBOX_STEPS_DIR="$target-wasm-steps/wasm32-wasip1/release"
fi
runbox() { "$RUNBOX_BIN" "$@"; }

# The example works in one directory, kept when it ends: its runbook,
# tools and modules, the service's state, and the postmortem page.
work="$(mktemp -d "${TMPDIR:-/tmp}/runbox-api-outage.XXXXXX")"
stop_service() {
    for pid in "$work"/state/*.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
}
trap stop_service EXIT

say "staging the example in $work"
cp "$here/runbook.toml" "$here/tools.toml" "$here/service.py" "$here/probe.py" "$here/restart.sh" "$work/"
mkdir -p "$work/modules" "$work/state"
for step in probe restart wait-healthy; do
    cp "$RUNBOX_STEPS_DIR/$step.wasm" "$work/modules/"
done
clang --target=wasm32-wasi --sysroot=/usr -O2 -Wl,--strip-all \
    -o "$work/modules/restart_budget.wasm" "$root/steps/c/restart_budget.c"
cp "$root/steps/wat/escalate.wat" "$work/modules/"

say "starting the api service with an injected fault (it answers 503)"
setsid python3 "$work/service.py" "$work/state" api --fault </dev/null >"$work/state/api.log" 2>&1 &
for _ in $(seq 100); do [ -f "$work/state/api.port" ] && break; sleep 0.05; done
echo "api listens on 127.0.0.1:$(cat "$work/state/api.port"); GET /health -> $(python3 "$work/probe.py" api 2>/dev/null)"

# The data dir: the user's, unless a mode needs its own.
data_dir="${RUNBOX_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/runbox}"
# The on-call loop writes notify.toml and routes.toml into its data dir: its
# own, in the work dir, so no other data dir is told to page anyone.
if [ "$mode" = oncall ] || [ "$mode" = console ]; then
    data_dir="$work/data"
    mkdir -p "$data_dir"
    # shellcheck source=oncall.sh
    . "$here/oncall.sh"
    # shellcheck source=console.sh
    . "$here/console.sh"
fi
# shellcheck source=../demo.sh
. "$here/../demo.sh"
demo_token
demo_alice

id="API-$(date +%Y%m%d-%H%M%S)-$$"
say "runbox test: every branch of the runbook in memory, tools scripted (cases/)"
runbox test "$work/runbook.toml" --case "$here"/cases/*.toml

say "runbox pin: the reviewer pins the modules they reviewed"
runbox pin "$work/runbook.toml"

say "runbox review --deny warnings: what each step may touch (the merge gate)"
runbox review "$work/runbook.toml" --deny warnings

if [ "$mode" = agent ]; then
    python="${RUNBOX_PYTHON:-$target-py/bin/python3}"
    say "agent.py: a scripted assistant drives $id over MCP (runbox mcp); alice approves from the CLI"
    "$python" "$here/agent.py" "$RUNBOX_BIN" "$work" "$id" &
    agent=$!
    # alice waits until the assistant asks for her approval, then signs it.
    for _ in $(seq 600); do
        kill -0 "$agent" 2>/dev/null || { wait "$agent"; exit 1; }
        runbox status "$id" --json 2>/dev/null | grep -q '"status": "awaiting-approval"' && break
        sleep 0.1
    done
    say "runbox approve $id restart --as alice --key …   (reaches the MCP server through its control socket)"
    runbox approve "$id" restart --as alice --key "$alice_key"
    wait "$agent"
elif [ "$mode" = console ]; then
    console_run
else
    if [ "$mode" = oncall ]; then
        oncall_open
    else
        say "runbox open $id"
        runbox open "$id" --runbook "$work/runbook.toml" --param service=api
    fi

    say "runbox run $id   (diagnose, check the budget, then stop at the approval gate; notify.toml's sinks hear of it)"
    set +e
    runbox run "$id"
    code=$?
    set -e
    echo "(exit code $code: 3 = awaiting approval)"
    [ "$code" -eq 3 ] || { runbox timeline "$id"; exit 1; }

    say "runbox status $id"
    runbox status "$id"

    say "runbox approve $id restart --as alice --key …   (alice signs her approval of this attempt)"
    runbox approve "$id" restart --as alice --key "$alice_key"

    say "runbox run $id   (restart, verify, resolve)"
    runbox run "$id"
fi

echo "api now answers: $(python3 "$work/probe.py" api 2>/dev/null)"

say "runbox replay $id   (every attempt re-run against what it saw: no tool runs, nothing is written)"
runbox replay "$id"

say "runbox timeline $id"
runbox timeline "$id"

say "runbox export $id   (postmortem)"
runbox export "$id" --format markdown | sed -n '/## Steps/,/## Timeline/p' | sed '$d'

page="$work/$id.html"
runbox export "$id" --format html > "$page"
say "runbox export $id --format html   (the postmortem page, with its timeline chart)"
echo "open $page"
echo "(the example's files stay in $work; remove it when done: rm -r $work)"
