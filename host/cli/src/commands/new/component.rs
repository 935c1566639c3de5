//! Scaffolds that come with a one-step runbook: component steps (`--lang
//! python|js|ts|rust-component`: the step's own world or the SDK's, the SDK
//! beside the source or by path) and Zig steps on ABI v1. Each has a build
//! with the bootstrap's tools and a case, so `test.sh` ends in a passing
//! `runbox test` as the README promises.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{Lang, RUST_COMPONENT, RUST_MAIN, rust_build, rust_manifest};

/// The WIT package every component step is built against.
const STEP_WIT: &str = include_str!("../../../../../guest-sdk/wit/step.wit");
const PY_SDK: &str = include_str!("../../../../../guest-sdk/python/runbox/__init__.py");
const JS_SDK: &str = include_str!("../../../../../guest-sdk/js/runbox.js");
const TS_SDK: &str = include_str!("../../../../../guest-sdk/js/runbox.ts");
const CAPS_DTS: &str = include_str!("../../../../../guest-sdk/js/caps.d.ts");

/// `jco types` of the WIT package, for TypeScript steps.
const TYPES: [(&str, &str); 8] = [
    (
        "step.d.ts",
        include_str!("../../../../../guest-sdk/js/types/step.d.ts"),
    ),
    (
        "interfaces/runbox-step-input.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-input.d.ts"),
    ),
    (
        "interfaces/runbox-step-kv-read.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-kv-read.d.ts"),
    ),
    (
        "interfaces/runbox-step-kv-write.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-kv-write.d.ts"),
    ),
    (
        "interfaces/runbox-step-log.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-log.d.ts"),
    ),
    (
        "interfaces/runbox-step-tool-mutate.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-tool-mutate.d.ts"),
    ),
    (
        "interfaces/runbox-step-tool-read.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-tool-read.d.ts"),
    ),
    (
        "interfaces/runbox-step-types.d.ts",
        include_str!("../../../../../guest-sdk/js/types/interfaces/runbox-step-types.d.ts"),
    ),
];
const TSCONFIG: &str = include_str!("../../../../../guest-sdk/js/tsconfig.json");

/// The Zig SDK and the scaffold's files, with `{name}` and `{root}` to fill.
const ZIG_SDK: &str = include_str!("../../../../../guest-sdk/zig/runbox.zig");
const ZIG_TEMPLATE: [(&str, &str); 3] = [
    (
        "main.zig",
        include_str!("../../../../../guest-sdk/zig/template/main.zig"),
    ),
    (
        "build.sh",
        include_str!("../../../../../guest-sdk/zig/template/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../../../../guest-sdk/zig/template/README.md"),
    ),
];

/// The runbox checkout this binary was built from (`RUNBOX_ROOT` overrides
/// it): where `scripts/bootstrap.sh` installs the component tools.
fn runbox_root() -> PathBuf {
    if let Some(p) = std::env::var_os("RUNBOX_ROOT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts/bootstrap.sh").exists())
        .map_or_else(|| PathBuf::from("/path/to/runbox"), Path::to_path_buf)
}

/// A Zig step (a core module on ABI v1) with the same one-step runbook,
/// case and `test.sh` as a component's.
pub(super) fn zig_files(name: &str, files: &mut Vec<(String, String)>) {
    let root = runbox_root().display().to_string();
    for (path, text) in ZIG_TEMPLATE {
        let text = text.replace("{name}", name).replace("{root}", &root);
        files.push((path.into(), text));
    }
    files.push(("runbox.zig".into(), ZIG_SDK.into()));
    files.push(("runbook.toml".into(), runbook(name)));
    files.push(("cases/note.toml".into(), case(name)));
    files.push(("test.sh".into(), test_sh(name)));
}

