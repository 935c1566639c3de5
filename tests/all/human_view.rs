//! What a human reads and signs, held against the agent at the edges:
//! decisions bound to one deployment, outside text that renders inert in
//! every output, decisions that a chatty agent cannot starve, brakes that
//! hand back only what they held, and scopes checked against what exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::inert::is_inert_line;
use runbox_engine::decision::{DEFAULT_TTL, Request};
use runbox_engine::{Engine, RunExit, RunOptions};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store::MemoryStore;
use runbox_store_rocksdb::RocksStore;
use runbox_tests::{code_and_text, fixture, human_key, write_file};
use runbox_trust::Action;
use runbox_trust::testing::TestHumans;

/// One deployment's data dir under a shared work dir, driven through the CLI.
struct Deployment {
    work: PathBuf,
    data: PathBuf,
}

impl Deployment {
    fn new(work: &Path, name: &str) -> Self {
        Deployment {
            work: work.to_path_buf(),
            data: work.join(name),
        }
    }

    fn runbox(&self, args: &[&str]) -> (i32, String) {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", &self.data)
                .env_remove("RUNBOX_MUTATION_TOKEN")
                .env_remove("RUNBOX_SIGNING_KEY")
                .current_dir(&self.work)
                .args(args)
                .output()
                .unwrap(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, text) = self.runbox(args);
        assert_eq!(code, 0, "runbox {args:?}: {text}");
        text
    }

    /// Registers `name`'s key (made once for the whole work dir).
    fn human(&self, name: &str) -> PathBuf {
        let keys = self.work.join("keys");
        let key = keys.join(name);
        if key.exists() {
            self.ok(&[
                "human",
                "add",
                name,
                key.with_extension("pub").to_str().unwrap(),
            ]);
            return key;
        }
        human_key(crate::util::runbox_path(), &self.data, &keys, name).unwrap()
    }

    fn events(&self, id: &str) -> usize {
        self.ok(&["timeline", id, "--json"]).lines().count()
    }
}

/// An engine over the data dir `data`, opened while no CLI holds it.
fn engine_on(data: &Path) -> Engine {
    Engine::new(
        Arc::new(RocksStore::open(data).unwrap()),
        Sandbox::new(SandboxConfig::default()),
    )
}

/// `ssh-keygen -Y sign -n runbox` of `statement` with `key`: the signature file.
fn ssh_sign(key: &Path, statement: &Path) -> PathBuf {
    let ok = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "runbox", "-q", "-f"])
        .arg(key)
        .arg(statement)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut sig = statement.as_os_str().to_owned();
    sig.push(".sig");
    PathBuf::from(sig)
}

/// A runbook whose second step `b` is high-impact (approved by `approvals`
/// humans), its first `a` fine.
fn approval_runbook(dir: &Path, approvals: u32) -> PathBuf {
    let ok = fixture("engine/ok.wat");
    write_file(dir, "tools.toml", "");
    write_file(
        dir,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"d\"\ntools = \"tools.toml\"\n\n[[steps]]\nid = \"a\"\nmodule = \"{ok}\"\n\
             [[steps]]\nid = \"b\"\nmodule = \"{ok}\"\nimpact = \"high\"\napprovals = {approvals}\n",
            ok = ok.display()
        ),
    )
}

#[test]
fn a_decision_signed_in_staging_is_refused_by_production() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let rb = approval_runbook(work, 1);
    let (staging, production) = (
        Deployment::new(work, "staging"),
        Deployment::new(work, "production"),
    );
    let mut alice = PathBuf::new();
    for d in [&staging, &production] {
        alice = d.human("alice");
        d.ok(&["open", "INC-7", "--runbook", rb.to_str().unwrap()]);
        assert_eq!(d.runbox(&["run", "INC-7"]).0, 3, "awaiting approval");
    }
    // Alice signs staging's approval; the agent hands it to production.
    let statement = work.join("approve.json");
    staging.ok(&[
        "approve",
        "INC-7",
        "b",
        "--as",
        "alice",
        "--statement-out",
        statement.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&statement).unwrap();
    assert!(
        text.contains("\"schema\":\"runbox.decision/v2\"") && text.contains("\"audience\":\""),
        "{text}"
    );
    let signature = ssh_sign(&alice, &statement);
    let hand_in = |d: &Deployment| {
        d.runbox(&[
            "approve",
            "INC-7",
            "b",
            "--as",
            "alice",
            "--statement",
            statement.to_str().unwrap(),
            "--signature",
            signature.to_str().unwrap(),
        ])
    };
    let before = production.events("INC-7");
    let (code, refusal) = hand_in(&production);
    assert_eq!(code, 2, "{refusal}");
    assert!(
        refusal.contains("the statement is for deployment")
            && refusal.contains("but this is deployment")
            && refusal.contains("a decision counts only where it was made"),
        "the refusal names both deployments: {refusal}"
    );
    assert_eq!(
        production.events("INC-7"),
        before,
        "production wrote nothing"
    );
    assert!(
        production
            .ok(&["status", "INC-7"])
            .contains("awaiting-approval")
    );
    // Where it was made it counts, and verifies.
    let (code, text) = hand_in(&staging);
    assert_eq!(code, 0, "{text}");
    staging.ok(&["verify", "INC-7"]);
    production.ok(&["verify", "INC-7"]);
}

