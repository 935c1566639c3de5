//! The web console in a real browser: Chromium (the Debian package) driven
//! by Playwright for Python, with the DevTools virtual authenticator as
//! each human's passkey. The browser side is `tests/console/console_test.py`;
//! this file makes the world, starts `runbox serve`, runs the script and
//! checks the store afterwards (`runbox verify`).
//!
//! The script enrolls alice and bob through one-time links, signs in,
//! watches an incident reach its approval live, approves it with a passkey
//! and sees it resolve without a reload; meets a two-person rule with two
//! authenticators; and checks each refusal: an assertion for another
//! attempt, an expired statement, a replayed assertion, a credential
//! removed from the registry, a cross-site form post, an agent token on
//! the console and a console cookie on the agent API. Hostile notes and
//! params show as text. alice enrolls a second passkey, which signs her
//! in too; the list filters by status; a signed-out browser reads nothing. It leaves screenshots at desktop and phone widths
//! in `<target dir>/screenshots/console-*.png` and runs axe-core on each.

use std::path::Path;
use std::process::Command;

use runbox_tests::{fixture, repo_root, write_file};

use crate::util::{TestCommand, bootstrap_tool, start_serve};

/// The runbooks: `recover` (a high-impact mutating step, one approval),
/// `twoperson` (the same step, approved by alice and bob) and `bench`.
fn console_world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("runbooks")).unwrap();
    write_file(
        d,
        "runbooks/tools.toml",
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n",
    );
    for (name, approval) in [
        ("recover", "approvals = 1"),
        (
            "twoperson",
            "approvals = 2\napprovers = [\"alice\", \"bob\"]",
        ),
    ] {
        write_file(
            d,
            &format!("runbooks/{name}.toml"),
            &format!(
                r#"[runbook]
name = "{name}"
tools = "tools.toml"

[params.service]
description = "the service"
default = "api"

[[steps]]
id = "diagnose"
module = "{ok}"

[[steps]]
id = "restart"
module = "{mutate}"
grants = {{ tools = ["touch"], kv_write = ["touched"] }}
impact = "high"
{approval}
"#,
                ok = fixture("engine/ok.wat").display(),
                mutate = fixture("engine/mutate.wat").display(),
            ),
        );
    }
    // `bench`: 40 steps that finish at once (the latency measurement's).
    runbox_tests::ok_runbook(&d.join("runbooks"), 40);
    dir
}

/// A console on `localhost`: the server, its data dir, the console's
/// origin and an agent's token (it may mutate; the server holds the token).
struct Console {
    _serve: crate::util::Server,
    data: std::path::PathBuf,
    url: String,
    agent: String,
}

fn serve_console(dir: &Path) -> Console {
    let data = dir.join("data");
    let mutation = TestCommand::on(&data)
        .args(["token", "init"])
        .ok()
        .trim()
        .to_string();
    let agent = TestCommand::on(&data)
        .args(["agent", "add", "fixer", "--can", "mutate"])
        .ok()
        .trim()
        .to_string();
    let (serve, url) = start_serve(
        TestCommand::new()
            .env("RUNBOX_DATA_DIR", &data)
            .env("RUNBOX_MUTATION_TOKEN", &mutation)
            .args(["serve", "--listen", "127.0.0.1:0", "--runbooks"])
            .arg(dir.join("runbooks")),
    )
    .unwrap();
    Console {
        _serve: serve,
        data,
        // Passkeys live on a host name: the console is `localhost`.
        url: url.replace("127.0.0.1", "localhost"),
        agent,
    }
}

/// `tests/console/SCRIPT` run by the bootstrap's Playwright against `c`.
fn browser_script(script: &str, c: &Console) -> Command {
    let mut cmd = playwright(script);
    cmd.env("RUNBOX", crate::util::runbox_path())
        .env("RUNBOX_DATA_DIR", &c.data)
        .env("RUNBOX_URL", &c.url)
        .env("RUNBOX_AGENT_TOKEN", &c.agent);
    cmd
}

/// `tests/console/SCRIPT` run by the bootstrap's Playwright, with the
/// system Chromium.
fn playwright(script: &str) -> Command {
    let python = bootstrap_tool("-pw/bin/python3", "--tests");
    let chromium = crate::util::require_bin("chromium", "chromium");
    let mut cmd = Command::new(python);
    cmd.arg(repo_root().join("tests/console").join(script))
        .env("CHROMIUM", chromium_path(chromium));
    cmd
}

/// The README's console example (`examples/api-outage/run.sh --console`),
/// with a browser in the person's place: it opens the enrollment link the
/// script prints, enrolls alice's passkey, signs in and approves the
/// restart on the incident page the script names; the script then runs
/// the incident to its end and exits 0 (`tests/console/example_console.py`).
#[test]
fn the_console_example_prints_a_link_that_enrolls_alice_who_approves_in_the_browser() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = playwright("example_console.py");
    cmd.arg(repo_root().join("examples/api-outage/run.sh"));
    crate::examples::example_env(&mut cmd, data.path());
    let out = cmd.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("run.sh --console: alice enrolled"),
        "{stdout}"
    );
}

