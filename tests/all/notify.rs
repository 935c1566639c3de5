//! Escalations out (`notify.toml`, the outbox): real HTTP receivers on
//! loopback that verify the HMAC themselves, fail, hang or close; a
//! `runbox` killed between the commit and the delivery, and between the
//! delivery and its record, still delivers at least once, under one key.

use std::path::PathBuf;
use std::process::Stdio;

use crate::util::{Dir, Server, TestCommand};
use std::time::Duration;

use runbox_tests::receiver::{Mode, Received, Receiver, verify_signature};
use runbox_tests::{code_and_text, fixture, write_file};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

/// A data dir with an escalating runbook (`look`, then `escalate`) and a
/// `notify.toml`.
struct World {
    dir: Dir,
}

impl World {
    fn new(notify: &str) -> World {
        let dir = Dir::new();
        let d = dir.path();
        write_file(
            d,
            "page.toml",
            &format!(
                "[runbook]\nname = \"page\"\n[[steps]]\nid = \"look\"\nmodule = \"{}\"\non = {{ ok = \"escalate\" }}\n",
                fixture("engine/ok.wat").display()
            ),
        );
        write_file(d, "hook.key", SECRET);
        std::fs::create_dir_all(d.join("data")).unwrap();
        write_file(&d.join("data"), "notify.toml", notify);
        World { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.data()
    }

    fn cmd(&self, args: &[&str]) -> TestCommand {
        let mut c = self.dir.command();
        c.env("PD_KEY", "R0UT1NGKEY").args(args);
        c
    }

    fn runbox(&self, args: &[&str]) -> (i32, String) {
        code_and_text(&self.cmd(args).output().unwrap())
    }

    /// Opens `id` and runs it to its escalation.
    fn escalate(&self, id: &str) -> (i32, String) {
        let (code, text) = self.runbox(&["open", id, "--runbook", "page.toml"]);
        assert_eq!(code, 0, "{text}");
        self.runbox(&["run", id])
    }

    fn timeline(&self, id: &str) -> String {
        self.runbox(&["timeline", id]).1
    }

    fn rewrite_notify(&self, notify: &str) {
        write_file(&self.data(), "notify.toml", notify);
    }

    /// `runbox serve` on a free port, killed when dropped.
    fn serve(&self) -> Server {
        let (server, _) =
            crate::util::start_serve(&mut self.cmd(&["serve", "--listen", "127.0.0.1:0"]))
                .unwrap_or_else(|e| panic!("serve did not start: {e}"));
        server
    }

    /// Waits until the timeline of `id` holds `needle`.
    fn wait_for_timeline(&self, id: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let timeline = self.timeline(id);
            if timeline.contains(needle) || std::time::Instant::now() > deadline {
                return timeline;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hook(url: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"../hook.key\"\nevents = [\"escalated\", \"approval-required\"]\nbackoff = \"10ms\"\n{extra}"
    )
}

fn keys(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect()
}

#[test]
fn an_escalation_reaches_a_webhook_once_signed_with_its_key() {
    let r = Receiver::start(Mode::Ok);
    let w = World::new(&hook(&r.url(), ""));
    let (code, text) = w.escalate("INC-1");
    assert_eq!(code, 4, "{text}");
    let got = r.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = &got[0];
    verify_signature(
        SECRET.as_bytes(),
        req.signature.as_deref().unwrap(),
        &req.body,
        300,
    )
    .unwrap();
    let body = req.json();
    assert_eq!(body["schema"], "runbox.notification/v1");
    assert_eq!(body["event"], "escalated");
    assert_eq!(body["incident"]["id"], "INC-1");
    assert_eq!(body["incident"]["status"], "escalated");
    assert_eq!(req.key.as_deref(), body["id"].as_str());
    assert!(req.key.as_deref().unwrap().starts_with("INC-1:"), "{req:?}");
    let commands = body["commands"].to_string();
    assert!(
        commands.contains("runbox takeover INC-1 --as YOU"),
        "{commands}"
    );
    assert!(
        body["asked"]
            .as_str()
            .unwrap()
            .contains("takes the incident over")
    );
    let timeline = w.timeline("INC-1");
    assert!(
        timeline.contains("notified") && timeline.contains("HTTP 200"),
        "{timeline}"
    );
    let (_, list) = w.runbox(&["notify", "list"]);
    assert!(list.contains("every notification is delivered"), "{list}");
    // A forged or stale signature is what the receiver refuses.
    assert!(
        verify_signature(
            b"another key entirely, 32 bytes!",
            req.signature.as_deref().unwrap(),
            &req.body,
            300
        )
        .is_err()
    );
}

#[test]
fn a_refusing_receiver_parks_the_entry_and_notify_retry_delivers_it() {
    let r = Receiver::start(Mode::FailFirst(1));
    let w = World::new(&hook(&r.url(), "max_attempts = 1\n"));
    let (code, text) = w.escalate("INC-1");
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("not delivered yet"), "{text}");
    let (_, list) = w.runbox(&["notify", "list"]);
    assert!(
        list.contains("escalated parked, 1 tries: HTTP 500"),
        "{list}"
    );
    let (_, status) = w.runbox(&["status", "INC-1"]);
    assert!(
        status.contains("notify") && status.contains("parked"),
        "{status}"
    );
    let (code, text) = w.runbox(&["notify", "retry"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1 notification(s) tried again, 1 delivered"),
        "{text}"
    );
    let got = r.received();
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 200]
    );
    let k = keys(&got);
    assert_eq!(k[0], k[1], "one idempotency key for every try");
    let timeline = w.timeline("INC-1");
    let failed = timeline
        .find("notify-failed")
        .expect("a failed try is on the timeline");
    let notified = timeline.rfind("notified").unwrap();
    assert!(
        failed < notified && timeline.contains("parked"),
        "{timeline}"
    );
}

#[test]
fn serve_delivers_what_waits_with_backoff_until_the_receiver_takes_it() {
    let r = Receiver::start(Mode::Close);
    let w = World::new(&hook(&r.url(), ""));
    let (code, text) = w.escalate("INC-1");
    assert_eq!(code, 4, "{text}");
    let (_, list) = w.runbox(&["notify", "list"]);
    assert!(list.contains("escalated pending, 1 tries"), "{list}");
    r.set_mode(Mode::FailFirst(2));
    let _serve = w.serve();
    let got = r.wait_for(WAIT, |got| got.iter().any(|r| r.answered == 200));
    let answers: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(
        answers,
        [0, 500, 500, 200],
        "closed, two refusals, then taken"
    );
    let k = keys(&got);
    assert!(k.iter().all(|key| *key == k[0]), "{k:?}");
    let deadline = std::time::Instant::now() + WAIT;
    while !w.timeline("INC-1").contains("HTTP 200") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.timeline("INC-1").contains("HTTP 200"),
        "{}",
        w.timeline("INC-1")
    );
}

