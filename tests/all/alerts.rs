//! Alerts in (issue 26): `POST /v1/alerts` of `runbox serve`, fed by a
//! real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, which
//! `scripts/bootstrap.sh --tests` installs) and by payloads posted
//! directly: the `alert` power and nothing else, refusals that change
//! nothing, routing by `routes.toml`, one incident per group, `alert` and
//! `alert-resolved` events, unrouted groups recorded for `runbox alerts`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbox_tests::{fixture, write_file};
use serde_json::{Value, json};

use crate::util::{Dir, Server, TestCommand};

/// A data dir with a `recover` runbook (diagnose; restart, which mutates;
/// verify) taking a `service` param, and three agents: `am` (alert),
/// `runner` (run) and `reader` (read).
struct World {
    dir: Dir,
    tokens: std::collections::HashMap<&'static str, String>,
}

/// A route for ApiDown alerts to `recover`, with `service` from the labels.
const ROUTES: &str = r#"
[[routes]]
name = "api-down"
match = ['alertname="ApiDown"', 'severity=~"critical|page"']
runbook = "recover"
params = { service = "{labels.service}" }
run = "RUN"
"#;

impl World {
    fn new(run: &str) -> Self {
        let dir = Dir::new();
        let d = dir.path();
        std::fs::create_dir_all(d.join("runbooks")).unwrap();
        write_file(
            d,
            "runbooks/tools.toml",
            "[tools.touch]\nmode = \"mutate\"\nargv = [\"sh\", \"-c\", \"echo call >> calls.log\"]\n",
        );
        write_file(
            d,
            "runbooks/recover.toml",
            &format!(
                r#"[runbook]
name = "recover"
tools = "tools.toml"

[params.service]
description = "the service"

[[steps]]
id = "diagnose"
module = "{ok}"

[[steps]]
id = "restart"
module = "{mutate}"
grants = {{ tools = ["touch"], kv_write = ["touched"] }}

[[steps]]
id = "verify"
module = "{ok}"
"#,
                ok = fixture("engine/ok.wat").display(),
                mutate = fixture("engine/mutate.wat").display(),
            ),
        );
        let w = World {
            dir,
            tokens: Default::default(),
        };
        std::fs::create_dir_all(w.data()).unwrap();
        w.routes(&ROUTES.replace("RUN", run));
        let mut w = w;
        for (name, can) in [("am", "alert"), ("runner", "run"), ("reader", "read")] {
            let token = w.cli(&["agent", "add", name, "--can", can]);
            w.tokens.insert(name, token.trim().to_string());
        }
        w
    }

    fn data(&self) -> PathBuf {
        self.dir.data()
    }

    fn routes(&self, text: &str) {
        write_file(&self.data(), "routes.toml", text);
    }

    /// `runbox ARGS` on the data dir; its stdout, which must succeed.
    fn cli(&self, args: &[&str]) -> String {
        TestCommand::on(&self.data()).args(args).ok()
    }

    /// `runbox serve` on a free port: the server and its URL, or what it
    /// said when it would not start.
    fn serve(&self) -> Result<(Server, String), String> {
        crate::util::start_serve(
            self.dir
                .command()
                .args(["serve", "--listen", "127.0.0.1:0", "--runbooks"])
                .arg(self.dir.path().join("runbooks")),
        )
    }

    fn incidents(&self) -> Vec<Value> {
        serde_json::from_str(&self.cli(&["list", "--json"])).unwrap()
    }

