//! The fleet's configuration in a shared store, on a real etcd cluster with
//! two runners, each with a data dir of its own: the humans who may decide
//! and the fleet-wide limits are the store's, the same for both; each
//! change is a human's signed change of the fleet timeline (the first
//! human's, the mutation token holder's), which `verify` replays.

use std::path::{Path, PathBuf};
use std::process::Command;

use runbox_tests::etcd::EtcdCluster;
use runbox_tests::{code_and_text, fixture, write_file};
use serde_json::Value;

/// Two runners' data dirs around one store.
struct Fleet {
    dir: tempfile::TempDir,
    cluster: EtcdCluster,
    token: String,
}

impl Fleet {
    fn new() -> Self {
        let fleet = Fleet {
            dir: tempfile::tempdir().unwrap(),
            cluster: EtcdCluster::start(1),
            token: String::new(),
        };
        let text = fleet.ok("a", &["token", "init"]);
        let token = text.lines().find(|l| l.starts_with("rbx_")).unwrap().into();
        Fleet { token, ..fleet }
    }

    fn data(&self, runner: &str) -> PathBuf {
        self.dir.path().join(runner)
    }

    /// `runbox` as runner `runner` (its own data dir), with the token.
    fn cmd(&self, runner: &str) -> crate::util::TestCommand {
        let mut c = crate::util::TestCommand::new();
        c.env("RUNBOX_DATA_DIR", self.data(runner))
            .env("RUNBOX_STORE", self.cluster.url("fc"))
            .env("RUNBOX_MUTATION_TOKEN", &self.token)
            .env_remove("RUNBOX_SIGNING_KEY")
            .current_dir(self.dir.path());
        c
    }

    fn runbox(&self, runner: &str, args: &[&str]) -> (i32, String) {
        code_and_text(&self.cmd(runner).args(args).output().unwrap())
    }

    fn ok(&self, runner: &str, args: &[&str]) -> String {
        let (code, text) = self.runbox(runner, args);
        assert_eq!(code, 0, "runner {runner}: runbox {args:?}: {text}");
        text
    }

    fn refused(&self, runner: &str, args: &[&str]) -> String {
        let (code, text) = self.runbox(runner, args);
        assert_ne!(
            code, 0,
            "runner {runner}: runbox {args:?} went through: {text}"
        );
        text
    }

    /// An ed25519 key for `name` (not registered): the private key's path.
    fn key(&self, name: &str) -> String {
        let key = self.dir.path().join("keys").join(name);
        if !key.exists() {
            std::fs::create_dir_all(key.parent().unwrap()).unwrap();
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(made.success());
        }
        key.display().to_string()
    }

    fn pubkey(&self, name: &str) -> String {
        format!("{}.pub", self.key(name))
    }

    /// Adds `name`, signed by `by` (none: the first human, with the token).
    fn add(&self, runner: &str, name: &str, by: Option<&str>) -> String {
        let pubkey = self.pubkey(name);
        let mut args = vec!["human", "add", name, pubkey.as_str()];
        let key;
        if let Some(by) = by {
            key = self.key(by);
            args.extend(["--as", by, "--key", key.as_str()]);
        }
        self.ok(runner, &args)
    }

