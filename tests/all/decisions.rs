//! Signed human decisions through the CLI, as a human and as an agent
//! trying to pass for one: keys made by `ssh-keygen` in the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use runbox_tests::{code_and_text, fixture, human_key, write_file};

use crate::util::TestCommand;

struct Desk {
    dir: tempfile::TempDir,
}

impl Desk {
    /// A data dir with INC-1 awaiting approval of its high-impact step `b`,
    /// and a registered human `alice`.
    fn awaiting() -> Self {
        let desk = Desk {
            dir: tempfile::tempdir().unwrap(),
        };
        desk.key("alice");
        let rb = desk.runbook(&format!(
            "[[steps]]\nid = \"a\"\nmodule = \"{ok}\"\n[[steps]]\nid = \"b\"\nmodule = \"{ok}\"\nimpact = \"high\"\n",
            ok = fixture("engine/ok.wat").display()
        ));
        desk.ok(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
        assert_eq!(desk.code(&["run", "INC-1"]).0, 3);
        desk
    }

    fn runbook(&self, steps: &str) -> PathBuf {
        let text = format!("[runbook]\nname = \"d\"\ntools = \"tools.toml\"\n\n{steps}");
        write_file(self.dir.path(), "tools.toml", "");
        write_file(self.dir.path(), "runbook.toml", &text)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn key(&self, name: &str) -> PathBuf {
        human_key(
            crate::util::runbox_path(),
            &self.data(),
            &self.dir.path().join("keys"),
            name,
        )
        .unwrap()
    }

    fn code(&self, args: &[&str]) -> (i32, String) {
        let out = TestCommand::new()
            .env("RUNBOX_DATA_DIR", self.data())
            .env_remove("RUNBOX_MUTATION_TOKEN")
            .env_remove("RUNBOX_SIGNING_KEY")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        runbox_tests::code_and_text(&out)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, text) = self.code(args);
        assert_eq!(code, 0, "runbox {args:?}: {text}");
        text
    }

    /// `runbox token init ARGS`, returning the token it printed.
    fn token(&self, args: &[&str]) -> String {
        let text = self.ok(&[&["token", "init"], args].concat());
        let token = text.lines().find(|l| l.starts_with("rbx_"));
        token.expect("a token line").to_string()
    }

    /// The token as an owner-only file, for `--token-file`.
    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let file = write_file(self.dir.path(), name, token);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        file
    }

    fn refused(&self, args: &[&str], needle: &str) {
        let before = self.events();
        let (code, text) = self.code(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text:?} lacks {needle:?}");
        assert_eq!(self.events(), before, "{args:?} wrote nothing");
    }

    fn events(&self) -> usize {
        self.ok(&["timeline", "INC-1"]).lines().count()
    }
}

#[test]
fn every_human_verb_refuses_an_unsigned_call() {
    let d = Desk::awaiting();
    let verbs: &[&[&str]] = &[
        &["approve", "INC-1", "b", "--as", "alice"],
        &["deny", "INC-1", "b", "--as", "alice"],
        &["takeover", "INC-1", "--as", "alice"],
    ];
    for args in verbs {
        d.refused(args, "must be signed with their SSH key");
    }
    // With the incident escalated, the settling verbs and handback.
    d.ok(&[
        "deny",
        "INC-1",
        "b",
        "--as",
        "alice",
        "--key",
        d.key("alice").to_str().unwrap(),
    ]);
    let settling: &[&[&str]] = &[
        &[
            "resolve",
            "INC-1",
            "--step",
            "b",
            "--outcome",
            "ok",
            "--as",
            "alice",
        ],
        &["retry", "INC-1", "--step", "b", "--as", "alice"],
        &["skip", "INC-1", "--step", "b", "--as", "alice"],
        &["handback", "INC-1", "--as", "alice"],
    ];
    for args in settling {
        d.refused(args, "must be signed");
    }
}

