//! What an operator's tooling reads: log lines as JSON objects for a log
//! pipeline (`--log-format json`, `RUNBOX_LOG_FORMAT`), metrics scraped by
//! a real Prometheus and checked by `promtool`, and `/readyz` saying why
//! a runner cannot work.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbox_tests::{code_and_text, ok_runbook};
use serde_json::Value;

use crate::util::{Server, TestCommand, escalating_world, open_and_run, serve_with_agent};

#[test]
fn json_logs_are_one_object_a_line_with_the_incident_as_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let rb = ok_runbook(dir.path(), 1);
    let out = TestCommand::new()
        .env("RUNBOX_DATA_DIR", dir.path().join("data"))
        .env("RUNBOX_LOG", "info")
        .env("RUNBOX_LOG_FORMAT", "json")
        .args(["open", "INC-1", "--runbook", rb.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let opened = lines
        .iter()
        .find(|l| l["message"] == "incident opened")
        .unwrap_or_else(|| panic!("no `incident opened` line: {lines:?}"));
    assert_eq!(opened["incident"], "INC-1");
    assert_eq!(opened["level"], "INFO");
    assert!(
        opened["timestamp"].is_string() && opened["target"].is_string(),
        "{opened}"
    );
    // The human format stays the default, and a format that does not exist
    // is refused by name.
    let (code, text) = code_and_text(
        &TestCommand::new()
            .env("RUNBOX_DATA_DIR", dir.path().join("data"))
            .args(["--log-format", "xml", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("invalid value 'xml'") && text.contains("json"),
        "{text}"
    );
}

/// The Prometheus binary (and its `promtool`); the test fails (never
/// skips) without them.
fn prometheus_bin() -> &'static str {
    crate::util::require_bin("promtool", "prometheus");
    crate::util::require_bin("prometheus", "prometheus")
}

/// Prometheus on loopback with its own data dir, scraping `target`
/// (`host:port`) every second; its API's URL.
fn start_prometheus(dir: &Path, target: &str) -> (Server, String) {
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: runbox\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let config = runbox_tests::write_file(dir, "prometheus.yml", &config);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Server(child), format!("http://127.0.0.1:{port}"))
}

/// Asks Prometheus `query` until its first sample's value passes `ok`;
/// that value (or the last answer, in the panic).
async fn query_until(prom: &str, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let url =
            reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), [("query", query)])
                .unwrap();
        let answer = http.get(url).send().await;
        if let Ok(answer) = answer {
            last = answer.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&last).unwrap_or_default();
            let value = body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("Prometheus never answered `{query}` as expected; last: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_step_counter_and_the_escalation_rate_from_serve() {
    let dir = escalating_world();
    let (_serve, url, token) = serve_with_agent(TestCommand::new(), dir.path());
    let (_prom, prom) = start_prometheus(dir.path(), url.trim_start_matches("http://"));
    // Scraped before any incident: the counters start from nothing.
    query_until(&prom, "up{job=\"runbox\"}", |v| v == 1.0).await;
    open_and_run(&url, &token, ("page", "INC-1"), &[]).await;
    let attempts = "runbox_attempts_total{runbook=\"page\",step=\"look\",outcome=\"ok\"}";
    query_until(&prom, attempts, |v| v == 1.0).await;
    query_until(
        &prom,
        "runbox_incidents{status=\"escalated\",owner=\"human\"}",
        |v| v == 1.0,
    )
    .await;
    open_and_run(&url, &token, ("page", "INC-2"), &[]).await;
    let steps = "runbox_steps_total{runbook=\"page\",step=\"look\",outcome=\"ok\"}";
    query_until(&prom, steps, |v| v == 2.0).await;
    let escalating = "rate(runbox_timeline_events_total{kind=\"escalated\"}[1m])";
    query_until(&prom, escalating, |v| v > 0.0).await;
    // The exposition as served passes promtool's own checks too.
    let body = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("INC-1"), "never an incident id: {body}");
    promtool(&["check", "metrics"], &body);
}

/// Runs `promtool ARGS` with `stdin`; it must pass.
fn promtool(args: &[&str], stdin: &str) {
    use std::io::Write;
    prometheus_bin();
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}\n{stdin}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_the_store_that_stopped_answering_and_healthz_stays_up() {
    let mut cluster = runbox_tests::etcd::EtcdCluster::start(1);
    let dir = escalating_world();
    let mut child = TestCommand::new()
        .env("RUNBOX_DATA_DIR", dir.path().join("data"))
        .env("RUNBOX_STORE", cluster.url("ready"))
        .args(["run", "--all", "--follow", "--poll", "200ms"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let _runner = Server(child);
    let metrics = line
        .trim()
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("no metrics line: {line}"));
    let base = metrics.trim_end_matches("/metrics").to_string();
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let answer = reqwest::get(url).await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap())
        }
    };
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    cluster.kill(0);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    let store = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "store")
        .unwrap();
    assert_eq!(store["ok"], false, "{body}");
    let member = cluster.endpoints()[0].replace("http://", "");
    assert!(
        store["detail"].as_str().unwrap().contains(&member),
        "names the member it could not reach: {body}"
    );
    assert_eq!(get("/healthz").await.0, 200, "the process is up");
    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200, "counters need no store: {body}");
}