/// A takeover, a brake's release and a token rotation, each signed for one
/// deployment and handed to another: refused, naming both; `verify` flags a
/// decision of another deployment slipped into the records.
#[test]
fn takeovers_brake_releases_and_token_rotations_are_bound_to_their_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let humans = TestHumans::new(dir.path().join("allowed_signers"));
    let rb = approval_runbook(dir.path(), 1);
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            Engine::new(
                Arc::new(MemoryStore::new()),
                Sandbox::new(SandboxConfig::default()),
            )
            .with_allowed_signers(humans.path())
        })
        .collect();
    let (staging, production) = (&engines[0], &engines[1]);
    assert_ne!(
        staging.deployment_id().unwrap(),
        production.deployment_id().unwrap()
    );
    assert_eq!(
        staging.deployment_id().unwrap(),
        staging.deployment_id().unwrap(),
        "made once"
    );
    for e in &engines {
        e.opener()
            .open("INC-7", &rb, &Default::default(), "agent:runbox")
            .unwrap();
    }
    let takeover = staging
        .humans()
        .statement(&Request {
            action: Action::Takeover,
            incident: "INC-7",
            step: None,
            outcome: None,
            signer: "alice",
            ttl: DEFAULT_TTL,
        })
        .unwrap();
    let signed = humans.sign("alice", &takeover.to_text());
    let err = production.humans().decide(&signed).unwrap_err().to_string();
    assert!(err.contains("is for deployment"), "{err}");
    assert_eq!(
        production
            .incidents()
            .view("INC-7")
            .unwrap()
            .owner
            .to_string(),
        "agent:runbox"
    );

    for e in &engines {
        e.fleet()
            .engage_brake("all", "maintenance", "agent:runbox", &[])
            .unwrap();
    }
    let release = staging
        .fleet()
        .brake_statement("all", "alice", DEFAULT_TTL)
        .unwrap();
    let signed_release = humans.sign("alice", &release.to_text());
    let err = production
        .fleet()
        .release_brake(&signed_release)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is for deployment"), "{err}");
    assert_eq!(
        production.incidents().brakes().unwrap().len(),
        1,
        "still engaged"
    );
    staging.fleet().release_brake(&signed_release).unwrap();

    let mut rotate = runbox_trust::Statement::new(
        Action::RotateToken,
        "alice",
        DEFAULT_TTL,
        &staging.deployment_id().unwrap(),
    )
    .unwrap();
    rotate.subject_sha256 = Some(production.fleet().token_subject().unwrap());
    let signed_rotate = humans.sign("alice", &rotate.to_text());
    let err = production
        .fleet()
        .init_token(false, runbox_engine::TokenAuth::Human(&signed_rotate))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is for deployment"), "{err}");

    // Staging's takeover counts in staging, and a copy of its store verifies
    // the decision while refusing new ones signed for staging.
    staging.humans().decide(&signed).unwrap();
    assert!(
        runbox_engine::verify::verify(staging.incidents(), "INC-7")
            .unwrap()
            .is_clean()
    );
}