/// The latency measurement (`BENCHMARKS.md` records its full run: 100
/// consoles, 64 incidents) works: eight console tabs of one browser (past
/// the six HTTP/1.1 connections a browser keeps to a host, so a stream per
/// tab would starve the seventh) load and see the commits of the incidents
/// they show. Timings are the benchmark's, not this test's.
#[test]
fn open_consoles_see_commits_and_the_latency_is_measured() {
    let dir = console_world();
    let c = serve_console(dir.path());
    let out = browser_script("console_latency.py", &c)
        .env("CONSOLES", "8")
        .env("INCIDENTS", "2")
        .env("DURATION", "3")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(figures["samples"].as_u64().unwrap() > 0, "{figures}");
    assert!(figures["p95_ms"].as_f64().is_some(), "{figures}");
    eprintln!("console latency (8 consoles, 2 incidents): {figures}");
}

#[test]
fn humans_enroll_sign_in_and_decide_with_passkeys_in_a_real_browser() {
    let dir = console_world();
    let c = serve_console(dir.path());
    let axe = bootstrap_tool("-axe/node_modules/axe-core/axe.min.js", "--tests");
    let shots = runbox_tests::target_dir().join("screenshots");
    let status = browser_script("console_test.py", &c)
        .env("AXE_JS", &axe)
        .env("SCREENSHOTS", &shots)
        .status()
        .expect("python runs");
    let data = c.data.clone();
    drop(c);
    assert!(status.success(), "the browser test failed: {status}");
    // Every passkey decision verifies again offline (`verify` exits 1 on
    // a violation).
    let verified = TestCommand::on(&data).args(["verify"]).ok();
    assert!(!verified.contains("VIOLATIONS"), "{verified}");
    assert!(verified.contains("INC-1: ok"), "{verified}");
    let export = TestCommand::on(&data)
        .args(["export", "INC-1", "--format", "markdown"])
        .ok();
    assert!(
        export.contains("(passkey alice-laptop) | verified"),
        "{export}"
    );
    let humans = TestCommand::on(&data).args(["human", "list"]).ok();
    for who in ["alice", "bob"] {
        assert!(humans.contains(who), "{humans}");
    }
    assert!(humans.contains("passkey:"), "{humans}");
    assert!(!humans.contains("carol"), "carol was removed: {humans}");
    eprintln!("console screenshots in {}", shots.display());
}

/// On a store runners share (etcd), a link runner `a` makes opens at
/// runner `b`'s console; the passkey made there waits, signing nobody in,
/// until alice lists it with a signed change through runner `a`; then it
/// signs carol in (`tests/console/shared_store_enroll.py`), and the fleet
/// timeline verifies.
#[test]
fn on_a_shared_store_a_passkey_made_at_any_console_counts_once_a_human_lists_it() {
    let cluster = runbox_tests::etcd::EtcdCluster::start(1);
    let dir = console_world();
    let d = dir.path();
    let store = cluster.url("console");
    let runner = |name: &str| {
        let mut c = TestCommand::new();
        c.env("RUNBOX_DATA_DIR", d.join(name))
            .env("RUNBOX_STORE", &store)
            .env_remove("RUNBOX_SIGNING_KEY");
        c
    };
    let ok = |mut c: TestCommand| {
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let token = ok({
        let mut c = runner("a");
        c.args(["token", "init"]);
        c
    });
    let with_token = || {
        let mut c = runner("a");
        c.env("RUNBOX_MUTATION_TOKEN", token.trim());
        c
    };
    let alice =
        runbox_tests::human_key_by(&|| with_token().into_command(), &d.join("keys"), "alice")
            .unwrap();
    let (serve, url) = start_serve(
        runner("b")
            .args(["serve", "--listen", "127.0.0.1:0", "--runbooks"])
            .arg(d.join("runbooks")),
    )
    .unwrap();
    let url = url.replace("127.0.0.1", "localhost");
    let link = ok({
        let mut c = runner("a");
        c.args([
            "human",
            "add",
            "carol",
            "--passkey",
            "--label",
            "laptop",
            "--console",
            &url,
        ]);
        c
    });
    let accept = serde_json::json!([
        crate::util::runbox_path(),
        "human",
        "accept",
        "FINGERPRINT",
        "--as",
        "alice",
        "--key",
        alice
    ]);
    let mut script = playwright("shared_store_enroll.py");
    script
        .env("RUNBOX_URL", &url)
        .env("LINK", link.trim())
        .env("ACCEPT", accept.to_string())
        .env("RUNBOX_DATA_DIR", d.join("a"))
        .env("RUNBOX_STORE", &store);
    let out = script.output().expect("python runs");
    let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_string();
    drop(serve);
    assert!(
        out.status.success(),
        "the browser test failed: {fingerprint}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let humans = ok({
        let mut c = runner("b");
        c.args(["human", "list"]);
        c
    });
    assert!(
        humans.contains("carol") && humans.contains(&fingerprint),
        "{humans}"
    );
    let verified = ok({
        let mut c = runner("b");
        c.args(["verify", "--fleet"]);
        c
    });
    assert!(
        verified.contains("fleet: ok (2 configuration changes)"),
        "{verified}"
    );
}

/// The Chromium binary's full path.
fn chromium_path(bin: &str) -> std::path::PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .unwrap();
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).to_path_buf()
}
