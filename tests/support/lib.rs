//! Shared helpers for runbox's integration tests: where the fixtures are,
//! and building the example steps (Rust via cargo, C via clang) once per
//! test process.

pub mod bench;
pub mod child;
pub mod crash;
pub mod etcd;
pub mod forge;
pub mod fuzzing;
pub mod history;
pub mod netns;
pub mod otlp;
pub mod receiver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Cargo's target dir (`CARGO_TARGET_DIR`, else `target/`): where tests
/// leave what outlives them (screenshots) and find what bootstrap put
/// beside it.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A WAT fixture in `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// Where built example steps go: beside, never inside, the outer target
/// directory, so the nested cargo never waits on the outer build's lock.
pub fn steps_out_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNBOX_STEPS_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let outer = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let name = outer
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".into());
    outer.with_file_name(format!("{name}-wasm-steps"))
}

fn build_rust_steps() -> Result<PathBuf, String> {
    let target_dir = steps_out_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(repo_root().join("steps/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building steps/ for wasm32-wasip1 failed ({status}); is the target installed? `rustup target add wasm32-wasip1`"
        ));
    }
    Ok(target_dir.join("wasm32-wasip1/release"))
}

/// A Rust example step from `steps/`, built for wasm32-wasip1.
pub fn rust_step(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_rust_steps) {
        Ok(dir) => dir.join(format!("{name}.wasm")),
        Err(e) => panic!("{e}"),
    }
}

/// A C example step from `steps/c/`, compiled with clang for wasm32-wasi.
pub fn c_step(name: &str) -> PathBuf {
    compile_c(&repo_root().join(format!("steps/c/{name}.c")), name)
}

/// A C test fixture from `tests/fixtures/c/`, compiled like [`c_step`].
pub fn c_fixture(name: &str) -> PathBuf {
    compile_c(&fixture(&format!("c/{name}.c")), &format!("fixture-{name}"))
}

fn compile_c(source: &Path, name: &str) -> PathBuf {
    let out_dir = steps_out_dir().join("c");
    std::fs::create_dir_all(&out_dir).expect("create the C step output dir");
    let out = out_dir.join(format!("{name}.wasm"));
    let output = Command::new("clang")
        .args([
            "--target=wasm32-wasi",
            "--sysroot=/usr",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wl,--strip-all",
            "-o",
        ])
        .arg(&out)
        .arg(source)
        .output()
        .expect("clang is installed (see .ci/run)");
    assert!(
        output.status.success(),
        "clang failed on {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// A runbook `runbook.toml` in `dir` of `steps` steps that finish ok at
/// once (the benches' incidents).
pub fn ok_runbook(dir: &Path, steps: usize) -> PathBuf {
    let body: String = (0..steps)
        .map(|i| {
            format!(
                "[[steps]]\nid = \"s{i}\"\nmodule = \"{}\"\n",
                fixture("engine/ok.wat").display()
            )
        })
        .collect();
    write_file(
        dir,
        "runbook.toml",
        &format!("[runbook]\nname = \"bench\"\n{body}"),
    )
}

/// Opens `n` incidents `W-0`… in the data dir `data`, each of one step that
/// waits 2 s in WASI `poll_oneoff` (`scale/sleep.wat`; runbook written in
/// `dir`): attempts that hold a pool slot without a tool process.
pub fn open_waiting_incidents(dir: &Path, data: &Path, n: usize) {
    let runbook = write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"wide\"\n[[steps]]\nid = \"wait\"\nmodule = \"{}\"\n",
            fixture("scale/sleep.wat").display()
        ),
    );
    let store = std::sync::Arc::new(runbox_store_rocksdb::RocksStore::open(data).unwrap());
    let sandbox = runbox_sandbox::Sandbox::new(runbox_sandbox::SandboxConfig::default());
    let engine = runbox_engine::Engine::new(store, sandbox);
    for i in 0..n {
        let params = std::collections::BTreeMap::new();
        engine
            .opener()
            .open(&format!("W-{i}"), &runbook, &params, "agent:test")
            .unwrap();
    }
}