/// The files every component scaffold has, and the language's own.
pub(super) fn component_files(
    name: &str,
    lang: Lang,
    files: &mut Vec<(String, String)>,
) -> Result<()> {
    let root = runbox_root();
    files.push(("runbook.toml".into(), runbook(name)));
    files.push(("cases/note.toml".into(), case(name)));
    files.push(("test.sh".into(), test_sh(name)));
    files.push(("README.md".into(), readme(name, lang, &root)?));
    if lang == Lang::RustComponent {
        // The SDK's world, of which the linker keeps what the step calls.
        files.push(("Cargo.toml".into(), rust_manifest(name, &RUST_COMPONENT)?));
        let source = RUST_MAIN.replace("runbox_guest", "runbox_component");
        files.push(("src/lib.rs".into(), source));
        files.push(("build.sh".into(), rust_build(name, &RUST_COMPONENT)));
        return Ok(());
    }
    files.push(("wit/world.wit".into(), world(name)));
    files.push(("wit/deps/runbox-step/step.wit".into(), STEP_WIT.into()));
    match lang {
        Lang::Python => {
            files.push(("app.py".into(), PY_APP.into()));
            files.push(("runbox/__init__.py".into(), PY_SDK.into()));
            files.push(("build.sh".into(), python_build(name, &root)));
        }
        Lang::Js => {
            files.push(("app.js".into(), JS_APP.into()));
            files.push(("runbox.js".into(), JS_SDK.into()));
            files.push(("build.sh".into(), js_build(name, &root, false)));
        }
        Lang::Ts => {
            files.push(("app.ts".into(), JS_APP.into()));
            files.push(("runbox.ts".into(), TS_SDK.into()));
            files.push(("caps.d.ts".into(), CAPS_DTS.into()));
            for (path, text) in TYPES {
                files.push((format!("types/{path}"), text.into()));
            }
            // The SDK's own config, compiling the app (which imports the SDK).
            let config = TSCONFIG.replace("\"files\": [\"runbox.ts\"]", "\"files\": [\"app.ts\"]");
            files.push(("tsconfig.json".into(), config));
            files.push(("build.sh".into(), js_build(name, &root, true)));
        }
        Lang::Rust
        | Lang::C
        | Lang::Wat
        | Lang::Assemblyscript
        | Lang::RustComponent
        | Lang::Zig => {
            bail!("{lang:?} steps have no WIT world of their own")
        }
    }
    Ok(())
}

/// The step's world: the capabilities it imports, one line each. Toolchains
/// import every interface of the world they build, and a component that
/// imports an interface its policy does not grant is refused, so each step
/// names its own instead of building against the full `runbox:step` world.
fn world(name: &str) -> String {
    let package = name.replace('_', "-").to_lowercase();
    format!(
        "// The capabilities this step imports, one line each; keep them in line
// with its grants (step.toml, runbook.toml): a step importing an interface
// its policy does not grant is refused before it runs. What each gives:
// deps/runbox-step/step.wit, the reference.
//   runbox:step/kv-read@1.0.0     grants.kv_read
//   runbox:step/kv-write@1.0.0    grants.kv_write
//   runbox:step/tool-read@1.0.0   grants.tools, a `read` tool
//   runbox:step/tool-mutate@1.0.0 grants.tools, a `mutate` tool
package local:{package};

world step {{
    import runbox:step/input@1.0.0;
    import runbox:step/log@1.0.0;
    import runbox:step/kv-read@1.0.0;

    use runbox:step/types@1.0.0.{{outcome-error}};
    export run: func() -> result<string, outcome-error>;
}}
"
    )
}