    fn status(&self, runner: &str, id: &str) -> Value {
        serde_json::from_str(&self.ok(runner, &["status", id, "--json"])).unwrap()
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// A runbook of one mutating step `restart` running `module`, with the
    /// read tool `look` running the shell script `look` and the mutating
    /// tool `touch` counting its calls; `step` adds to the step.
    fn runbook(&self, module: &str, look: &str, step: &str) -> String {
        write_file(self.dir.path(), "look.sh", look);
        write_file(
            self.dir.path(),
            "tools.toml",
            "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n\
             [tools.look]\nmode = \"read\"\ntimeout_ms = 20000\nargv = [\"sh\", \"look.sh\"]\n",
        );
        let rb = write_file(
            self.dir.path(),
            "runbook.toml",
            &format!(
                "[runbook]\nname = \"svc\"\ntools = \"tools.toml\"\n\
                 [[steps]]\nid = \"restart\"\nmodule = \"{}\"\n{step}grants = {{ tools = [\"touch\", \"look\"], kv_write = [\"touched\"] }}\n",
                fixture(module).display()
            ),
        );
        rb.display().to_string()
    }
}

#[test]
fn a_human_added_through_one_runner_decides_through_the_other_until_removed_through_either() {
    let fleet = Fleet::new();
    // The first human: the mutation token's holder consents.
    let added = fleet.add("a", "alice", None);
    assert!(
        added.contains("fleet change 1 by mutation-token"),
        "{added}"
    );
    let listed = fleet.ok("b", &["human", "list"]);
    assert!(listed.starts_with("alice "), "{listed}");
    // From then on a change is a human's signature, whoever holds the token.
    let bob = fleet.pubkey("bob");
    let unsigned = fleet.refused("b", &["human", "add", "bob", &bob]);
    assert!(unsigned.contains("needs one's signature"), "{unsigned}");
    let mallory = fleet.key("mallory");
    let stranger = fleet.refused(
        "b",
        &[
            "human", "add", "bob", &bob, "--as", "mallory", "--key", &mallory,
        ],
    );
    assert!(
        stranger.contains("`mallory` is not in allowed_signers"),
        "{stranger}"
    );
    let added = fleet.add("b", "bob", Some("alice"));
    assert!(added.contains("fleet change 2 by human:alice"), "{added}");
    assert_eq!(fleet.ok("a", &["human", "list"]).lines().count(), 2);

    let rb = fleet.runbook("engine/mutate.wat", "true", "impact = \"high\"\n");
    fleet.ok("a", &["open", "INC-1", "--runbook", &rb]);
    let (_, text) = fleet.runbox("a", &["run", "INC-1"]);
    assert_eq!(
        fleet.status("a", "INC-1")["status"],
        "awaiting-approval",
        "{text}"
    );

    // Bob removes alice through runner b; through runner a she no longer
    // decides anything.
    let bob_key = fleet.key("bob");
    let removed = fleet.ok(
        "b",
        &["human", "remove", "alice", "--as", "bob", "--key", &bob_key],
    );
    assert!(removed.contains("fleet change 3 by human:bob"), "{removed}");
    let alice_key = fleet.key("alice");
    let approve = |who: &str, key: &str| {
        fleet.runbox(
            "a",
            &["approve", "INC-1", "restart", "--as", who, "--key", key],
        )
    };
    let (code, text) = approve("alice", &alice_key);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("`alice` is not in allowed_signers"), "{text}");
    let (code, text) = approve("bob", &bob_key);
    assert_eq!(code, 0, "{text}");
    fleet.ok("a", &["run", "INC-1"]);
    assert_eq!(fleet.status("b", "INC-1")["status"], "resolved");
    assert_eq!(fleet.calls(), 1);
    // The last human stays: an empty registry would let the token enroll anyone.
    let last = fleet.refused(
        "a",
        &["human", "remove", "bob", "--as", "bob", "--key", &bob_key],
    );
    assert!(last.contains("last human cannot be removed"), "{last}");

    let timeline = fleet.ok("b", &["timeline", "--fleet"]);
    let lines: Vec<&str> = timeline.lines().collect();
    assert_eq!(lines.len(), 3, "{timeline}");
    assert!(
        lines[0].contains("#1 signers  mutation-token signers: add human:alice key ssh-ed25519")
    );
    assert!(
        lines[2].contains("#3 signers  human:bob signers: remove human:alice"),
        "{timeline}"
    );
    let verified = fleet.ok("a", &["verify"]);
    assert!(verified.contains("INC-1: ok"), "{verified}");
    assert!(
        verified.contains("fleet: ok (3 configuration changes)"),
        "{verified}"
    );
}