/// A human's SSH key for the `runbox` CLI under test: generated with
/// `ssh-keygen` into `keys_dir` and registered in `data_dir`'s
/// allowed_signers (`runbox human add`) on first use. Returns the private
/// key's path, for `--key`. `None` for a name no key could carry (the CLI
/// refuses such names itself).
pub fn human_key(runbox: &Path, data_dir: &Path, keys_dir: &Path, name: &str) -> Option<PathBuf> {
    let runbox_in = || {
        let mut c = Command::new(runbox);
        c.arg("--data-dir").arg(data_dir);
        c
    };
    human_key_by(&runbox_in, keys_dir, name)
}

/// [`human_key`], registering the key with the `runbox` command `runbox`
/// makes (its data dir, store and mutation token set): on a store runners
/// share, the first human is enrolled in the store with the token.
pub fn human_key_by(runbox: &dyn Fn() -> Command, keys_dir: &Path, name: &str) -> Option<PathBuf> {
    let name = name.strip_prefix("human:").unwrap_or(name);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return None;
    }
    let key = keys_dir.join(name);
    if !key.exists() {
        std::fs::create_dir_all(keys_dir).expect("a keys dir");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen runs (Debian: openssh-client)");
        assert!(made.success(), "ssh-keygen failed for {name}");
        let added = runbox()
            .args(["human", "add", name])
            .arg(key.with_extension("pub"))
            .output()
            .expect("runbox runs");
        assert!(
            added.status.success(),
            "human add {name}: {}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    Some(key)
}

/// The verbs that are a human's decision and need `--key`.
pub const HUMAN_VERBS: &[&str] = &[
    "approve", "deny", "takeover", "handback", "resolve", "retry", "skip",
];

/// `args` with `--key` added for the `--as` human when `args` is a human
/// decision (and names no key or statement itself).
pub fn with_human_key(
    runbox: &Path,
    data_dir: &Path,
    keys_dir: &Path,
    args: &[&str],
) -> Vec<String> {
    let runbox_in = || {
        let mut c = Command::new(runbox);
        c.arg("--data-dir").arg(data_dir);
        c
    };
    with_human_key_by(&runbox_in, keys_dir, args)
}

/// [`with_human_key`], registering keys through [`human_key_by`].
pub fn with_human_key_by(
    runbox: &dyn Fn() -> Command,
    keys_dir: &Path,
    args: &[&str],
) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    let decides = args.first().is_some_and(|v| HUMAN_VERBS.contains(v));
    let signed = args
        .iter()
        .any(|a| *a == "--key" || *a == "--statement" || *a == "--statement-out");
    if decides && !signed {
        let name = args
            .iter()
            .position(|a| *a == "--as")
            .and_then(|i| args.get(i + 1));
        if let Some(key) = name.and_then(|n| human_key_by(runbox, keys_dir, n)) {
            out.push("--key".into());
            out.push(key.display().to_string());
        }
    }
    out
}

/// A finished command's exit code (-1 when killed) and its stdout then stderr.
pub fn code_and_text(out: &std::process::Output) -> (i32, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Asserts each generated JSON Schema equals the one committed under
/// `docs/schemas/`; with `RUNBOX_BLESS` set, writes them first.
pub fn assert_committed_schemas(schemas: Vec<(&'static str, serde_json::Value)>, module: &str) {
    for (name, generated) in schemas {
        let path = repo_root().join("docs/schemas").join(name);
        let text = serde_json::to_string_pretty(&generated).expect("a schema serializes") + "\n";
        if std::env::var_os("RUNBOX_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("docs/schemas")).expect("a schemas dir");
            std::fs::write(&path, &text).expect("write a schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: regenerate with `RUNBOX_BLESS=1 cargo test --workspace --test all {module}::`",
            path.display()
        );
    }
}