#[test]
fn as_alice_without_alice_s_key_is_refused_and_the_token_is_no_signature() {
    let d = Desk::awaiting();
    let bob = d.key("bob");
    d.refused(
        &[
            "approve",
            "INC-1",
            "b",
            "--as",
            "alice",
            "--key",
            bob.to_str().unwrap(),
        ],
        "not alice's, but listed for bob",
    );
    // An unregistered key.
    let stray = d.dir.path().join("stray");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stray)
        .status()
        .unwrap();
    assert!(made.success());
    d.refused(
        &[
            "approve",
            "INC-1",
            "b",
            "--as",
            "alice",
            "--key",
            stray.to_str().unwrap(),
        ],
        "which is not alice's",
    );
    // The agent's mutation token handed in as a "signature".
    let alice = d.key("alice");
    let token = d.token(&["--as", "alice", "--key", alice.to_str().unwrap()]);
    let st = d.dir.path().join("st");
    d.ok(&[
        "approve",
        "INC-1",
        "b",
        "--as",
        "alice",
        "--statement-out",
        st.to_str().unwrap(),
    ]);
    let fake = write_file(d.dir.path(), "fake.sig", &token);
    d.refused(
        &[
            "approve",
            "INC-1",
            "b",
            "--as",
            "alice",
            "--statement",
            st.to_str().unwrap(),
            "--signature",
            fake.to_str().unwrap(),
        ],
        "not an SSH signature",
    );
    // A forged name is not a name.
    d.refused(
        &["approve", "INC-1", "b", "--as", "human:bob\nx"],
        "invalid human name",
    );
    let (code, text) = d.code(&["run", "INC-1", "--agent", "x\nhuman:bob"]);
    assert_eq!(code, 2, "{text}");
}