#[test]
fn a_limit_set_through_one_runner_holds_on_the_other() {
    let fleet = Fleet::new();
    fleet.add("a", "alice", None);
    let limits = write_file(
        fleet.dir.path(),
        "limits.toml",
        "[[rate_limits]]\ntool = \"touch\"\nmax = 1\nwindow = \"1h\"\non_full = \"escalate\"\n",
    );
    let limits = limits.display().to_string();
    let unsigned = fleet.refused("a", &["limits", "set", &limits]);
    assert!(unsigned.contains("needs one's signature"), "{unsigned}");
    let alice = fleet.key("alice");
    let set = fleet.ok(
        "a",
        &["limits", "set", &limits, "--as", "alice", "--key", &alice],
    );
    assert!(set.contains("fleet change 2 by human:alice"), "{set}");
    let shown = fleet.ok("b", &["limits", "show"]);
    assert!(shown.contains("max = 1"), "{shown}");
    // The same text again changes nothing, and says so.
    let again = fleet.refused(
        "a",
        &["limits", "set", &limits, "--as", "alice", "--key", &alice],
    );
    assert!(again.contains("nothing to change"), "{again}");

    let rb = fleet.runbook("engine/mutate.wat", "true", "");
    for id in ["INC-1", "INC-2"] {
        fleet.ok("a", &["open", id, "--runbook", &rb]);
    }
    fleet.runbox("b", &["run", "--all"]);
    let statuses: Vec<Value> = ["INC-1", "INC-2"]
        .iter()
        .map(|id| fleet.status("a", id)["status"].clone())
        .collect();
    assert!(
        statuses.contains(&"resolved".into()) && statuses.contains(&"escalated".into()),
        "{statuses:?}"
    );
    assert_eq!(fleet.calls(), 1, "runner b kept the limit runner a set");
    let plan = fleet.ok("b", &["plan", &rb]);
    assert!(
        plan.contains("(the fleet's limits (store) rate_limits[0]); FULL now (1 used"),
        "{plan}"
    );
}