/// docs/operations.md, as committed.
fn operations_page() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"))
        .unwrap()
}

#[test]
fn the_metrics_page_lists_every_metric_of_the_catalog() {
    use runbox_telemetry::{CATALOG, Kind};
    let page = operations_page();
    let rows: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("| `runbox_"))
        .collect();
    for m in CATALOG {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let labels = if m.labels.is_empty() {
            "(none)".to_string()
        } else {
            m.labels.join(", ")
        };
        let row = format!("| `{}` | {kind} | {labels} |", m.name);
        assert!(
            rows.iter().any(|r| r.starts_with(&row)),
            "docs/operations.md has no row `{row}`"
        );
    }
    assert_eq!(rows.len(), CATALOG.len(), "a row for a metric that is gone");
}

#[test]
fn the_documented_alert_rules_pass_promtool() {
    let page = operations_page();
    let rules = page
        .split("```yaml\n")
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.starts_with("groups:"))
        .expect("an alert rules block");
    let dir = tempfile::tempdir().unwrap();
    let file = runbox_tests::write_file(dir.path(), "runbox.rules.yml", rules);
    promtool(&["check", "rules", file.to_str().unwrap()], "");
    // Every metric a rule names is one runbox exports.
    for name in rules.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if name.starts_with("runbox_") {
            assert!(
                runbox_telemetry::CATALOG.iter().any(|m| m.name == name),
                "a rule names `{name}`, which runbox does not export"
            );
        }
    }
}

#[test]
fn doctor_fails_on_a_signers_file_others_can_write_and_warns_of_what_waits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = escalating_world();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    runbox_tests::write_file(dir.path(), "hook.key", "0123456789abcdef0123456789abcdef");
    // A sink nothing listens on, tried once: the escalation's notification parks.
    runbox_tests::write_file(
        &data,
        "notify.toml",
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"../hook.key\"\nevents = [\"escalated\"]\nmax_attempts = 1\n",
    );
    let page = dir.path().join("runbooks/page.toml");
    TestCommand::on(&data)
        .args(["open", "INC-1", "--runbook", page.to_str().unwrap()])
        .ok();
    let (code, text) = code_and_text(
        &TestCommand::new()
            .env("RUNBOX_DATA_DIR", &data)
            .args(["run", "INC-1"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 4, "{text}");
    let signers = runbox_tests::write_file(&data, "allowed_signers", "");
    std::fs::set_permissions(&signers, std::fs::Permissions::from_mode(0o666)).unwrap();
    let token = runbox_tests::write_file(dir.path(), "token", "rbx_x");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let doctor = |args: &[&str]| {
        code_and_text(
            &TestCommand::new()
                .env("RUNBOX_DATA_DIR", &data)
                .arg("doctor")
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let (code, text) = doctor(&["--token-file", token.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    let line = |check: &str| {
        text.lines()
            .find(|l| l[5..].starts_with(&format!("{check}:")))
            .unwrap_or_else(|| panic!("no {check} line: {text}"))
            .to_string()
    };
    assert!(
        line("allowed-signers").starts_with("FAIL")
            && line("allowed-signers").contains("chmod 600"),
        "{text}"
    );
    assert!(line("token-file").starts_with("FAIL"), "{text}");
    assert!(
        line("notifications").starts_with("warn") && line("notifications").contains("1 parked"),
        "{text}"
    );
    assert!(line("data-dir").starts_with("ok"), "{text}");
    assert!(line("store").contains("1 incident(s)"), "{text}");
    // Put right, the failures go; the parked notification still warns.
    std::fs::set_permissions(&signers, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, json) = doctor(&["--json", "--token-file", token.to_str().unwrap()]);
    assert_eq!(code, 0, "{json}");
    let found: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert!(found.iter().all(|f| f["level"] != "fail"), "{json}");
}

#[test]
fn doctor_checks_the_clock_against_each_etcd_member() {
    let cluster = runbox_tests::etcd::EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = code_and_text(
        &TestCommand::new()
            .env("RUNBOX_DATA_DIR", dir.path().join("data"))
            .env("RUNBOX_STORE", cluster.url("doc"))
            .arg("doctor")
            .output()
            .unwrap(),
    );
    assert_eq!(code, 0, "{text}");
    let member = cluster.endpoints()[0].clone();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok   clock: within") && l.contains(&member)),
        "{text}"
    );
}