#[test]
fn a_statement_signed_elsewhere_counts_once_and_only_in_the_runbox_namespace() {
    let d = Desk::awaiting();
    let key = d.key("alice");
    let st = d.dir.path().join("statement");
    let st_s = st.to_str().unwrap();
    let text = d.ok(&[
        "approve",
        "INC-1",
        "b",
        "--as",
        "alice",
        "--statement-out",
        st_s,
    ]);
    assert!(text.contains("ssh-keygen -Y sign -n runbox"), "{text}");
    let sign = |ns: &str| {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", ns, "-f"])
            .arg(&key)
            .arg(&st)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let sig = format!("{st_s}.sig");
    let handed = |verb: &'static str| {
        vec![
            verb,
            "INC-1",
            "b",
            "--as",
            "alice",
            "--statement",
            st_s,
            "--signature",
            sig.as_str(),
        ]
    };
    sign("git");
    d.refused(&handed("approve"), "namespace `git`");
    std::fs::remove_file(&sig).unwrap();
    sign("runbox");
    // The statement is an approval of `b`: it cannot be used to deny, or as bob.
    d.refused(&handed("deny"), "is a `approve`");
    d.ok(&handed("approve"));
    let (code, text) = d.code(&handed("approve"));
    assert_eq!(code, 2, "replayed: {text}");
    assert_eq!(d.code(&["run", "INC-1"]).0, 0);
    let export = d.ok(&["export", "INC-1", "--format", "markdown"]);
    assert!(
        export.contains("## Human decisions") && export.contains("verified"),
        "{export}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["export", "INC-1", "--format", "json"])).unwrap();
    assert_eq!(json["decisions"][0]["verified"], true);
    assert!(
        json["decisions"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    d.ok(&["verify", "INC-1"]);
    // Removing alice makes her past decision unverifiable: verify says so.
    d.ok(&["human", "remove", "alice"]);
    let (code, text) = d.code(&["verify", "INC-1"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("does not verify"), "{text}");
}

#[test]
fn rotating_the_token_needs_the_current_one_or_a_human() {
    let d = Desk::awaiting();
    d.refused(&["token", "init"], "humans are registered");
    let key = d.key("alice");
    let first = d.token(&["--as", "alice", "--key", key.to_str().unwrap()]);
    d.refused(&["token", "init", "--rotate"], "needs the current token");
    let wrong = d.token_file("wrong", "rbx_00");
    d.refused(
        &[
            "token",
            "init",
            "--rotate",
            "--token-file",
            wrong.to_str().unwrap(),
        ],
        "not the current mutation token",
    );
    let current = d.token_file("current", &first);
    let second = d.ok(&[
        "token",
        "init",
        "--rotate",
        "--token-file",
        current.to_str().unwrap(),
    ]);
    assert!(!second.contains(&first));
    d.ok(&[
        "token",
        "init",
        "--rotate",
        "--as",
        "alice",
        "--key",
        key.to_str().unwrap(),
    ]);
}

#[test]
fn a_bad_allowed_signers_line_is_named_and_nothing_is_decided() {
    let d = Desk::awaiting();
    let key = d.key("alice");
    let path = d.data().join("allowed_signers");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("bob cert-authority ssh-ed25519 AAAA\n");
    std::fs::write(&path, text).unwrap();
    d.refused(
        &[
            "approve",
            "INC-1",
            "b",
            "--as",
            "alice",
            "--key",
            key.to_str().unwrap(),
        ],
        "allowed_signers:2: option `cert-authority` is not supported",
    );
}

#[test]
fn tools_are_pinned_and_an_edited_tool_is_refused() {
    let d = Desk {
        dir: tempfile::tempdir().unwrap(),
    };
    let script = write_file(
        d.dir.path(),
        "touch.sh",
        "#!/bin/sh\necho call >> calls.log\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sha = runbox_sandbox::sha256_hex(&std::fs::read(&script).unwrap());
    let tools = |pin: &str| {
        format!("[tools.touch]\nmode = \"mutate\"\nargv = [\"./touch.sh\"]\nsha256 = \"{pin}\"\n")
    };
    let step = format!(
        "[[steps]]\nid = \"m\"\nmodule = \"{}\"\nimpact = \"high\"\ngrants = {{ tools = [\"touch\"], kv_write = [\"touched\"] }}\n",
        fixture("engine/mutate.wat").display()
    );
    let rb = d.runbook(&step);
    write_file(d.dir.path(), "tools.toml", &tools(&"0".repeat(64)));
    let (code, text) = d.code(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 2, "a wrong pin refuses open: {text}");
    assert!(text.contains("the pin in tools.toml"), "{text}");
    write_file(d.dir.path(), "tools.toml", &tools(&sha));
    d.ok(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    let token = d.token(&[]);
    let token_file = d.token_file("token", &token);
    let tf = token_file.to_str().unwrap();
    assert_eq!(d.code(&["run", "INC-1", "--token-file", tf]).0, 3);
    let key = d.key("alice");
    d.ok(&[
        "approve",
        "INC-1",
        "m",
        "--as",
        "alice",
        "--key",
        key.to_str().unwrap(),
    ]);
    // The script is edited after open: the call is refused, nothing runs.
    std::fs::write(&script, "#!/bin/sh\necho evil >> calls.log\n").unwrap();
    let (code, text) = d.code(&["run", "INC-1", "--token-file", tf]);
    assert_ne!(code, 0, "{text}");
    assert!(
        !d.dir.path().join("calls.log").exists(),
        "the edited tool never ran"
    );
    let export = d.ok(&["export", "INC-1", "--format", "json"]);
    assert!(export.contains("refusing to run it"), "{export}");
}

#[test]
fn oversized_runbooks_and_params_are_refused_at_open() {
    let d = Desk {
        dir: tempfile::tempdir().unwrap(),
    };
    let step = format!(
        "[[steps]]\nid = \"a\"\nmodule = \"{}\"\n# {}\n",
        fixture("engine/ok.wat").display(),
        "x".repeat(2 * 1024 * 1024)
    );
    let rb = d.runbook(&step);
    let (code, text) = d.code(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("byte limit"), "{text}");
    let policy = write_file(
        d.dir.path(),
        "big.toml",
        &format!("# {}\n", "x".repeat(2 * 1024 * 1024)),
    );
    let (code, text) = d.code(&[
        "exec",
        fixture("engine/ok.wat").to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("byte limit"), "{text}");
}

#[test]
fn a_program_found_elsewhere_on_path_after_open_is_refused() {
    let d = Desk {
        dir: tempfile::tempdir().unwrap(),
    };
    let bin = |dir: &str, line: &str| {
        let path = d.dir.path().join(dir);
        std::fs::create_dir_all(&path).unwrap();
        let tool = write_file(
            &path,
            "mytool",
            &format!(
                "#!/bin/sh\necho {line} >> {}/calls.log\n",
                d.dir.path().display()
            ),
        );
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    };
    let (good, evil) = (bin("good", "good"), bin("evil", "evil"));
    let step = format!(
        "[[steps]]\nid = \"m\"\nmodule = \"{}\"\nimpact = \"high\"\ngrants = {{ tools = [\"touch\"], kv_write = [\"touched\"] }}\n",
        fixture("engine/mutate.wat").display()
    );
    let rb = d.runbook(&step);
    write_file(
        d.dir.path(),
        "tools.toml",
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"mytool\"]\n",
    );
    let path = |first: &Path| format!("{}:{}", first.display(), std::env::var("PATH").unwrap());
    let runbox = |path_var: &str, args: &[&str]| {
        code_and_text(
            &TestCommand::new()
                .env("RUNBOX_DATA_DIR", d.data())
                .env("PATH", path_var)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let (code, text) = runbox(
        &path(&good),
        &["open", "INC-1", "--runbook", rb.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    let token = d.token(&[]);
    let tf = d.token_file("token", &token);
    let tf = tf.to_str().unwrap();
    assert_eq!(
        runbox(&path(&good), &["run", "INC-1", "--token-file", tf]).0,
        3
    );
    let key = d.key("alice");
    d.ok(&[
        "approve",
        "INC-1",
        "m",
        "--as",
        "alice",
        "--key",
        key.to_str().unwrap(),
    ]);
    // Another `mytool` first on PATH: refused before it runs.
    let evil_first = format!("{}:{}", evil.display(), path(&good));
    let (code, text) = runbox(&evil_first, &["run", "INC-1", "--token-file", tf]);
    assert_ne!(code, 0, "{text}");
    assert!(!d.dir.path().join("calls.log").exists(), "no tool ran");
    let export = d.ok(&["export", "INC-1", "--format", "json"]);
    assert!(export.contains("now resolves to"), "{export}");
}

/// No unsigned act is recorded under a human's name (issue 23, item 7):
/// `open --as human:alice` and `brake engage --as bob` still work, and
/// record the acting agent (`agent:alice`, `agent:bob`); the engine itself
/// refuses a human as the author of an opening, a note or a brake, so no
/// front-end can record one either.
#[test]
fn no_unsigned_act_is_recorded_under_a_human_s_name() {
    let d = Desk {
        dir: tempfile::tempdir().unwrap(),
    };
    d.key("alice");
    let rb = d.runbook(&format!(
        "[[steps]]\nid = \"a\"\nmodule = \"{}\"\n",
        fixture("engine/ok.wat").display()
    ));
    let rb = rb.to_str().unwrap();
    let text = d.ok(&["open", "INC-1", "--runbook", rb, "--as", "human:alice"]);
    assert!(text.contains("recorded as agent:alice"), "{text}");
    let export: serde_json::Value =
        serde_json::from_str(&d.ok(&["export", "INC-1", "--format", "json"])).unwrap();
    assert_eq!(export["incident"]["opened_by"], "agent:alice", "{export}");
    let timeline = d.ok(&["timeline", "INC-1"]);
    assert!(!timeline.contains("human:alice"), "{timeline}");

    {
        let store = std::sync::Arc::new(runbox_store_rocksdb::RocksStore::open(&d.data()).unwrap());
        let sandbox = runbox_sandbox::Sandbox::new(runbox_sandbox::SandboxConfig::default());
        let engine = runbox_engine::Engine::new(store, sandbox);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let note = runtime.block_on(engine.runs().note("INC-1", "human:alice", "all good"));
        assert!(note.is_err(), "an unsigned note as human:alice");
        assert!(note.unwrap_err().to_string().contains("signed decision"));
        assert!(
            runtime
                .block_on(engine.runs().note("INC-1", "agent:x", "ok"))
                .is_ok()
        );
        let params = std::collections::BTreeMap::new();
        let opened = engine
            .opener()
            .open("INC-2", Path::new(rb), &params, "human:alice");
        assert!(opened.is_err(), "an unsigned opening as human:alice");
        let brake = engine.fleet().engage_brake("all", "x", "human:bob", &[]);
        assert!(brake.is_err(), "an unsigned brake as human:bob");
        assert!(engine.incidents().brakes().unwrap().is_empty());
    }

    d.ok(&["brake", "engage", "all", "--reason", "stop", "--as", "bob"]);
    let brakes = d.ok(&["brake", "list"]);
    assert!(
        brakes.contains("by agent:bob") && !brakes.contains("human:bob"),
        "{brakes}"
    );
    let (code, text) = d.code(&["brake", "engage", "all", "--reason", "x", "--as", "a:b"]);
    assert_eq!(code, 2, "not an agent's name: {text}");
}

/// A tool whose program is not on `PATH` is refused naming the program and
/// where it was looked for, never the file argument recorded beside it.
#[test]
fn a_program_not_on_path_is_named_with_where_it_was_looked_for() {
    let d = Desk {
        dir: tempfile::tempdir().unwrap(),
    };
    let bin = d.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = write_file(&bin, "mytool", "#!/bin/sh\necho 200\n");
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rb = d.runbook(&format!(
        "[[steps]]\nid = \"probe\"\nmodule = \"{}\"\ngrants = {{ tools = [\"slow\"] }}\n",
        fixture("engine/read_tool.wat").display()
    ));
    write_file(
        d.dir.path(),
        "tools.toml",
        "[tools.slow]\nmode = \"read\"\nargv = [\"mytool\", \"probe.txt\"]\n",
    );
    write_file(
        d.dir.path(),
        "probe.txt",
        "a file argument, recorded at open\n",
    );
    let runbox = |path_var: &str, args: &[&str]| {
        code_and_text(
            &TestCommand::new()
                .env("RUNBOX_DATA_DIR", d.data())
                .env("PATH", path_var)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let tool_error = |id: &str| {
        let (_, json) = runbox("", &["export", id, "--format", "json"]);
        let export: serde_json::Value = serde_json::from_str(&json).unwrap();
        export["steps"][0]["tool_calls"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let rb = rb.to_str().unwrap();
    // Found at open, not found now.
    let (code, text) = runbox(bin.to_str().unwrap(), &["open", "INC-1", "--runbook", rb]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = runbox("", &["run", "INC-1"]);
    assert_eq!(code, 4, "{text}");
    assert_eq!(
        tool_error("INC-1"),
        format!(
            "tool `slow`: program `mytool` is not found on PATH (PATH is empty); when the incident was opened it was {}: refusing to run it; check PATH",
            tool.display()
        )
    );
    // Found neither at open nor now.
    let (code, text) = runbox("", &["open", "INC-2", "--runbook", rb]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(runbox("", &["run", "INC-2"]).0, 4);
    assert_eq!(
        tool_error("INC-2"),
        "tool `slow`: program `mytool` is not found on PATH (PATH is empty), nor was it when the incident was opened: refusing to run it; install it, or give its full path in argv"
    );
}