#[test]
fn a_store_copy_is_a_deployment_of_its_own_unless_asked_and_verifies_what_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let rb = approval_runbook(work, 1);
    let staging = Deployment::new(work, "staging");
    let alice = staging.human("alice");
    staging.ok(&["open", "INC-7", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(staging.runbox(&["run", "INC-7"]).0, 3);
    staging.ok(&[
        "approve",
        "INC-7",
        "b",
        "--as",
        "alice",
        "--key",
        alice.to_str().unwrap(),
    ]);
    staging.ok(&["open", "INC-8", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(staging.runbox(&["run", "INC-8"]).0, 3);
    let pending = work.join("pending.json");
    staging.ok(&[
        "approve",
        "INC-8",
        "b",
        "--as",
        "alice",
        "--statement-out",
        pending.to_str().unwrap(),
    ]);
    let signature = ssh_sign(&alice, &pending);

    for (name, flags) in [("copy", &[][..]), ("moved", &["--with-identity"][..])] {
        let target = work.join(name);
        let mut args = vec![
            "store",
            "copy",
            staging.data.to_str().unwrap(),
            target.to_str().unwrap(),
        ];
        args.extend(flags);
        staging.ok(&args);
        let copy = Deployment::new(work, name);
        copy.human("alice");
        copy.ok(&["verify", "INC-7"]);
        let (code, text) = copy.runbox(&[
            "approve",
            "INC-8",
            "b",
            "--as",
            "alice",
            "--statement",
            pending.to_str().unwrap(),
            "--signature",
            signature.to_str().unwrap(),
        ]);
        if flags.is_empty() {
            assert_eq!(code, 2, "a copy is another deployment: {text}");
            assert!(text.contains("is for deployment"), "{text}");
        } else {
            assert_eq!(code, 0, "a move keeps the deployment: {text}");
        }
    }
}

/// Escalates with a reason shaped to forge what a human reads: newlines
/// followed by lines like a timeline entry and `status` fields, terminal
/// escapes (erase line, cursor up, an OSC 8 hyperlink), a bidi override,
/// and a Markdown table row.
const HOSTILE: &str = "disk full\n   9 2026-12-03 10:00:00.000 approved           human:alice          b#1: approved\nstatus     resolved\nowner      human:alice\n| x | y |\x1b[2K\x1b[1A\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\u{202e}";

/// A WAT step that finishes with `outcome` and `reason`.
fn finishing_step(dir: &Path, name: &str, outcome: u32, reason: &str) -> PathBuf {
    let escaped: String = reason.bytes().map(|b| format!("\\{b:02x}")).collect();
    write_file(
        dir,
        name,
        &format!(
            "(module\n  (import \"runbox:step/v1\" \"finish\" (func $finish (param i32 i32 i32)))\n  \
             (memory (export \"memory\") 1)\n  (data (i32.const 0) \"{escaped}\")\n  \
             (func (export \"_start\") (call $finish (i32.const {outcome}) (i32.const 0) (i32.const {}))))\n",
            reason.len()
        ),
    )
}

fn is_event_line(line: &str, seq: usize) -> bool {
    line.trim_start().split(' ').next() == Some(seq.to_string().as_str())
        && line.get(5..9).is_some_and(|y| y.starts_with("20"))
}

#[test]
fn text_from_agents_steps_and_brakes_never_forges_a_line_a_human_reads() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let step = finishing_step(work, "hostile.wat", 2, HOSTILE);
    write_file(work, "tools.toml", "");
    let rb = write_file(
        work,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"d\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"probe\"\nmodule = \"{}\"\n",
            step.display()
        ),
    );
    let d = Deployment::new(work, "data");
    d.ok(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    assert_eq!(d.runbox(&["run", "INC-1"]).0, 4, "escalated");
    {
        let engine = engine_on(&d.data);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(engine.runs().note("INC-1", "agent:bot", HOSTILE))
            .unwrap();
        engine
            .fleet()
            .engage_brake(
                "all",
                "maintenance\nno brake engaged\n\x1b[2J",
                "agent:bot",
                &[],
            )
            .unwrap();
    }
    let events = d.events("INC-1");
    for args in [
        &["timeline", "INC-1"][..],
        &["timeline", "INC-1", "-v"],
        &["status", "INC-1"],
        &["brake", "list"],
        &["export", "INC-1", "--format", "markdown"],
        &["export", "INC-1", "--format", "html"],
    ] {
        let out = d.ok(args);
        assert!(
            out.lines().all(is_inert_line),
            "{args:?} printed a control or invisible character: {out:?}"
        );
    }
    let timeline = d.ok(&["timeline", "INC-1"]);
    let lines: Vec<&str> = timeline.lines().collect();
    assert_eq!(lines.len(), events, "one line an event: {timeline}");
    for (seq, line) in lines.iter().enumerate() {
        assert!(is_event_line(line, seq), "line {seq}: {line:?}");
    }
    let note = format!("{:<18} {:<20}: disk full⏎", "note", "agent:bot");
    assert!(timeline.contains(&note), "{timeline}");
    let verbose = d.ok(&["timeline", "INC-1", "-v"]);
    let mut seq = 0;
    for line in verbose.lines() {
        if is_event_line(line, seq) {
            seq += 1;
            continue;
        }
        let detail = line.strip_prefix("      ").unwrap_or_default();
        assert!(
            [
                "-> ",
                "output from step",
                "reason from step",
                "error ",
                "log "
            ]
            .iter()
            .any(|label| detail.starts_with(label)),
            "a detail line is labelled under its entry: {line:?}"
        );
    }
    assert_eq!(seq, events);

    let status = d.ok(&["status", "INC-1"]);
    let starting = |field: &str| status.lines().filter(|l| l.starts_with(field)).count();
    assert_eq!(starting("status "), 1, "{status}");
    assert_eq!(starting("owner "), 1, "{status}");
    assert!(status.contains("status     escalated"), "{status}");
    assert!(
        status.contains("reason from step probe: disk full⏎"),
        "{status}"
    );

    let brakes = d.ok(&["brake", "list"]);
    assert_eq!(brakes.lines().count(), 1, "one brake, one line: {brakes}");
    assert!(
        brakes.contains("reason: maintenance⏎no brake engaged⏎\\u{1b}[2J"),
        "{brakes}"
    );

    let md = d.ok(&["export", "INC-1", "--format", "markdown"]);
    let mut fenced = false;
    let mut rows = 0;
    for line in md.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('|') {
            rows += 1;
        }
    }
    assert_eq!(rows, 3, "header, rule and one step row: {md}");
    assert!(
        md.contains("- last word: `") && md.contains("disk full⏎"),
        "the last word is an inert code span: {md}"
    );
}

/// Random text through every output that shows it: each renders on its
/// own line(s) with nothing a terminal or a reader takes for layout, and
/// no line can be taken for another entry.
#[test]
fn random_text_renders_inert_through_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let rb = approval_runbook(dir.path(), 1);
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Sandbox::new(SandboxConfig::default()),
    );
    engine
        .opener()
        .open("INC-1", &rb, &Default::default(), "agent:runbox")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = fastrand::Rng::with_seed(23);
    let alphabet: Vec<char> =
        "\n\r\t\x1b\x07\x00\x7f\u{85}\u{2028}\u{202e}\u{200b}\u{feff}|`<>&\"'#*_[]()!-=+@ a1é"
            .chars()
            .collect();
    let mut texts = Vec::new();
    for i in 0..120 {
        let len = rng.usize(1..200);
        let text: String = if i % 2 == 0 {
            (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        } else {
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        if text.trim().is_empty() {
            continue;
        }
        // Ten authors' notes each: the rate limit is per author.
        let author = format!("agent:a{}", i / 10);
        rt.block_on(engine.runs().note("INC-1", &author, &text))
            .unwrap();
        let brake = runbox_core::limits::Brake {
            scope: "all".into(),
            reason: text.clone(),
            by: author,
            at_ms: 0,
            incident: None,
        };
        assert!(is_inert_line(&brake.describe()), "{text:?}");
        texts.push(text);
    }
    let timeline = engine.incidents().timeline("INC-1").unwrap();
    for (seq, e) in timeline.iter().enumerate() {
        for line in [e.line(), e.brief()] {
            assert!(
                is_inert_line(&line) && is_event_line(&line, seq),
                "{line:?}"
            );
        }
    }
    let p = runbox_report::postmortem(engine.incidents(), "INC-1", false).unwrap();
    let md = runbox_report::markdown(&p);
    assert!(md.lines().all(is_inert_line), "markdown");
    let fence = md
        .split("## Timeline\n\n```\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap();
    let lines: Vec<&str> = fence.lines().collect();
    assert_eq!(lines.len(), timeline.len(), "one line an event");
    for (seq, line) in lines.iter().enumerate() {
        assert!(is_event_line(line, seq), "{line:?}");
    }
    let html = runbox_report::html(&p);
    assert!(html.lines().all(is_inert_line), "html");
    for text in &texts {
        if text.contains('<') {
            assert!(!html.contains(text.as_str()), "markup is escaped: {text:?}");
        }
    }
    let mut csv = Vec::new();
    let rows = runbox_report::write_rows(
        engine.incidents(),
        &["INC-1".to_string()],
        runbox_report::RowFormat::Csv,
        &mut csv,
    )
    .unwrap();
    let parsed = csv::Reader::from_reader(csv.as_slice())
        .records()
        .map(Result::unwrap)
        .count();
    assert_eq!(parsed as u64, rows, "every CSV row parses back as one row");
}

/// An agent writing notes as fast as it can while two humans take five
/// seconds each to sign: both approvals land, signed in parallel.
#[test]
fn a_chatty_agent_never_starves_a_slow_human_decision() {
    let dir = tempfile::tempdir().unwrap();
    let humans = TestHumans::new(dir.path().join("allowed_signers"));
    let rb = approval_runbook(dir.path(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Arc::new(
        Engine::new(
            Arc::new(MemoryStore::new()),
            Sandbox::new(SandboxConfig::default()),
        )
        .with_allowed_signers(humans.path()),
    );
    engine
        .opener()
        .open("INC-1", &rb, &Default::default(), "agent:runbox")
        .unwrap();
    let first = rt.block_on(engine.runs().run("INC-1", &RunOptions::default()));
    assert!(
        matches!(first, Ok(RunExit::AwaitingApproval { .. })),
        "{first:?}"
    );
    let request = |signer| Request {
        action: Action::Approve,
        incident: "INC-1",
        step: Some("b"),
        outcome: None,
        signer,
        ttl: DEFAULT_TTL,
    };
    // Both read what they approve now, and take their time to sign.
    let alices = engine.humans().statement(&request("alice")).unwrap();
    let bobs = engine.humans().statement(&request("bob")).unwrap();
    let version_before = engine.incidents().version_of("INC-1").unwrap();
    let chatter = {
        let engine = engine.clone();
        rt.spawn(async move {
            let (mut landed, mut refused) = (0, 0);
            let until = std::time::Instant::now() + Duration::from_secs(6);
            while std::time::Instant::now() < until {
                match engine
                    .runs()
                    .note("INC-1", "agent:runbox", "still looking")
                    .await
                {
                    Ok(_) => landed += 1,
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (landed, refused)
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    engine
        .humans()
        .decide(&humans.sign("alice", &alices.to_text()))
        .unwrap();
    engine
        .humans()
        .decide(&humans.sign("bob", &bobs.to_text()))
        .unwrap();
    let (landed, refused) = rt.block_on(chatter).unwrap();
    assert_eq!(
        landed,
        runbox_engine::agent::MAX_NOTES_PER_WINDOW,
        "notes landed up to the limit"
    );
    assert!(refused > 0, "and the rest were refused");
    assert!(
        engine.incidents().version_of("INC-1").unwrap() > version_before + 2,
        "the incident moved under the humans"
    );
    let done = rt.block_on(engine.runs().run("INC-1", &RunOptions::default()));
    assert!(matches!(done, Ok(RunExit::Resolved)), "{done:?}");
    assert!(
        runbox_engine::verify::verify(engine.incidents(), "INC-1")
            .unwrap()
            .is_clean()
    );
    let refusal = rt
        .block_on(engine.runs().note("INC-1", "agent:runbox", "one more"))
        .unwrap_err()
        .to_string();
    assert!(refusal.contains("notes within the last 60 s"), "{refusal}");
}

/// The brake operator's sequence: a brake holds a mutating step; a human
/// skips it and hands back; the next mutating step fails and escalates.
/// Releasing the brake then hands back nothing, and the failed step is not
/// run again.
#[test]
fn releasing_a_brake_never_reruns_a_failure_no_human_settled() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_file(
        work,
        "tools.toml",
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n",
    );
    let drain = write_file(
        work,
        "drain.wat",
        "(module\n  (import \"runbox:tool-mutate/v1\" \"call\" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))\n  \
         (import \"runbox:step/v1\" \"finish\" (func $finish (param i32 i32 i32)))\n  (memory (export \"memory\") 1)\n  \
         (data (i32.const 32) \"touch\")\n  (data (i32.const 48) \"{}\")\n  (data (i32.const 64) \"drain failed\")\n  \
         (func (export \"_start\")\n    (drop (call $call (i32.const 32) (i32.const 5) (i32.const 48) (i32.const 2) (i32.const 1024) (i32.const 4096)))\n    \
         (call $finish (i32.const 2) (i32.const 64) (i32.const 12))))\n",
    );
    let rb = write_file(
        work,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"svc\"\ntools = \"tools.toml\"\n\
             [[steps]]\nid = \"restart\"\nmodule = \"{}\"\ngrants = {{ tools = [\"touch\"], kv_write = [\"touched\"] }}\n\
             [[steps]]\nid = \"drain\"\nmodule = \"{}\"\ngrants = {{ tools = [\"touch\"] }}\n",
            fixture("engine/mutate.wat").display(),
            drain.display()
        ),
    );
    let d = Deployment::new(work, "data");
    let alice = d.human("alice");
    let token = d.ok(&[
        "token",
        "init",
        "--as",
        "alice",
        "--key",
        alice.to_str().unwrap(),
    ]);
    let token = token.lines().find(|l| l.starts_with("rbx_")).unwrap();
    let run = |args: &[&str]| {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", &d.data)
                .env("RUNBOX_MUTATION_TOKEN", token)
                .current_dir(work)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let calls = || {
        std::fs::read_to_string(work.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    d.ok(&["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    {
        let engine = engine_on(&d.data);
        engine
            .fleet()
            .engage_brake("step=restart", "hold restarts", "agent:runbox", &[])
            .unwrap();
    }
    assert_eq!(run(&["run", "INC-1"]).0, 4, "the brake escalates restart");
    assert_eq!(calls(), 0);
    assert!(
        d.ok(&["brake", "list"])
            .contains("holds: INC-1 at restart#1")
    );
    let key = alice.to_str().unwrap();
    d.ok(&[
        "skip", "INC-1", "--step", "restart", "--as", "alice", "--key", key,
    ]);
    d.ok(&["handback", "INC-1", "--as", "alice", "--key", key]);
    assert!(d.ok(&["brake", "list"]).contains("holds: no incident"));
    let (code, text) = run(&["run", "INC-1"]);
    assert_eq!(code, 4, "drain mutated, then escalated: {text}");
    assert_eq!(calls(), 1);
    let released = d.ok(&[
        "brake",
        "release",
        "step=restart",
        "--as",
        "alice",
        "--key",
        key,
    ]);
    assert!(released.contains("0 incident(s) handed back"), "{released}");
    let (code, text) = run(&["run", "INC-1"]);
    assert_ne!(code, 0, "{text}");
    assert_eq!(calls(), 1, "the failed mutating step did not run again");
    assert!(d.ok(&["status", "INC-1"]).contains("status     escalated"));
    d.ok(&["verify", "INC-1"]);
}

#[test]
fn a_param_never_widens_a_grant_into_another_plane_and_brake_scopes_name_real_values() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_file(
        work,
        "tools.toml",
        "[tools.touch]\nmode = \"mutate\"\nargv = [\"true\"]\n",
    );
    let rb = write_file(
        work,
        "runbook.toml",
        &format!(
            "[runbook]\nname = \"svc\"\ntools = \"tools.toml\"\n\
             [params.ns]\ndefault = \"api\"\n[params.service]\nvalues = [\"api\", \"db\"]\n\
             [[steps]]\nid = \"restart\"\nmodule = \"{}\"\nimpact = \"high\"\n\
             grants = {{ tools = [\"touch\"], kv_write = [\"{{ns}}:svc/**\"] }}\n",
            fixture("engine/mutate.wat").display()
        ),
    );
    let d = Deployment::new(work, "data");
    let rb = rb.to_str().unwrap();
    let before = d.ok(&["list"]);
    let (code, text) = d.runbox(&[
        "open",
        "S-1",
        "--runbook",
        rb,
        "--param",
        "ns=shared",
        "--param",
        "service=api",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("grants.kv_write") && text.contains("shared plane"),
        "{text}"
    );
    assert_eq!(d.ok(&["list"]), before, "nothing opened");
    d.ok(&["open", "S-2", "--runbook", rb, "--param", "service=api"]);
    let (_, review) = d.runbox(&["review", rb]);
    assert!(review.contains("param-plane"), "{review}");

    let engine = engine_on(&d.data);
    for wrong in ["service=apii", "service=API"] {
        let err = engine
            .fleet()
            .engage_brake(wrong, "typo", "agent:runbox", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`service` takes only api, db in runbook `svc`"),
            "{wrong}: {err}"
        );
    }
    assert!(
        engine.incidents().brakes().unwrap().is_empty(),
        "no brake engaged"
    );
    engine
        .fleet()
        .engage_brake("service=api", "real", "agent:runbox", &[])
        .unwrap();
}
