//! The crate graph holds its shape: the read model and the reports link no
//! sandbox, and so no wasmtime (ARCHITECTURE.md, "Code map").

use std::process::Command;

/// The packages `package` links in a normal (non-dev) build, by name.
fn linked(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["-f", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_read_model_and_the_reports_link_no_sandbox_and_no_wasmtime() {
    for package in ["runbox-incidents", "runbox-report"] {
        let deps = linked(package);
        assert!(
            deps.iter().any(|d| d == "runbox-store"),
            "{package}: {deps:?}"
        );
        for banned in [
            "runbox-engine",
            "runbox-sandbox",
            "wasmtime",
            "cranelift-codegen",
        ] {
            assert!(
                !deps.iter().any(|d| d == banned),
                "{package} links {banned}: a read must not need the sandbox"
            );
        }
    }
}
