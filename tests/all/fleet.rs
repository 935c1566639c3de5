//! Blast radius across incidents: rate limits counted fleet-wide, the brake
//! a human must release, and the shared namespace, through the CLI a
//! real operator uses. The tool counts its calls in `calls.log`.

use std::path::{Path, PathBuf};
use std::process::Command;

use runbox_tests::{code_and_text, fixture, human_key, write_file};
use serde_json::Value;

/// One operator's data dir, with the mutation token.
struct Fleet {
    dir: PathBuf,
    token: String,
}

impl Fleet {
    fn new(dir: &Path) -> Self {
        let mut fleet = Fleet {
            dir: dir.to_path_buf(),
            token: String::new(),
        };
        let (code, text) = fleet.runbox(&["token", "init"]);
        assert_eq!(code, 0, "{text}");
        fleet.token = text.lines().find(|l| l.starts_with("rbx_")).unwrap().into();
        fleet
    }

    fn runbox(&self, args: &[&str]) -> (i32, String) {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", self.dir.join("data"))
                .env("RUNBOX_MUTATION_TOKEN", &self.token)
                .current_dir(&self.dir)
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

    fn status(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", id, "--json"])).unwrap()
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// A runbook of one mutating step (`module`, granted `touch` and
    /// `grants`) on a `service`, with `limits` appended.
    fn runbook(&self, module: &str, grants: &str, limits: &str) -> String {
        write_file(
            &self.dir,
            "tools.toml",
            "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n",
        );
        let rb = write_file(
            &self.dir,
            "runbook.toml",
            &format!(
                "[runbook]\nname = \"svc\"\ntools = \"tools.toml\"\n[params.service]\ndefault = \"api\"\n\
                 [[steps]]\nid = \"restart\"\nmodule = \"{}\"\ngrants = {{ tools = [\"touch\"], {grants} }}\n{limits}",
                fixture(module).display()
            ),
        );
        rb.display().to_string()
    }

    fn open(&self, id: &str, rb: &str, service: &str) {
        self.ok(&[
            "open",
            id,
            "--runbook",
            rb,
            "--param",
            &format!("service={service}"),
        ]);
    }

    fn limits_toml(&self, text: &str) {
        write_file(&self.dir.join("data"), "limits.toml", text);
    }
}

fn statuses(fleet: &Fleet, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| fleet.status(id)["status"].as_str().unwrap().to_string())
        .collect()
}

fn count(v: &[String], what: &str) -> usize {
    v.iter().filter(|s| *s == what).count()
}

#[test]
fn ten_incidents_on_one_service_restart_it_three_times_then_the_brake_holds_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(dir.path());
    let rb = fleet.runbook("engine/mutate.wat", "kv_write = [\"touched\"]", "");
    fleet.limits_toml(
        "[[rate_limits]]\ntool = \"touch\"\nper = \"{service}\"\nmax = 3\nwindow = \"1h\"\non_full = \"brake\"\n",
    );
    let ids: Vec<String> = (0..10).map(|i| format!("API-{i}")).collect();
    for id in &ids {
        fleet.open(id, &rb, "api");
    }
    fleet.open("DB-1", &rb, "db");
    // The plan says what would hold the step, before anything runs.
    let plan = fleet.ok(&["plan", &rb]);
    assert!(
        plan.contains("rate limit: at most 3 calls of tool `touch` per 1h for {service}=api")
            && plan.contains("0 of 3 used now"),
        "{plan}"
    );

    let (code, text) = fleet.runbox(&["run", "--all"]);
    assert_ne!(code, 0, "some incidents escalate: {text}");
    let now = statuses(&fleet, &ids);
    assert_eq!(count(&now, "resolved"), 3, "{now:?}\n{text}");
    assert_eq!(count(&now, "escalated"), 7, "{now:?}");
    assert_eq!(
        fleet.status("DB-1")["status"],
        "resolved",
        "another service's count and brake are its own"
    );
    assert_eq!(fleet.calls(), 4, "3 restarts of api, 1 of db");
    let brakes = fleet.ok(&["brake", "list"]);
    assert!(brakes.contains("tool=touch,service=api"), "{brakes}");
    assert!(brakes.lines().count() == 1, "{brakes}");
    let held = ids
        .iter()
        .find(|id| fleet.status(id)["status"] == "escalated")
        .unwrap();
    let status = fleet.ok(&["status", held]);
    assert!(
        status.contains("braked     escalated under brake `tool=touch,service=api`"),
        "{status}"
    );
    let timeline = fleet.ok(&["timeline", held]);
    assert!(timeline.contains("braked"), "{timeline}");
    let limits = fleet.ok(&["limits"]);
    assert!(
        limits.contains("limit/tool=touch/{service}=api/3600000: 3 use(s)"),
        "{limits}"
    );
    // The plan now says the brake would hold the step.
    let plan = fleet.ok(&["plan", &rb]);
    assert!(plan.contains("BRAKE ENGAGED now"), "{plan}");
    // Running again changes nothing while the brake holds.
    fleet.runbox(&["run", "--all"]);
    assert_eq!(fleet.calls(), 4);