fn runbook(name: &str) -> String {
    format!(
        "# {name} as a one-step runbook, so `runbox test` runs it (docs/runbook.md).
[runbook]
name = \"{name}\"
description = \"reads the service's note\"

[params.service]
description = \"the service\"
default = \"api\"

[[steps]]
id = \"{name}\"
action = \"read the service's note\"
module = \"{name}.wasm\"
idempotent = true
grants = {{ kv_read = [\"svc/{{service}}/*\"] }}
limits = {{ timeout_ms = 5000 }}
"
    )
}

fn case(name: &str) -> String {
    format!(
        "description = \"the note is there: the runbook resolves\"\n\n[params]\nservice = \"api\"\n\n[kv]\n\"svc/api/note\" = \"restarted yesterday\"\n\n[expect]\nstatus = \"resolved\"\nsteps = [\"{name}\"]\n"
    )
}

/// Builds, runs the step once through `runbox exec` (outcome `ok`), then
/// the runbook's cases through `runbox test`.
fn test_sh(name: &str) -> String {
    format!(
        "#!/usr/bin/env bash
# Builds the step, runs it once with the sample input and KV seed, then
# runs the one-step runbook's cases in memory.
set -euo pipefail
cd \"$(dirname \"$0\")\"
./build.sh
out=$(\"${{RUNBOX:-runbox}}\" exec {name}.wasm --policy step.toml --input \"$(cat input.json)\" --kv kv.json)
echo \"$out\"
grep -q '\"outcome\": \"ok\"' <<<\"$out\"
\"${{RUNBOX:-runbox}}\" test runbook.toml --case cases/*.toml
"
    )
}

fn python_build(name: &str, root: &Path) -> String {
    let root = root.display();
    format!(
        "#!/usr/bin/env bash
# Builds {name}.wasm: app.py and the runbox package as a component of the
# world in wit/world.wit, with componentize-py (`scripts/bootstrap.sh
# --python-steps` installs it; RUNBOX_COMPONENTIZE_PY names another).
set -euo pipefail
cd \"$(dirname \"$0\")\"
runbox_root=\"{root}\"
cpy=\"${{RUNBOX_COMPONENTIZE_PY:-${{CARGO_TARGET_DIR:-$runbox_root/target}}-py-steps/bin/componentize-py}}\"
if [ ! -x \"$cpy\" ]; then
    echo \"build: componentize-py is not at $cpy: run $runbox_root/scripts/bootstrap.sh --python-steps (or set RUNBOX_COMPONENTIZE_PY)\" >&2
    exit 1
fi
\"$cpy\" -d wit -w step componentize app -p . -o {name}.wasm >/dev/null
echo \"built {name}.wasm\"
"
    )
}

/// Builds with componentize-js from the bootstrap's prefix: `tsc` first for
/// TypeScript; then caps.js from the world's imports (the SDK links only
/// what the world has); `wasi:http` left out, since a step has no network.
fn js_build(name: &str, root: &Path, ts: bool) -> String {
    let root = root.display();
    let compile = if ts {
        "\"$js/node_modules/.bin/tsc\" -p .\n"
    } else {
        "cp app.js runbox.js build/\n"
    };
    format!(
        "#!/usr/bin/env bash
# Builds {name}.wasm: the app and the runbox module as a component of the
# world in wit/world.wit, with componentize-js (`scripts/bootstrap.sh
# --js-steps` installs it; RUNBOX_JS_STEPS names another npm prefix).
set -euo pipefail
cd \"$(dirname \"$0\")\"
runbox_root=\"{root}\"
js=\"${{RUNBOX_JS_STEPS:-${{CARGO_TARGET_DIR:-$runbox_root/target}}-js-steps}}\"
if [ ! -x \"$js/node_modules/.bin/componentize-js\" ]; then
    echo \"build: componentize-js is not in $js: run $runbox_root/scripts/bootstrap.sh --js-steps (or set RUNBOX_JS_STEPS)\" >&2
    exit 1
fi
rm -rf build && mkdir build
{compile}for cap in kv-read kv-write tool-read tool-mutate; do
    var=$(sed -E 's/-(.)/\\U\\1/' <<<\"$cap\")
    if grep -Eq \"^[[:space:]]*import runbox:step/$cap@1\\.0\\.0;\" wit/world.wit; then
        echo \"export * as $var from \\\"runbox:step/$cap@1.0.0\\\";\"
    else
        echo \"export const $var = null;\"
    fi
done >build/caps.js
\"$js/node_modules/.bin/componentize-js\" build/app.js -w wit -n step -d http fetch-event -o {name}.wasm >/dev/null
echo \"built {name}.wasm\"
"
    )
}

const JS_APP: &str = r#"// A runbox step: reads the service's note from KV and reports it.
import { step, kv, log, ok } from "./runbox.js";

export const run = step((input) => {
  const service = String(input.service);
  const note = kv.get(`svc/${service}/note`);
  log.info(`${service}: ${note ?? "no note"}`);
  return ok({ service, note: note ?? "" });
});
"#;

const PY_APP: &str = r#""""A runbox step: reads the service's note from KV and reports it."""
import runbox
from runbox import kv, log, ok


class WitWorld(runbox.Step):
    def main(self, input):
        service = input["service"]
        note = kv.get(f"svc/{service}/note")
        log.info(f"{service}: {note or 'no note'}")
        return ok({"service": service, "note": note or ""})
"#;

/// What differs between languages in a component step's README.
struct Language {
    name: &'static str,
    /// The bootstrap flag that installs its build tools.
    flag: &'static str,
    source: &'static str,
    /// What the source's API offers.
    api: &'static str,
    /// Where the step's imports come from, and the reference WIT.
    world: String,
}

const SCRIPT_API: &str = "`kv.get/put/delete`, `tools.call(name, args)` (read tools) and `tools.mutate(name, args)` (mutating ones) return what the host answered (`rc`, `stdout`, `stderr`); `log.info/warn/error` write the step record. An exception that escapes `main` escalates with its message.";

/// A component step's world file, for the languages that build against one.
fn world_file(root: &str) -> String {
    format!(
        "- `wit/world.wit`: the capabilities the step imports, one line each. Add
  `import runbox:step/kv-write@1.0.0;` (and `kv_write` to the grants) before
  writing KV, `tool-read` or `tool-mutate` before calling tools. A step that
  imports what its policy does not grant is refused before it runs. The
  reference is `wit/deps/runbox-step/step.wit` (also `{root}/guest-sdk/wit/step.wit`)."
    )
}

fn language(lang: Lang, root: &str) -> Result<Language> {
    Ok(match lang {
        Lang::Python => Language {
            name: "Python",
            flag: "--python-steps",
            source: "app.py",
            api: "`main(self, input)` returns `ok(value)`, `retry(reason)`, `escalate(reason)` or `fail(reason)`; a refused call raises `runbox.Refused`.",
            world: world_file(root),
        },
        Lang::Js | Lang::Ts => Language {
            name: if lang == Lang::Ts {
                "TypeScript"
            } else {
                "JavaScript"
            },
            flag: "--js-steps",
            source: if lang == Lang::Ts { "app.ts" } else { "app.js" },
            api: "`step(main)` makes the world's `run`; `main(input)` returns `ok(value)`, `retry(reason)`, `escalate(reason)` or `fail(reason)`; a refused call throws `Refused`.",
            world: world_file(root),
        },
        Lang::RustComponent => Language {
            name: "Rust (a component, over wit-bindgen)",
            flag: "--rust-component-steps",
            source: "src/lib.rs",
            api: "`runbox_component::step!(f)` makes the world's `run`; `f(input)` returns `Outcome::ok(value)`, `Outcome::Retry(reason)`, `Outcome::Escalate(reason)` or `Outcome::Fail(reason)`. `kv::get/get_string/put/delete`, `tool::read(name, &args)` and `tool::mutate(name, &args)` return what the host answered (`rc`, `stdout`, `stderr`) or the `Error` it refused with; `log::info/warn/error` write the step record. A panic escalates. Each tool call runs the tool once and returns its whole answer.",
            world: format!(
                "- The capabilities the step imports are the SDK calls it makes: the SDK
  is built against the whole world `runbox:step@1.0.0`
  (`{root}/guest-sdk/wit/step.wit`, the reference), and the linker keeps
  only the interfaces the step calls. Calling `kv::put` needs `kv_write` in
  the grants, `tool::read`/`tool::mutate` the tool; a step that imports what
  its policy does not grant is refused before it runs (`runbox caps
  {{name}}.wasm` lists its imports)."
            ),
        },
        Lang::Rust | Lang::C | Lang::Wat | Lang::Assemblyscript | Lang::Zig => {
            bail!("{lang:?} steps are core modules, not components")
        }
    })
}

/// From nothing to a passing `runbox test`, for a newcomer.
fn readme(name: &str, lang: Lang, root: &Path) -> Result<String> {
    let root = root.display().to_string();
    let l = language(lang, &root)?;
    let api = if lang == Lang::RustComponent {
        l.api.to_string()
    } else {
        format!("{} {SCRIPT_API}", l.api)
    };
    let world = l.world.replace("{name}", name);
    Ok(format!(
        "# {name}: a runbox step in {language}

A WebAssembly component of the WIT world `runbox:step@1.0.0`
(`{root}/docs/steps.md`).

## From nothing to a passing test

1. Install the build tools once (they go beside runbox's target dir):

       {root}/scripts/bootstrap.sh {flag}

2. Build, run once and test:

       ./test.sh

   `test.sh` runs `./build.sh`, then `runbox exec {name}.wasm --policy
   step.toml --input \"$(cat input.json)\" --kv kv.json` (one run in the
   sandbox, nothing stored; it prints the step's report and must say
   `\"outcome\": \"ok\"`), then `runbox test runbook.toml --case cases/*.toml`
   (the one-step runbook `runbook.toml` in memory; `1 of 1 cases pass`).
   Set `RUNBOX` to a runbox binary that is not on `PATH`.

## Changing it

- `{source}`: the step. {api}
{world}
- `step.toml` (for `runbox exec`) and the step's `grants` in `runbook.toml`:
  what it may touch (`docs/runbook.md`).
- `cases/*.toml`: what `runbox test` checks (`docs/testing.md`).
",
        language = l.name,
        flag = l.flag,
        source = l.source,
    ))
}
