//! `runbox new step NAME --lang …` and `runbox new runbook NAME`: working
//! skeletons that build and pass `runbox exec` (or `runbox test`) as
//! generated, so an author starts from something that runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use runbox_core::ident::IdentKind;

use crate::output::outln;

mod component;
use component::{component_files, zig_files};

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A step: source, build script, policy, sample input, KV seed, test.
    Step {
        /// The step's name (letters, digits, `_`, `-`); also its directory.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// Where to create it. Default: `./NAME`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A runbook with a WAT step, a tools file and a `runbox test` case.
    Runbook {
        /// The runbook's name; also its directory.
        name: String,
        /// Where to create it. Default: `./NAME`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A language a step can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// Rust with the `runbox-guest` crate (`wasm32-wasip1`).
    Rust,
    /// C with `runbox.h` (clang, wasi-libc).
    C,
    /// WebAssembly text: nothing to build.
    Wat,
    /// AssemblyScript with the runbox bindings (`npm`, `asc`).
    Assemblyscript,
    /// Python as a component (`componentize-py`, `guest-sdk/python`).
    Python,
    /// JavaScript as a component (`componentize-js`, `guest-sdk/js`).
    Js,
    /// TypeScript as a component (`tsc`, then `componentize-js`).
    Ts,
    /// Rust as a component (`runbox-component` over `wit-bindgen`,
    /// `wasm32-wasip2`).
    RustComponent,
    /// Zig on ABI v1 (`guest-sdk/zig/runbox.zig`, Zig 0.17.1 from PyPI's
    /// `ziglang`).
    Zig,
}

pub(crate) fn run(command: Command) -> Result<ExitCode> {
    let (name, dir, files) = match command {
        Command::Step { name, lang, dir } => {
            check_name(&name)?;
            let files = step_files(&name, lang)?;
            (
                name.clone(),
                dir.unwrap_or_else(|| PathBuf::from(&name)),
                files,
            )
        }
        Command::Runbook { name, dir } => {
            check_name(&name)?;
            let files = runbook_files(&name);
            (
                name.clone(),
                dir.unwrap_or_else(|| PathBuf::from(&name)),
                files,
            )
        }
    };
    write_all(&dir, &files)?;
    outln!("created {} in {}:", name, dir.display());
    for (path, _) in &files {
        outln!("  {path}");
    }
    outln!("next: {}/test.sh", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> Result<()> {
    IdentKind::Step
        .check(name)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Writes every file, refusing to overwrite anything.
fn write_all(dir: &Path, files: &[(String, String)]) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

const POLICY: &str = "# What the step may touch (see docs/runbook.md).\n[grants]\nkv_read = [\"svc/{service}/*\"]\n\n[limits]\ntimeout_ms = 2000\n";
const INPUT: &str = "{\"service\": \"api\"}\n";
const KV: &str = "{\"svc/api/note\": \"restarted yesterday\"}\n";

/// The test every step scaffold has: build, then `runbox exec` with the
/// sample input and KV seed, expecting outcome `ok`.
fn test_sh(module: &str, build: bool) -> String {
    format!(
        "#!/usr/bin/env bash\n# Builds the step and runs it once with the sample input and KV seed.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n{}out=$(\"${{RUNBOX:-runbox}}\" exec {module} --policy step.toml --input \"$(cat input.json)\" --kv kv.json)\necho \"$out\"\ngrep -q '\"outcome\": \"ok\"' <<<\"$out\"\n",
        if build { "./build.sh\n" } else { "" }
    )
}

fn step_files(name: &str, lang: Lang) -> Result<Vec<(String, String)>> {
    let mut files = vec![
        ("step.toml".to_string(), POLICY.to_string()),
        ("input.json".to_string(), INPUT.to_string()),
        ("kv.json".to_string(), KV.to_string()),
    ];
    let wasm = format!("{name}.wasm");
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), rust_manifest(name, &RUST_GUEST)?));
            files.push(("src/main.rs".into(), RUST_MAIN.into()));
            files.push(("build.sh".into(), rust_build(name, &RUST_GUEST)));
            files.push(("test.sh".into(), test_sh(&wasm, true)));
        }
        Lang::C => {
            files.push((format!("{name}.c"), C_MAIN.into()));
            files.push((
                "runbox.h".into(),
                include_str!("../../../../guest-sdk/c/runbox.h").into(),
            ));
            files.push((
                "build.sh".into(),
                format!(
                    "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nclang --target=wasm32-wasi --sysroot=/usr -O2 -Wl,--strip-all -o {name}.wasm {name}.c\n"
                ),
            ));
            files.push(("test.sh".into(), test_sh(&wasm, true)));
        }
        Lang::Wat => {
            files.push((format!("{name}.wat"), WAT_MAIN.into()));
            files.push(("test.sh".into(), test_sh(&format!("{name}.wat"), false)));
        }
        Lang::Assemblyscript => {
            files.push((format!("assembly/{name}.ts"), AS_MAIN.into()));
            files.push((
                "assembly/runbox.ts".into(),
                include_str!("../../../../guest-sdk/assemblyscript/assembly/index.ts").into(),
            ));
            files.push(("asconfig.json".into(), as_config(name)));
            files.push((
                "package.json".into(),
                format!(
                    "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"scripts\": {{ \"build\": \"asc assembly/{name}.ts --target release\" }},\n  \"devDependencies\": {{ \"assemblyscript\": \"0.28.20\" }}\n}}\n"
                ),
            ));
            files.push((
                "build.sh".into(),
                "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n[ -d node_modules ] || npm install --silent --no-audit --no-fund\nnpm run --silent build\n".into(),
            ));
            files.push(("test.sh".into(), test_sh(&wasm, true)));
        }
        Lang::Zig => zig_files(name, &mut files),
        Lang::Python | Lang::Js | Lang::Ts | Lang::RustComponent => {
            component_files(name, lang, &mut files)?;
        }
    }
    Ok(files)
}