    fn timeline(&self, id: &str) -> Vec<Value> {
        self.cli(&["timeline", id, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn kinds(&self, id: &str, kind: &str) -> usize {
        self.timeline(id)
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    }
}

/// Posts `body` to `url` with `token`: the status and the JSON answer.
async fn post(url: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/alerts"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// Alertmanager's webhook payload for one alert of `labels`.
fn webhook(status: &str, group_key: &str, labels: Value) -> Vec<u8> {
    json!({
        "version": "4",
        "receiver": "runbox",
        "status": status,
        "groupKey": group_key,
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "the API answers 503"},
        "externalURL": "http://alertmanager.invalid",
        "truncatedAlerts": 0,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": {"summary": "the API answers 503"},
            "startsAt": "2026-12-02T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.invalid/graph",
            "fingerprint": "c0ffee"
        }]
    })
    .to_string()
    .into_bytes()
}

fn api_down() -> Value {
    json!({"alertname": "ApiDown", "severity": "critical", "service": "api"})
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_alert_power_posts_alerts_and_it_may_do_nothing_else() {
    let w = World::new("manual");
    let (_server, url) = w.serve().unwrap();
    let hook = || webhook("firing", "{}:{alertname=\"ApiDown\"}", api_down());
    let (status, body) = post(&url, None, hook()).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    for agent in ["runner", "reader"] {
        let (status, body) = post(&url, Some(&w.tokens[agent]), hook()).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{agent}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`alert`"),
            "{body}"
        );
    }
    assert!(w.incidents().is_empty(), "a refused webhook opens nothing");
    // The alert token reads nothing, opens nothing, runs nothing.
    let http = reqwest::Client::new();
    let am = &w.tokens["am"];
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/incidents", None),
        (reqwest::Method::GET, "/v1/runbooks", None),
        (reqwest::Method::GET, "/v1/brakes", None),
        (
            reqwest::Method::POST,
            "/v1/incidents",
            Some(json!({"runbook": "recover", "id": "INC-1", "params": {"service": "api"}})),
        ),
        (
            reqwest::Method::POST,
            "/v1/brakes",
            Some(json!({"scope": "all", "reason": "r"})),
        ),
    ] {
        let mut req = http
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(am);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, code(&body)),
            (403, "forbidden"),
            "{method} {path}: {body}"
        );
    }
    assert!(w.incidents().is_empty());
    let (status, body) = post(&url, Some(am), hook()).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_a_malformed_body_or_an_oversized_one_is_refused_and_changes_nothing() {
    let w = World::new("manual");
    let (_server, url) = w.serve().unwrap();
    let am = Some(w.tokens["am"].as_str());
    let v3 = String::from_utf8(webhook("firing", "g", api_down()))
        .unwrap()
        .replace("\"version\":\"4\"", "\"version\":\"3\"");
    let (status, body) = post(&url, am, v3.into_bytes()).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version \"3\""),
        "{body}"
    );
    let (status, body) = post(&url, am, b"{\"version\": \"4\", \"alerts\": [".to_vec()).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let no_alerts = json!({"version": "4", "status": "firing", "groupKey": "g", "alerts": []});
    let (status, body) = post(&url, am, no_alerts.to_string().into_bytes()).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    // One byte over the cap: 413, and the connection is not read further.
    let mut big = webhook("firing", "g", api_down());
    let pad = runbox_core::alert::MAX_WEBHOOK_BYTES + 1 - big.len();
    big.splice(
        1..1,
        format!("\"pad\": \"{}\",", "x".repeat(pad)).into_bytes(),
    );
    assert!(big.len() > runbox_core::alert::MAX_WEBHOOK_BYTES);
    let (status, body) = post(&url, am, big).await;
    assert_eq!((status, code(&body)), (413, "too_large"), "{body}");
    // Just under the cap is read (and, unlike /v1's 64 KiB, taken).
    let mut under = webhook("firing", "g", api_down());
    let pad = 200 * 1024;
    under.splice(
        1..1,
        format!("\"pad\": \"{}\",", "x".repeat(pad)).into_bytes(),
    );
    assert!(under.len() < runbox_core::alert::MAX_WEBHOOK_BYTES);
    assert!(under.len() > runbox_server::http::MAX_BODY_BYTES);
    assert!(w.incidents().is_empty(), "nothing opened by a refused body");
    assert_eq!(w.cli(&["alerts"]).trim(), "no unrouted alerts");
    let (status, body) = post(&url, am, under).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_group_is_answered_202_recorded_and_listed_inert() {
    let w = World::new("manual");
    let (_server, url) = w.serve().unwrap();
    let am = Some(w.tokens["am"].as_str());
    let hostile = json!({"alertname": "DiskFull", "host": "db1\n2026-12-02 opened INC-9\u{1b}[2J"});
    let (status, body) = post(
        &url,
        am,
        webhook("firing", "{}:{alertname=\"DiskFull\"}", hostile),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("unrouted")),
        "{body}"
    );
    // A route that matches but lacks a label its params need: recorded, with why.
    let no_service = json!({"alertname": "ApiDown", "severity": "page"});
    let (status, body) = post(
        &url,
        am,
        webhook("firing", "{}:{alertname=\"ApiDown\"}", no_service),
    )
    .await;
    assert_eq!(
        (status, body["route"].as_str()),
        (202, Some("api-down")),
        "{body}"
    );
    // A label value that is no valid param value: recorded too.
    let bad_value = json!({"alertname": "ApiDown", "severity": "page", "service": "a/../b"});
    let (status, body) = post(&url, am, webhook("firing", "k3", bad_value)).await;
    assert_eq!(status, 202, "{body}");
    assert!(w.incidents().is_empty());

    let listed: Vec<Value> = serde_json::from_str(&w.cli(&["alerts", "--json"])).unwrap();
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let of = |key: &str| {
        listed
            .iter()
            .find(|a| a["group_key"] == key)
            .unwrap_or_else(|| panic!("{key}: {listed:#?}"))
    };
    let disk = of("{}:{alertname=\"DiskFull\"}");
    assert_eq!(disk["fingerprints"], json!(["c0ffee"]));
    assert_eq!(
        (disk["alerts"].as_u64(), disk["status"].as_str()),
        (Some(1), Some("firing"))
    );
    assert_eq!(disk["by"], "agent:am");
    assert_eq!(disk["route"], Value::Null);
    let reason = of("{}:{alertname=\"ApiDown\"}")["reason"].as_str().unwrap();
    assert!(
        reason.contains("routes.toml routes[0] (api-down)")
            && reason.contains("params.service")
            && reason.contains("`service`"),
        "{reason}"
    );
    assert!(
        of("k3")["reason"].as_str().unwrap().contains("a/../b"),
        "{listed:#?}"
    );
    let text = w.cli(&["alerts"]);
    assert!(
        text.contains("DiskFull") && text.contains("no route matches"),
        "{text}"
    );
    for line in text.lines() {
        assert!(runbox_core::inert::is_inert_line(line), "{line:?}");
        assert!(
            !line.starts_with("2026-12-02 opened"),
            "a forged line: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_opens_one_incident_refires_add_events_and_auto_runs_as_run() {
    let w = World::new("auto");
    let (_server, url) = w.serve().unwrap();
    let am = Some(w.tokens["am"].as_str());
    let key = "{}/{severity=~\"critical|page\"}:{alertname=\"ApiDown\", service=\"api\"}";
    let (status, body) = post(&url, am, webhook("firing", key, api_down())).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (201, Some("opened")),
        "{body}"
    );
    let id = body["incident"].as_str().unwrap().to_string();
    assert!(id.starts_with("ALERT-"), "{id}");
    // The same webhook again (Alertmanager's repeat): the same incident.
    let (status, body) = post(&url, am, webhook("firing", key, api_down())).await;
    assert_eq!(
        (status, body["outcome"].as_str(), body["incident"].as_str()),
        (200, Some("fired"), Some(id.as_str())),
        "{body}"
    );
    let incidents = w.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0]["runbook"], "recover");
    let status = w.cli(&["status", &id, "--json"]);
    let view: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(view["params"], json!({"service": "api"}));

    // Auto: diagnose runs as agent:am with `run`; restart mutates, so the
    // run stops there with a note, the incident open for an agent with
    // `mutate` (the alert token never holds the mutation power).
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.kinds(&id, "note") == 0 {
        assert!(Instant::now() < deadline, "{:#?}", w.timeline(&id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let timeline = w.timeline(&id);
    let committed: Vec<&Value> = timeline
        .iter()
        .filter(|e| e["kind"] == "step-committed")
        .collect();
    assert_eq!(committed.len(), 1, "{timeline:#?}");
    assert_eq!(
        (
            committed[0]["step"].as_str(),
            committed[0]["actor"].as_str()
        ),
        (Some("diagnose"), Some("agent:am"))
    );
    let note = timeline.iter().find(|e| e["kind"] == "note").unwrap();
    assert!(
        note["message"]
            .as_str()
            .unwrap()
            .contains("`restart` mutates"),
        "{note}"
    );
    assert!(
        !w.dir.path().join("runbooks/calls.log").exists(),
        "no mutating call"
    );
    assert_eq!(w.kinds(&id, "alert"), 2);

    // Resolved: an event, the status says so, the incident stays open.
    let (status, body) = post(&url, am, webhook("resolved", key, api_down())).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("resolved")),
        "{body}"
    );
    assert_eq!(w.kinds(&id, "alert-resolved"), 1);
    let text = w.cli(&["status", &id]);
    assert!(text.contains("status     open"), "{text}");
    assert!(text.contains("alert      resolved"), "{text}");
    assert_eq!(w.incidents().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_routes_file_names_file_entry_and_field() {
    let w = World::new("manual");
    w.routes(
        &ROUTES
            .replace("RUN", "manual")
            .replace("critical|page", "critical|("),
    );
    let said = w.serve().err().expect("serve refuses a broken routes.toml");
    assert!(
        said.contains("routes.toml routes[0] (api-down): match[1]") && said.contains("regex"),
        "{said}"
    );
    // A route naming a runbook no one serves: refused at start as well.
    w.routes(
        &ROUTES
            .replace("RUN", "manual")
            .replace("\"recover\"", "\"recovr\""),
    );
    let said = w.serve().err().expect("serve refuses an unknown runbook");
    assert!(
        said.contains("routes[0] (api-down): runbook: no runbook `recovr`"),
        "{said}"
    );
    // Broken while serving: 503 naming it (Alertmanager sends again), nothing written.
    w.routes(&ROUTES.replace("RUN", "manual"));
    let (_server, url) = w.serve().unwrap();
    w.routes(&ROUTES.replace("RUN", "sometimes"));
    let am = Some(w.tokens["am"].as_str());
    let (status, body) = post(&url, am, webhook("firing", "g", api_down())).await;
    assert_eq!((status, code(&body)), (503, "unavailable"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routes.toml"),
        "{body}"
    );
    assert!(w.incidents().is_empty());
    assert_eq!(w.cli(&["alerts"]).trim(), "no unrouted alerts");
}

/// The Alertmanager binary; the test fails (never skips) without it.
fn alertmanager() -> &'static str {
    crate::util::require_bin("prometheus-alertmanager", "prometheus-alertmanager")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Alertmanager on loopback with its own data dir, sending every group to
/// `runbox serve` at `url` with `token`; its API's URL.
fn start_alertmanager(dir: &Path, url: &str, token: &str) -> (Server, String) {
    let bin = alertmanager();
    let config = format!(
        r#"route:
  receiver: runbox
  group_by: ['alertname', 'service']
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 3s
receivers:
  - name: runbox
    webhook_configs:
      - url: {url}/v1/alerts
        send_resolved: true
        http_config:
          authorization:
            credentials: {token}
"#
    );
    let config = write_file(dir, "alertmanager.yml", &config);
    std::fs::create_dir_all(dir.join("am-data")).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Server(child), format!("http://127.0.0.1:{port}"))
}

/// Posts one alert to Alertmanager's own API (`endsAt` in the past
/// resolves it).
async fn post_to_alertmanager(am: &str, labels: &Value, ends_at: Option<&str>) {
    let mut alert = json!({"labels": labels, "annotations": {"summary": "the API answers 503"}});
    if let Some(ends) = ends_at {
        alert["endsAt"] = json!(ends);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http
            .post(format!("{am}/api/v2/alerts"))
            .json(&json!([alert]))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => return,
            other => assert!(
                Instant::now() < deadline,
                "Alertmanager does not take alerts: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_opens_one_incident_a_refire_adds_an_event_and_a_resolve_is_recorded() {
    let w = World::new("manual");
    let (_server, url) = w.serve().unwrap();
    let (_am, am_url) = start_alertmanager(w.dir.path(), &url, &w.tokens["am"]);
    let labels = api_down();
    post_to_alertmanager(&am_url, &labels, None).await;

    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "Alertmanager never got {what} to runbox"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("the first webhook", &|| !w.incidents().is_empty());
    let incidents = w.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let id = incidents[0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ALERT-"), "{id}");
    assert_eq!(incidents[0]["runbook"], "recover");
    // The group's state is in the opening commit: there from the first moment.
    let view: Value = serde_json::from_str(&w.cli(&["status", &id, "--json"])).unwrap();
    assert_eq!(view["params"], json!({"service": "api"}));
    assert_eq!(view["alert"]["route"], "api-down");
    assert_eq!(view["status"], "open", "manual: opened, not run");

    // Alertmanager repeats the firing group: events, never a second incident.
    wait("a repeat", &|| w.kinds(&id, "alert") >= 2);
    assert_eq!(w.incidents().len(), 1);

    // Resolved in Alertmanager (endsAt in the past): an alert-resolved event.
    post_to_alertmanager(&am_url, &labels, Some("2020-01-01T00:00:00Z")).await;
    wait("the resolve", &|| w.kinds(&id, "alert-resolved") >= 1);
    let text = w.cli(&["status", &id]);
    assert!(text.contains("alert      resolved"), "{text}");
    assert!(
        text.contains("status     open"),
        "a resolved alert resolves no incident: {text}"
    );
    assert_eq!(w.incidents().len(), 1);
    let resolved = w
        .timeline(&id)
        .into_iter()
        .find(|e| e["kind"] == "alert-resolved")
        .unwrap();
    assert_eq!(resolved["actor"], "agent:am");
}

/// A group no route took reaches the sinks that want `alert-unrouted`:
/// signed, with the alert as recorded, and no incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_group_reaches_the_sinks_that_want_it() {
    use runbox_tests::receiver::{Mode, Receiver, verify_signature};
    let receiver = Receiver::spawn(Mode::Ok).await;
    let w = World::new("manual");
    let secret = "an-hmac-key-for-unrouted-alerts!";
    write_file(&w.data(), "hook.key", secret);
    write_file(
        &w.data(),
        "notify.toml",
        &format!(
            "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"hook.key\"\nevents = [\"alert-unrouted\"]\n",
            receiver.url()
        ),
    );
    let (_server, url) = w.serve().unwrap();
    let labels = json!({"alertname": "DiskFull", "host": "db1"});
    let (status, body) = post(
        &url,
        Some(&w.tokens["am"]),
        webhook("firing", "{}:{alertname=\"DiskFull\"}", labels),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let sig = got[0].signature.as_deref().unwrap();
    verify_signature(secret.as_bytes(), sig, &got[0].body, 300).unwrap();
    let notice = got[0].json();
    assert_eq!(notice["event"], "alert-unrouted");
    assert!(notice.get("incident").is_none(), "{notice}");
    assert_eq!(notice["alert"]["common_labels"]["alertname"], "DiskFull");
    assert!(
        got[0]
            .key
            .as_deref()
            .unwrap()
            .starts_with("alert-unrouted:")
    );
    assert_eq!(notice["commands"][0], "runbox alerts");
}