    // Only a human's signature releases it; a forged one writes nothing.
    let keys = dir.path().join("keys");
    let alice = human_key(
        crate::util::runbox_path(),
        &dir.path().join("data"),
        &keys,
        "alice",
    )
    .unwrap();
    let (code, text) = fleet.runbox(&[
        "brake",
        "release",
        "tool=touch,service=api",
        "--as",
        "alice",
    ]);
    assert_ne!(code, 0, "no key, no release: {text}");
    let out = dir.path().join("release.txt");
    fleet.ok(&[
        "brake",
        "release",
        "tool=touch,service=api",
        "--as",
        "alice",
        "--statement-out",
        out.to_str().unwrap(),
    ]);
    let forged = dir.path().join("forged.sig");
    let mallory = human_key(
        crate::util::runbox_path(),
        &dir.path().join("elsewhere"),
        &keys,
        "mallory",
    )
    .unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "runbox", "-q", "-f"])
        .arg(&mallory)
        .arg(&out)
        .status()
        .unwrap();
    assert!(signed.success());
    std::fs::rename(out.with_extension("txt.sig"), &forged).unwrap();
    let (code, text) = fleet.runbox(&[
        "brake",
        "release",
        "tool=touch,service=api",
        "--as",
        "alice",
        "--statement",
        out.to_str().unwrap(),
        "--signature",
        forged.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{text}");
    assert!(
        fleet
            .ok(&["brake", "list"])
            .contains("tool=touch,service=api")
    );

    // Alice releases it; the operator raises the budget; the held incidents go on.
    let released = fleet.ok(&[
        "brake",
        "release",
        "tool=touch,service=api",
        "--as",
        "alice",
        "--key",
        alice.to_str().unwrap(),
    ]);
    assert!(released.contains("7 incident(s) handed back"), "{released}");
    assert!(fleet.ok(&["brake", "list"]).contains("no brake engaged"));
    let timeline = fleet.ok(&["timeline", held]);
    assert!(timeline.contains("brake-released"), "{timeline}");
    let verify = fleet.runbox(&["verify", held]);
    assert_eq!(verify.0, 0, "the signed release verifies: {}", verify.1);
    fleet.limits_toml(
        "[[rate_limits]]\ntool = \"touch\"\nper = \"{service}\"\nmax = 6\nwindow = \"1h\"\non_full = \"brake\"\n",
    );
    fleet.runbox(&["run", "--all"]);
    let now = statuses(&fleet, &ids);
    assert_eq!(count(&now, "resolved"), 6, "{now:?}");
    assert_eq!(
        count(&now, "escalated"),
        4,
        "the brake trips again: {now:?}"
    );
    assert_eq!(fleet.calls(), 7, "exactly 6 restarts of api in all");
    for id in &ids {
        let (code, text) = fleet.runbox(&["verify", id]);
        assert_eq!(code, 0, "{id}: {text}");
    }
}

#[test]
fn a_full_limit_that_waits_says_which_limit_its_count_and_when_it_frees() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(dir.path());
    let limit =
        "[[rate_limits]]\ntool = \"touch\"\nper = \"{service}\"\nmax = 1\nwindow = \"1h\"\n";
    let rb = fleet.runbook("engine/mutate.wat", "kv_write = [\"touched\"]", limit);
    fleet.open("A", &rb, "api");
    fleet.open("B", &rb, "api");
    let (code, text) = fleet.runbox(&["run", "A"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = fleet.runbox(&["run", "B", "--no-wait"]);
    assert_eq!(code, 8, "waiting, as for a cooldown: {text}");
    assert!(text.contains("rate limit full"), "{text}");
    let timeline = fleet.ok(&["timeline", "B"]);
    assert!(
        timeline.contains("limited")
            && timeline
                .contains("1 used, at most 1 calls of tool `touch` per 1h for {service}=api (")
            && timeline.contains("a use frees at")
            && timeline.contains("the step waits"),
        "{timeline}"
    );
    // Asking again does not repeat the event.
    fleet.runbox(&["run", "B", "--no-wait"]);
    let again = fleet.ok(&["timeline", "B"]);
    assert_eq!(again.matches("limited").count(), 1, "{again}");
    assert_eq!(fleet.status("B")["status"], "open");
    assert_eq!(fleet.calls(), 1);
    // A dry run counts nothing and calls nothing.
    fleet.open("C", &rb, "db");
    let (code, text) = fleet.runbox(&["run", "C", "--dry-run"]);
    assert_ne!(code, -1, "{text}");
    assert_eq!(fleet.calls(), 1);
    assert!(
        !fleet.ok(&["limits"]).contains("=db/"),
        "a dry run uses no count"
    );
}

#[test]
fn the_shared_namespace_commits_with_the_step_and_is_fenced_across_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(dir.path());
    let shared = "kv_read = [\"shared:svc/{service}/*\"], kv_write = [\"shared:svc/{service}/*\"]";
    let rb = fleet.runbook("fleet/shared_count.wat", shared, "");
    // Review shows the grant across incidents.
    let review = fleet.runbox(&["review", &rb]).1;
    assert!(
        review.contains("shared-kv") || review.contains("shared across incidents"),
        "{review}"
    );
    let ids: Vec<String> = (0..8).map(|i| format!("S-{i}")).collect();
    for id in &ids {
        fleet.open(id, &rb, "api");
    }
    // All at once: each reads the count and adds one before its restart. A
    // step whose read went stale before its restart called nothing, and
    // runs again: no add is lost or doubled, no restart repeated.
    fleet.ok(&["run", "--all"]);
    let now = statuses(&fleet, &ids);
    assert_eq!(count(&now, "resolved"), ids.len(), "{now:?}");
    let resolved = ids.len();
    let kv: Value = serde_json::from_str(&fleet.ok(&["kv", "--shared"])).unwrap();
    let counted = kv["shared:svc/api/count"].as_str().unwrap().len();
    assert_eq!(counted, resolved, "one add per incident: {kv}");
    assert_eq!(fleet.calls(), resolved, "one restart per incident");
    for id in &ids {
        let export: Value =
            serde_json::from_str(&fleet.ok(&["export", id, "--format", "json"])).unwrap();
        let records = export["steps"].as_array().unwrap();
        for stale in &records[..records.len() - 1] {
            assert_eq!(stale["error_category"], "held", "{stale}");
            assert!(
                stale["tool_calls"].as_array().unwrap().is_empty(),
                "{stale}"
            );
        }
        if records.len() > 1 {
            let timeline = fleet.ok(&["timeline", id]);
            assert!(timeline.contains("changed underneath"), "{timeline}");
        }
        assert_eq!(fleet.runbox(&["verify", id]).0, 0);
    }
    // One at a time, every incident adds.
    fleet.open("T-1", &rb, "api");
    fleet.open("T-2", &rb, "api");
    fleet.ok(&["run", "T-1"]);
    fleet.ok(&["run", "T-2"]);
    let kv: Value = serde_json::from_str(&fleet.ok(&["kv", "--shared"])).unwrap();
    assert_eq!(
        kv["shared:svc/api/count"].as_str().unwrap().len(),
        resolved + 2
    );

    // A step that traps writes neither its own KV nor the shared value.
    let trap_grants = "kv_write = [\"shared:svc/{service}/*\", \"mine\"]";
    let trap = fleet.runbook("fleet/shared_then_trap.wat", trap_grants, "");
    fleet.open("TRAP", &trap, "api");
    fleet.runbox(&["run", "TRAP"]);
    assert_eq!(fleet.status("TRAP")["status"], "escalated");
    let kv: Value = serde_json::from_str(&fleet.ok(&["kv", "--shared"])).unwrap();
    assert_eq!(
        kv["shared:svc/api/count"].as_str().unwrap().len(),
        resolved + 2,
        "{kv}"
    );
    assert_eq!(fleet.ok(&["kv", "TRAP"]).trim(), "{}");

    // A grant of `**` never reaches the shared namespace.
    let wide = fleet.runbook("fleet/shared_wide.wat", "kv_write = [\"**\"]", "");
    fleet.open("WIDE", &wide, "api");
    fleet.runbox(&["run", "WIDE"]);
    let export = fleet.ok(&["export", "WIDE", "--format", "json"]);
    assert!(export.contains("denied-key"), "{export}");
    let kv: Value = serde_json::from_str(&fleet.ok(&["kv", "--shared"])).unwrap();
    assert!(!kv.to_string().contains("SNEAKY"), "{kv}");
}

#[test]
fn malformed_limits_and_brake_scopes_are_refused_naming_file_and_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(dir.path());
    // In a runbook: refused at open, nothing written.
    for (limit, says) in [
        (
            "[[rate_limits]]\ntool = \"touch\"\nmax = 3\nwindow = \"0s\"\n",
            "rate_limits[0]: window",
        ),
        (
            "[[rate_limits]]\ntool = \"touch\"\nmax = -2\nwindow = \"1h\"\n",
            "rate_limits[0]: max",
        ),
        (
            "[[rate_limits]]\ntool = \"nope\"\nmax = 3\nwindow = \"1h\"\n",
            "rate_limits[0]: tool: no step",
        ),
        (
            "[[rate_limits]]\ntool = \"touch\"\nper = \"{svc}\"\nmax = 3\nwindow = \"1h\"\n",
            "rate_limits[0]: per: names parameter `svc`",
        ),
    ] {
        let rb = fleet.runbook("engine/mutate.wat", "kv_write = [\"touched\"]", limit);
        let (code, text) = fleet.runbox(&["open", "BAD", "--runbook", &rb]);
        assert_ne!(code, 0, "{limit}");
        assert!(
            text.contains("runbook.toml") && text.contains(says),
            "{says}: {text}"
        );
        assert!(
            fleet.runbox(&["status", "BAD"]).0 != 0,
            "nothing was opened"
        );
    }
    // In the data dir's limits.toml: the run stops before any step, naming it.
    let rb = fleet.runbook("engine/mutate.wat", "kv_write = [\"touched\"]", "");
    fleet.open("OK", &rb, "api");
    fleet.limits_toml("[[rate_limits]]\ntool = \"touch\"\nmax = 3\nwindow = \"forever\"\n");
    let before = fleet.status("OK");
    let (code, text) = fleet.runbox(&["run", "OK"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("limits.toml rate_limits[0]: window"),
        "{text}"
    );
    assert_eq!(
        fleet.status("OK")["checkpoint"],
        before["checkpoint"],
        "nothing written"
    );
    assert_eq!(fleet.calls(), 0);
    fleet.limits_toml("[[rate_limits]\n");
    let (_, text) = fleet.runbox(&["run", "OK"]);
    assert!(
        text.contains("limits.toml") && text.contains("toml"),
        "{text}"
    );
    std::fs::remove_file(dir.path().join("data/limits.toml")).unwrap();
    // A scope that matches nothing, or does not parse, engages nothing.
    for (scope, says) in [
        ("tool=restart_everything", "matches no mutating step"),
        ("service", "is not `name=value`"),
        ("tool=a,tool=b", "given twice"),
    ] {
        let (code, text) =
            fleet.runbox(&["brake", "engage", scope, "--reason", "x", "--as", "bob"]);
        assert_ne!(code, 0, "{scope}");
        assert!(text.contains(says), "{scope}: {text}");
    }
    let (code, text) = fleet.runbox(&[
        "brake",
        "engage",
        "service=api",
        "--reason",
        "",
        "--as",
        "bob",
    ]);
    assert_ne!(code, 0, "a brake needs a reason: {text}");
    assert!(fleet.ok(&["brake", "list"]).contains("no brake engaged"));
    // An engaged brake holds the step before its mutating call.
    fleet.ok(&[
        "brake",
        "engage",
        "service=api",
        "--reason",
        "bad deploy",
        "--as",
        "bob",
    ]);
    let (code, _) = fleet.runbox(&["run", "OK"]);
    assert_eq!(code, 4, "escalated");
    assert_eq!(fleet.calls(), 0);
    let status = fleet.ok(&["status", "OK"]);
    assert!(
        // Engaging is unsigned: recorded under the agent's name, never a
        // human's (issue 23; this said `human:bob` before).
        status.contains("bad deploy")
            && status.contains("agent:bob")
            && !status.contains("human:bob"),
        "{status}"
    );
}