/// A Rust step's SDK: its crate, where it lives in the runbox checkout, the
/// target it builds for, and the manifest lines only it needs.
pub(super) struct RustSdk {
    krate: &'static str,
    dir: &'static str,
    target: &'static str,
    extra: &'static str,
}

/// ABI v1: a binary for `wasm32-wasip1`.
const RUST_GUEST: RustSdk = RustSdk {
    krate: "runbox-guest",
    dir: "guest-sdk",
    target: "wasm32-wasip1",
    extra: "",
};

/// A component of the `runbox:step` world: a `cdylib` for `wasm32-wasip2`.
pub(super) const RUST_COMPONENT: RustSdk = RustSdk {
    krate: "runbox-component",
    dir: "guest-sdk/rust-component",
    target: "wasm32-wasip2",
    extra: "\n[lib]\ncrate-type = [\"cdylib\"]\n",
};

/// Builds the step with cargo and copies the artifact to `NAME.wasm` (a
/// `cdylib` is named for its library, with `_` for `-`).
pub(super) fn rust_build(name: &str, sdk: &RustSdk) -> String {
    let target = sdk.target;
    let artifact = if sdk.extra.contains("cdylib") {
        name.replace('-', "_")
    } else {
        name.to_string()
    };
    format!(
        "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nif command -v rustup >/dev/null && ! rustup target list --installed | grep -qx {target}; then\n    echo \"build: the {target} Rust target is missing: rustup target add {target}\" >&2\n    exit 1\nfi\ntarget=\"${{CARGO_TARGET_DIR:-target}}\"\ncargo build --quiet --release --target {target}\ncp \"$target/{target}/release/{artifact}.wasm\" {name}.wasm\n"
    )
}

/// The step's manifest, over the SDK of the runbox checkout this binary was
/// built from (`RUNBOX_GUEST_SDK` overrides where `guest-sdk` is).
pub(super) fn rust_manifest(name: &str, sdk: &RustSdk) -> Result<String> {
    let guest = match std::env::var_os("RUNBOX_GUEST_SDK") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|p| p.join("guest-sdk"))
            .find(|p| p.join("Cargo.toml").exists())
            .context("cannot find runbox's guest-sdk: set RUNBOX_GUEST_SDK to its directory")?,
    };
    let path = guest.join(
        sdk.dir
            .trim_start_matches("guest-sdk")
            .trim_start_matches('/'),
    );
    Ok(format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n{}\n[dependencies]\n{} = {{ path = \"{}\" }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n# A step is its own workspace, built for {}.\n[workspace]\n\n[profile.release]\nopt-level = \"s\"\nstrip = true\n",
        sdk.extra,
        sdk.krate,
        path.display(),
        sdk.target,
    ))
}

fn as_config(name: &str) -> String {
    format!(
        "{{\n  \"targets\": {{\n    \"release\": {{ \"outFile\": \"{name}.wasm\", \"optimizeLevel\": 3, \"shrinkLevel\": 1 }}\n  }},\n  \"options\": {{\n    \"exportStart\": \"_start\",\n    \"runtime\": \"stub\",\n    \"use\": [\"abort=assembly/runbox/abort\"]\n  }}\n}}\n"
    )
}

pub(super) const RUST_MAIN: &str = r#"//! A runbox step: reads the service's note from KV and reports it.
use runbox_guest::{Outcome, kv, log};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    service: String,
}