#[test]
fn limits_changed_after_the_gate_are_seen_before_the_mutating_call() {
    let fleet = Fleet::new();
    fleet.add("a", "alice", None);
    let first = write_file(
        fleet.dir.path(),
        "first.toml",
        "[[rate_limits]]\ntool = \"touch\"\nmax = 5\nwindow = \"1h\"\n",
    );
    let second = write_file(
        fleet.dir.path(),
        "second.toml",
        "[[rate_limits]]\ntool = \"touch\"\nmax = 4\nwindow = \"1h\"\n",
    );
    let alice = fleet.key("alice");
    let set = |file: &Path| {
        format!(
            "RUNBOX_DATA_DIR={} RUNBOX_STORE={} {} limits set {} --as alice --key {}",
            fleet.data("b").display(),
            fleet.cluster.url("fc"),
            crate::util::runbox_path().display(),
            file.display(),
            alice
        )
    };
    fleet.ok(
        "a",
        &[
            "limits",
            "set",
            &first.display().to_string(),
            "--as",
            "alice",
            "--key",
            &alice,
        ],
    );
    // The step's read tool has a human change the limits once, after the
    // gate read them and before the step's mutating call.
    let look = format!(
        "[ -e changed ] || {{ {} && touch changed; }}\n",
        set(&second)
    );
    let rb = fleet.runbook("engine/look_then_touch.wat", &look, "");
    fleet.ok("a", &["open", "INC-1", "--runbook", &rb]);
    let (code, text) = fleet.runbox("b", &["run", "INC-1"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(fleet.status("a", "INC-1")["status"], "resolved");
    assert_eq!(fleet.calls(), 1, "the first attempt called nothing");
    let timeline = fleet.ok("a", &["timeline", "INC-1"]);
    assert!(
        timeline.contains("the fleet's limits changed underneath before `restart` acted (a human changed it); nothing was called: attempt 2 runs now"),
        "{timeline}"
    );
    let counts = fleet.ok("a", &["limits", "--json"]);
    assert!(counts.contains("\"attempt\":2"), "{counts}");
}

#[test]
fn the_fleet_timeline_names_a_change_forged_behind_runbox_and_a_store_copy_keeps_it() {
    let fleet = Fleet::new();
    fleet.add("a", "alice", None);
    fleet.add("a", "bob", Some("alice"));
    let copy = fleet.cluster.url("copy");
    fleet.ok("a", &["store", "copy", &fleet.cluster.url("fc"), &copy]);
    let copied = code_and_text(
        &fleet
            .cmd("b")
            .env("RUNBOX_STORE", &copy)
            .args(["verify", "--fleet"])
            .output()
            .unwrap(),
    );
    assert_eq!(copied.0, 0, "{}", copied.1);
    assert!(
        copied.1.contains("fleet: ok (2 configuration changes)"),
        "{}",
        copied.1
    );
    let listed = code_and_text(
        &fleet
            .cmd("b")
            .env("RUNBOX_STORE", &copy)
            .args(["human", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(listed.1.lines().count(), 2, "{}", listed.1);

    // Whoever writes etcd directly can add a key; verify names the change.
    let doc: Value = serde_json::from_str(
        &fleet
            .etcd_get("fc/s/fleet/config/signers")
            .expect("the signers document"),
    )
    .unwrap();
    let mallory = std::fs::read_to_string(fleet.pubkey("mallory")).unwrap();
    let mut forged = doc.clone();
    forged["text"] = format!(
        "{}mallory {}",
        doc["text"].as_str().unwrap(),
        mallory.trim()
    )
    .into();
    fleet.etcd_put("fc/s/fleet/config/signers", &forged.to_string());
    let (code, text) = fleet.runbox("b", &["verify", "--fleet"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("violation: the fleet's signers document is not what its last change wrote"),
        "{text}"
    );
}

#[test]
fn a_data_dir_file_is_refused_on_a_shared_store_naming_what_moves_it() {
    let fleet = Fleet::new();
    for runner in ["a", "b"] {
        std::fs::create_dir_all(fleet.data(runner)).unwrap();
    }
    write_file(
        &fleet.data("b"),
        "limits.toml",
        "[[rate_limits]]\ntool = \"x\"\nmax = 1\nwindow = \"1h\"\n",
    );
    let text = fleet.refused("b", &["list"]);
    assert!(
        text.contains("limits.toml is not read on a store runners share")
            && text.contains("`runbox limits set FILE`"),
        "{text}"
    );
    write_file(&fleet.data("a"), "allowed_signers", "x\n");
    let text = fleet.refused("a", &["status", "INC-1"]);
    assert!(text.contains("`runbox human add NAME KEY.pub`"), "{text}");
    // Moving them works while they are there.
    let limits = fleet.data("b").join("limits.toml").display().to_string();
    let text = fleet.refused("b", &["limits", "set", &limits]);
    assert!(text.contains("needs one's signature"), "{text}");
    // The first human needs the current token.
    let alice = fleet.pubkey("alice");
    let (code, text) = code_and_text(
        &fleet
            .cmd("b")
            .env("RUNBOX_MUTATION_TOKEN", "rbx_not-the-token")
            .args(["human", "add", "alice", &alice])
            .output()
            .unwrap(),
    );
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("needs the current mutation token"), "{text}");
    // A document past the cap is refused before anything is signed.
    let huge = write_file(
        fleet.dir.path(),
        "huge.toml",
        &format!("# {}\n", "x".repeat(300 * 1024)),
    );
    let text = fleet.refused("b", &["limits", "set", &huge.display().to_string()]);
    assert!(
        text.contains("cannot read") && text.contains("262144"),
        "{text}"
    );
}

impl Fleet {
    fn etcd_get(&self, key: &str) -> Option<String> {
        let endpoints = format!("--endpoints={}", self.cluster.endpoints().join(","));
        let out = self
            .cluster
            .etcdctl()
            .args([endpoints.as_str(), "get", key, "--print-value-only"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (!text.trim().is_empty()).then(|| text.trim().to_string())
    }

    fn etcd_put(&self, key: &str, value: &str) {
        let endpoints = format!("--endpoints={}", self.cluster.endpoints().join(","));
        let out = self
            .cluster
            .etcdctl()
            .args([endpoints.as_str(), "put", key, value])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn routes_and_sinks_set_through_one_runner_are_what_a_serving_runner_follows() {
    use runbox_tests::receiver::{Mode, Receiver};
    let fleet = Fleet::new();
    fleet.add("a", "alice", None);
    let alice = fleet.key("alice");
    let d = fleet.dir.path();
    std::fs::create_dir_all(d.join("runbooks")).unwrap();
    write_file(
        d,
        "runbooks/svc.toml",
        &format!(
            "[runbook]\nname = \"svc\"\n[params.service]\ndescription = \"the service\"\n\
             [[steps]]\nid = \"restart\"\nmodule = \"{}\"\nimpact = \"high\"\n",
            fixture("engine/ok.wat").display()
        ),
    );
    std::fs::create_dir_all(fleet.data("b")).unwrap();
    write_file(
        &fleet.data("b"),
        "hook.key",
        "fleet-config-hmac-key-32-bytes!!",
    );
    let added = fleet
        .cmd("a")
        .args(["agent", "add", "am", "--can", "alert"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let am = String::from_utf8(added.stdout).unwrap().trim().to_string();

    // Runner b serves before there are routes or sinks.
    let (_server, url) = crate::util::start_serve(
        fleet
            .cmd("b")
            .args(["serve", "--listen", "127.0.0.1:0", "--runbooks"])
            .arg(d.join("runbooks")),
    )
    .unwrap();
    // Then a human sets both through runner a.
    let routes = write_file(
        d,
        "routes.toml",
        "[[routes]]\nname = \"api-down\"\nmatch = ['alertname=\"ApiDown\"']\nrunbook = \"svc\"\n\
         params = { service = \"{labels.service}\" }\nrun = \"auto\"\n",
    );
    let receiver = Receiver::start(Mode::Ok);
    let sinks = write_file(
        d,
        "sinks.toml",
        &format!(
            "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"hook.key\"\n\
             events = [\"approval-required\"]\nbackoff = \"10ms\"\n",
            receiver.url()
        ),
    );
    let set = fleet.ok(
        "a",
        &[
            "alerts",
            "routes",
            "set",
            &routes.display().to_string(),
            "--as",
            "alice",
            "--key",
            &alice,
        ],
    );
    assert!(set.contains("fleet change 2 by human:alice"), "{set}");
    let set = fleet.ok(
        "a",
        &[
            "notify",
            "set",
            &sinks.display().to_string(),
            "--as",
            "alice",
            "--key",
            &alice,
        ],
    );
    assert!(set.contains("fleet change 3 by human:alice"), "{set}");
    let shown = fleet.ok("b", &["notify", "show"]);
    assert!(shown.contains("name = \"hook\""), "{shown}");

    let alert = serde_json::json!({
        "version": "4", "receiver": "runbox", "status": "firing",
        "groupKey": "{}:{alertname=\"ApiDown\"}",
        "groupLabels": {"alertname": "ApiDown"},
        "commonLabels": {"alertname": "ApiDown", "service": "api"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.invalid",
        "truncatedAlerts": 0,
        "alerts": [{"status": "firing", "labels": {"alertname": "ApiDown", "service": "api"},
            "annotations": {}, "startsAt": "2026-12-04T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p.invalid", "fingerprint": "f00d"}]
    });
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/v1/alerts"))
            .bearer_auth(&am)
            .json(&alert)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{status}");
    let got = receiver.wait_for(std::time::Duration::from_secs(30), |r| !r.is_empty());
    assert!(
        !got.is_empty(),
        "the sink set through runner a never heard from runner b"
    );
    let body = got[0].json();
    assert_eq!(body["event"], "approval-required", "{body}");
    let listed: Value = serde_json::from_str(&fleet.ok("a", &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["runbook"], "svc", "{listed}");
    let verified = fleet.ok("b", &["verify"]);
    assert!(
        verified.contains("fleet: ok (3 configuration changes)"),
        "{verified}"
    );
}

#[test]
fn on_the_embedded_store_set_checks_a_file_and_makes_it_the_data_dir_s() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runbox = |args: &[&str]| {
        code_and_text(
            &crate::util::TestCommand::new()
                .env("RUNBOX_DATA_DIR", &data)
                .env_remove("RUNBOX_STORE")
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[[rate_limits]]\ntool = \"x\"\nmax = 0\nwindow = \"1h\"\n",
    );
    let (code, text) = runbox(&["limits", "set", &bad.display().to_string()]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("bad.toml rate_limits[0]"), "{text}");
    assert!(!data.join("limits.toml").exists());
    let good = write_file(
        dir.path(),
        "good.toml",
        "[[rate_limits]]\ntool = \"x\"\nmax = 2\nwindow = \"1h\"\n",
    );
    let good = good.display().to_string();
    let (code, text) = runbox(&["limits", "set", &good, "--as", "alice"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("here the data dir's files are edited directly"),
        "{text}"
    );
    let (code, text) = runbox(&["limits", "set", &good]);
    assert_eq!(code, 0, "{text}");
    let mode = std::fs::metadata(data.join("limits.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_, shown) = runbox(&["limits", "show"]);
    assert!(shown.contains("max = 2"), "{shown}");
    let routes = write_file(
        dir.path(),
        "routes.toml",
        "[[routes]]\nname = \"r\"\nmatch = []\n",
    );
    let (code, text) = runbox(&["alerts", "routes", "set", &routes.display().to_string()]);
    assert_ne!(code, 0, "a route needs its runbook: {text}");
    assert!(text.contains("routes.toml"), "{text}");
    // The counts are still `runbox limits` with no subcommand.
    let (code, text) = runbox(&["limits", "--json"]);
    assert_eq!(code, 0, "{text}");
}
