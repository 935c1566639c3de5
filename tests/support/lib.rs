//! Shared helpers for runbox's integration tests: where the fixtures are,
//! and building the example steps (Rust via cargo, C via clang) once per
//! test process.

pub mod crash;
pub mod fuzzing;

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
    let out_dir = steps_out_dir().join("c");
    std::fs::create_dir_all(&out_dir).expect("create the C step output dir");
    let out = out_dir.join(format!("{name}.wasm"));
    let source = repo_root().join(format!("steps/c/{name}.c"));
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
        .arg(&source)
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