fn step(input: Input) -> Outcome {
    let key = format!("svc/{}/note", input.service);
    let note = match kv::get_string(&key) {
        Ok(note) => note.unwrap_or_default(),
        Err(e) => return Outcome::Escalate(format!("cannot read {key}: {e}")),
    };
    log::info(&format!("{}: {note}", input.service));
    Outcome::ok(serde_json::json!({ "service": input.service, "note": note }))
}

runbox_guest::step!(step);
"#;

const C_MAIN: &str = r#"/* A runbox step: reads the service's note from KV and reports it. */
#include <stdio.h>
#include <string.h>
#include "runbox.h"

int main(void) {
    static char input[4096];
    int32_t n = rb_input_read(input, sizeof input - 1);
    input[n < 0 ? 0 : n] = '\0';
    char service[64] = "";
    const char *at = strstr(input, "\"service\"");
    if (!at || sscanf(strchr(at + 9, '"') ? strchr(at + 9, '"') + 1 : "", "%63[A-Za-z0-9._-]", service) != 1) {
        rb_finish_str(RB_FAIL, "input needs a \"service\"");
        return 0;
    }
    char key[128], note[512] = "";
    snprintf(key, sizeof key, "svc/%s/note", service);
    int64_t len = rb_kv_get(key, (int32_t)strlen(key), note, sizeof note - 1);
    if (len >= (int64_t)sizeof note) len = sizeof note - 1;
    note[len < 0 ? 0 : len] = '\0';
    rb_log_str(2, note);
    char out[768];
    snprintf(out, sizeof out, "{\"service\":\"%s\",\"noted\":%s}", service, len >= 0 ? "true" : "false");
    rb_finish_str(RB_OK, out);
    return 0;
}
"#;

const WAT_MAIN: &str = r#";; A runbox step in WebAssembly text: reads KV `svc/api/note`, logs it,
;; and finishes ok with {"noted": true}.
(module
  (import "runbox:kv-read/v1" "get" (func $get (param i32 i32 i32 i32) (result i64)))
  (import "runbox:step/v1" "log" (func $log (param i32 i32 i32)))
  (import "runbox:step/v1" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "svc/api/note")
  (data (i32.const 32) "{\22noted\22:true}")
  (func (export "_start")
    (local $n i64)
    (local.set $n (call $get (i32.const 0) (i32.const 12) (i32.const 1024) (i32.const 1024)))
    (if (i64.gt_s (local.get $n) (i64.const 0))
      (then (call $log (i32.const 2) (i32.const 1024) (i32.wrap_i64 (local.get $n)))))
    (call $finish (i32.const 0) (i32.const 32) (i32.const 14))))
"#;

const AS_MAIN: &str = r#"// A runbox step in AssemblyScript: reads the service's note from KV and reports it.
import { ok, log, kv, json, inputText } from "./runbox";

const service = json.str(inputText(), "service");
const note = kv.get("svc/" + service + "/note");
log.info(service + ": " + (note === null ? "no note" : note!));
ok("{\"service\":" + json.quote(service) + ",\"note\":" + json.quote(note === null ? "" : note!) + "}");
"#;

fn runbook_files(name: &str) -> Vec<(String, String)> {
    let runbook = format!(
        "# {name}: diagnose, then resolve or hand over. See docs/runbook.md.\n\n[runbook]\nname = \"{name}\"\ndescription = \"what this runbook recovers from\"\ntools = \"tools.toml\"\n\n[params.service]\ndescription = \"the service\"\ndefault = \"api\"\n\n[[steps]]\nid = \"diagnose\"\naction = \"read the service's note\"\nmodule = \"steps/diagnose.wat\"\nidempotent = true\ngrants = {{ kv_read = [\"svc/{{service}}/*\"] }}\nlimits = {{ timeout_ms = 2000 }}\n"
    );
    let case = "description = \"the note is there: the runbook resolves\"\n\n[params]\nservice = \"api\"\n\n[kv]\n\"svc/api/note\" = \"restarted yesterday\"\n\n[expect]\nstatus = \"resolved\"\nsteps = [\"diagnose\"]\n";
    let test = "#!/usr/bin/env bash\n# Runs the runbook's cases in memory and reviews it.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n\"${RUNBOX:-runbox}\" test runbook.toml --case cases/*.toml\n\"${RUNBOX:-runbox}\" review runbook.toml\n";
    vec![
        ("runbook.toml".into(), runbook),
        (
            "tools.toml".into(),
            "# Tools steps may call (see docs/runbook.md). None yet.\n".into(),
        ),
        ("steps/diagnose.wat".into(), WAT_MAIN.into()),
        ("cases/note.toml".into(), case.into()),
        ("test.sh".into(), test.into()),
    ]
}