#[test]
fn killed_after_the_delivery_and_before_its_record_it_delivers_again_under_the_same_key() {
    let r = Receiver::start(Mode::Hang);
    let w = World::new(&hook(&r.url(), "timeout = \"60s\"\n"));
    let (code, text) = w.runbox(&["open", "INC-1", "--runbook", "page.toml"]);
    assert_eq!(code, 0, "{text}");
    let mut run = w
        .cmd(&["run", "INC-1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = r.wait_for(WAIT, |got| !got.is_empty());
    assert_eq!(got.len(), 1, "the receiver has the notification");
    run.kill().unwrap(); // SIGKILL: no `notified` record, no delivery state
    run.wait().unwrap();
    assert!(!w.timeline("INC-1").contains("notified"));
    r.set_mode(Mode::Ok);
    let _serve = w.serve();
    let got = r.wait_for(WAIT, |got| got.iter().any(|r| r.answered == 200));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].key, got[1].key,
        "the receiver can drop the duplicate"
    );
}

#[test]
fn killed_between_the_commit_and_the_delivery_it_delivers_after_the_restart() {
    // A receiver that never accepts: the commit is durable, the request
    // never reaches anyone, and the process dies waiting.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", blackhole.local_addr().unwrap());
    let w = World::new(&hook(&url, "timeout = \"60s\"\n"));
    let (code, text) = w.runbox(&["open", "INC-1", "--runbook", "page.toml"]);
    assert_eq!(code, 0, "{text}");
    let mut run = w
        .cmd(&["run", "INC-1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    w.wait_for_timeline("INC-1", "escalated");
    std::thread::sleep(Duration::from_millis(300));
    run.kill().unwrap();
    run.wait().unwrap();
    drop(blackhole);
    let r = Receiver::start(Mode::Ok);
    w.rewrite_notify(&hook(&r.url(), ""));
    let _serve = w.serve();
    let got = r.wait_for(WAIT, |got| !got.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].json()["event"], "escalated");
    assert!(got[0].key.as_deref().unwrap().starts_with("INC-1:"));
}

#[test]
fn slack_and_pagerduty_get_their_documented_shapes() {
    let slack = Receiver::start(Mode::Ok);
    let pd = Receiver::start(Mode::Ok);
    let notify = format!(
        "[[sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl_file = \"../slack.url\"\nevents = [\"escalated\"]\n\n[[sinks]]\nname = \"pager\"\nkind = \"pagerduty\"\nurl = \"{}\"\nsecret_env = \"PD_KEY\"\nevents = [\"escalated\", \"resolved\"]\n",
        pd.url()
    );
    let w = World::new(&notify);
    write_file(w.dir.path(), "slack.url", &slack.url());
    let (code, text) = w.escalate("INC-9");
    assert_eq!(code, 4, "{text}");
    let s = slack.received();
    assert_eq!(s.len(), 1);
    let body = s[0].json();
    assert!(body["text"].as_str().unwrap().contains("INC-9"));
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(
        blocks
            .iter()
            .all(|b| b["type"] == "header" || b["type"] == "section")
    );
    assert!(body.to_string().contains("runbox takeover INC-9 --as YOU"));
    let p = pd.received();
    assert_eq!(p.len(), 1);
    let event = p[0].json();
    assert_eq!(event["routing_key"], "R0UT1NGKEY");
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(event["dedup_key"], "INC-9");
    let payload = &event["payload"];
    assert!(
        payload["summary"]
            .as_str()
            .unwrap()
            .starts_with("INC-9 escalated")
    );
    assert!(payload["summary"].as_str().unwrap().len() <= 1024);
    assert_eq!(payload["severity"], "critical");
    assert!(payload["source"].as_str().is_some());
}

#[test]
fn a_hanging_receiver_times_out_and_the_entry_parks() {
    let r = Receiver::start(Mode::Hang);
    let w = World::new(&hook(&r.url(), "timeout = \"300ms\"\nmax_attempts = 1\n"));
    let (code, text) = w.escalate("INC-1");
    assert_eq!(code, 4, "{text}");
    let (_, list) = w.runbox(&["notify", "list", "--json"]);
    let n: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(n["delivery"]["state"], "parked");
    assert_eq!(n["delivery"]["last_error"], "no answer within 300ms");
}

#[test]
fn a_broken_or_secret_bearing_notify_toml_stops_every_writer_naming_the_field() {
    let w = World::new(&hook("http://127.0.0.1:9/", "").replace(
        "secret_file = \"../hook.key\"",
        "secret = \"hunter2hunter2hunter2\"",
    ));
    let (code, text) = w.runbox(&["open", "INC-1", "--runbook", "page.toml"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("notify.toml sinks[0] (hook): secret: an inline secret is refused"),
        "{text}"
    );
    let (code, text) = w.runbox(&["notify", "check"]);
    assert_ne!(code, 0);
    assert!(text.contains("inline secret"), "{text}");
    w.rewrite_notify(&hook("http://127.0.0.1:9/", "").replace("../hook.key", "../missing.key"));
    let (code, text) = w.runbox(&["notify", "check"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("sinks[0] (hook): secret from file ../missing.key"),
        "{text}"
    );
    w.rewrite_notify("[[sinks]]\nname = 1\n");
    let (code, text) = w.runbox(&["notify", "check"]);
    assert_ne!(code, 0);
    assert!(text.contains("notify.toml: toml"), "{text}");
}

#[test]
fn notify_test_sends_a_sample_and_says_what_the_sink_answered() {
    let r = Receiver::start(Mode::Ok);
    let w = World::new(&hook(&r.url(), ""));
    let (code, text) = w.runbox(&["notify", "test", "hook"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hook: HTTP 200"), "{text}");
    let got = r.received();
    verify_signature(
        SECRET.as_bytes(),
        got[0].signature.as_deref().unwrap(),
        &got[0].body,
        300,
    )
    .unwrap();
    let (code, text) = w.runbox(&["notify", "test", "nope"]);
    assert_ne!(code, 0);
    assert!(text.contains("no sink named `nope`"), "{text}");
}

#[test]
fn a_secret_gone_after_the_commit_leaves_the_entry_waiting_and_the_exit_as_it_was() {
    let r = Receiver::start(Mode::Ok);
    let w = World::new(&hook(&r.url(), ""));
    let (code, text) = w.runbox(&["open", "INC-1", "--runbook", "page.toml"]);
    assert_eq!(code, 0, "{text}");
    let key = w.dir.path().join("hook.key");
    std::fs::remove_file(&key).unwrap();
    let (code, text) = w.runbox(&["run", "INC-1"]);
    assert_eq!(code, 4, "the run escalated as it would have: {text}");
    assert!(
        text.contains("notifications not sent") && text.contains("hook.key"),
        "{text}"
    );
    let (_, list) = w.runbox(&["notify", "list"]);
    assert!(list.contains("escalated pending, 0 tries"), "{list}");
    // The owner that can read the secret delivers it.
    std::fs::write(&key, SECRET).unwrap();
    let _serve = w.serve();
    let got = r.wait_for(WAIT, |got| !got.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
}

#[test]
fn two_runners_sharing_etcd_send_each_owed_entry_once() {
    let cluster = runbox_tests::etcd::EtcdCluster::start(1);
    let r = Receiver::start(Mode::Close);
    let w = World::new(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"../hook.key\"\nevents = [\"escalated\"]\nbackoff = \"10ms\"\nmax_attempts = 50\n",
        r.url()
    ));
    let on_etcd = |args: &[&str]| {
        let mut c = w.cmd(args);
        c.env("RUNBOX_STORE", cluster.url("nt"));
        c
    };
    sinks_into_the_store(&w, &on_etcd);
    let ids: Vec<String> = (1..=6).map(|i| format!("INC-{i}")).collect();
    for id in &ids {
        let out = on_etcd(&["open", id, "--runbook", "page.toml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", code_and_text(&out).1);
        // Each run's one try meets a closed connection: all six stay owed.
        let out = on_etcd(&["run", id]).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{}", code_and_text(&out).1);
    }
    // A receiver slow to answer keeps each send open while the other
    // runner scans the same owed entries.
    r.set_mode(Mode::Slow(1500));
    let mut runners: Vec<std::process::Child> = ["east", "west"]
        .iter()
        .map(|name| {
            on_etcd(&[
                "--runner", name, "run", "--all", "--follow", "--poll", "200ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    let taken = |got: &[Received]| {
        let mut keys: Vec<String> = got
            .iter()
            .filter(|r| r.answered == 200)
            .filter_map(|r| r.key.clone())
            .collect();
        keys.sort();
        keys
    };
    r.wait_for(WAIT, |got| taken(got).len() >= ids.len());
    // Long enough for a second sender to have sent: both runners scan at
    // start and the receiver holds each request 1.5 s.
    std::thread::sleep(Duration::from_secs(4));
    for child in &mut runners {
        let _ = child.kill();
        let _ = child.wait();
    }
    let keys = taken(&r.received());
    let mut once = keys.clone();
    once.dedup();
    assert_eq!(once.len(), ids.len(), "every entry delivered: {keys:?}");
    assert_eq!(keys, once, "no entry sent twice once a receiver took it");
}

/// On a store runners share the sinks are the store's, not the data
/// dir's: the world's `notify.toml` becomes the store's, set by the
/// fleet's first human (enrolled with the mutation token).
fn sinks_into_the_store(w: &World, on_store: &dyn Fn(&[&str]) -> TestCommand) {
    let file = w.data().join("notify.toml");
    let sinks = write_file(
        w.dir.path(),
        "sinks.toml",
        &std::fs::read_to_string(&file).unwrap(),
    );
    std::fs::remove_file(&file).unwrap();
    let init = on_store(&["token", "init"]).output().unwrap();
    assert!(init.status.success(), "{}", code_and_text(&init).1);
    let token = String::from_utf8(init.stdout).unwrap().trim().to_string();
    let with_token = || {
        let mut c = on_store(&[]);
        c.env("RUNBOX_MUTATION_TOKEN", &token);
        c
    };
    let key = runbox_tests::human_key_by(
        &|| with_token().into_command(),
        &w.dir.path().join("keys"),
        "ops",
    )
    .unwrap();
    let set = on_store(&["notify", "set"])
        .arg(&sinks)
        .args(["--as", "ops", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", code_and_text(&set).1);
}
