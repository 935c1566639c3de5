//! Postmortems: `runbox export` in every format and `runbox report` across
//! incidents. Exports of real incidents (and a forged one of 10,000 events)
//! validate against the committed JSON Schemas, hostile strings come out
//! escaped and intact in every format, the HTML page is opened in a real
//! headless Chromium, and `report` over incidents with known outcomes gives
//! the known figures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbox_core::attempt::ErrorCategory;
use runbox_core::event::EventKind;
use runbox_core::records::{RecordOutcome, Status};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::forge::{Attempt, Forge};
use runbox_tests::{code_and_text, fixture, repo_root, with_human_key, write_file};
use serde_json::Value;

fn runbox(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = runbox_out(dir, args);
    let (code, _) = code_and_text(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if code != 0 {
        return (code, text + &String::from_utf8_lossy(&out.stderr));
    }
    (code, text)
}

fn runbox_out(dir: &Path, args: &[&str]) -> std::process::Output {
    let args = with_human_key(
        crate::util::runbox_path(),
        &dir.join("data"),
        &dir.join("keys"),
        args,
    );
    crate::util::TestCommand::in_dir(dir)
        .args(&args)
        .output()
        .unwrap()
}

pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, text) = runbox(dir, args);
    assert_eq!(code, 0, "runbox {args:?}: {text}");
    text
}

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join("docs/schemas").join(name)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what} breaks its schema: {errors:#?}");
}

/// A real incident: a step whose output and logs are hostile, then a step
/// that keeps asking to be retried and escalates to on-call, which alice
/// takes over and resolves.
pub(crate) fn hostile_incident(dir: &Path) {
    let rb = write_file(
        dir,
        "runbook.toml",
        &format!(
            r#"[runbook]
name = "hostile"

[[steps]]
id = "hostile"
module = "{}"
limits = {{ output_bytes = 4194304 }}

[[steps]]
id = "flaky"
module = "{}"
max_retries = 1
backoff = {{ initial_ms = 20, factor = 1.0, max_ms = 20 }}
"#,
            fixture("postmortem/hostile.wat").display(),
            fixture("engine/retry.wat").display()
        ),
    );
    ok(dir, &["open", "INC-1", "--runbook", rb.to_str().unwrap()]);
    let (code, text) = runbox(dir, &["run", "INC-1"]);
    assert_eq!(code, 4, "the flaky step escalates: {text}");
    ok(dir, &["takeover", "INC-1", "--as", "alice"]);
    ok(
        dir,
        &[
            "resolve",
            "INC-1",
            "--step",
            "flaky",
            "--outcome",
            "ok",
            "--as",
            "alice",
        ],
    );
}

const HTML_PAYLOAD: &str = "<script>document.title='pwned'</script><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";
const CSV_PAYLOAD: &str = "=cmd|' /C calc'!A0";
const QUOTE_PAYLOAD: &str = "a \"quoted\", comma, and\nnewline";
const BAD_UTF8_LOG: &str = "bad \u{fffd}\u{fffd} bytes";

#[test]
fn a_real_incident_exports_intact_and_escaped_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hostile_incident(d);

    // JSON: valid against the schema, the figures add up, strings intact.
    let export: Value =
        serde_json::from_str(&ok(d, &["export", "INC-1", "--format", "json"])).expect("JSON");
    assert_valid(&schema("postmortem.schema.json"), &export, "the export");
    assert_eq!(export["schema"], "runbox.postmortem/v1");
    let output = &export["steps"][0]["output"];
    assert_eq!(output["html"], HTML_PAYLOAD);
    assert_eq!(output["csv"], CSV_PAYLOAD);
    assert_eq!(output["quote"], QUOTE_PAYLOAD);
    assert_eq!(output["big"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(export["steps"][0]["logs"][0]["message"], BAD_UTF8_LOG);
    let f = &export["figures"];
    assert_eq!(
        f["attempts"], 4,
        "hostile, flaky twice, alice's resolve: {f}"
    );
    // Both of flaky's attempts asked for a retry; the second escalated.
    assert_eq!(
        (f["retries"].as_u64(), f["escalations"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (f["overrides"].as_u64(), f["takeovers"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(f["time_to_resolve_ms"].is_u64(), "{f}");
    let owners: Vec<&str> = export["owner_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["to"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["human:on-call", "human:alice"]);
    assert_eq!(export["incident"]["owner"], *owners.last().unwrap());
    assert_eq!(export["holds"][0]["kind"], "backoff");
    assert!(
        export["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["verified"] == true)
    );

    // JSONL: each line valid; one per event and one per record.
    let jsonl = ok(d, &["export", "INC-1", "--format", "jsonl"]);
    let row_schema = schema("row.schema.json");
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.iter()
        .for_each(|r| assert_valid(&row_schema, r, "a JSONL row"));
    let count = |t: &str| rows.iter().filter(|r| r["type"] == t).count();
    assert_eq!(count("event"), export["timeline"].as_array().unwrap().len());
    assert_eq!(count("step"), 4);
    let step = rows.iter().find(|r| r["type"] == "step").unwrap();
    assert_eq!(step["output"], *output, "JSONL keeps the output whole");

    // CSV: RFC 4180 parses back; formulas neutralised, the rest intact.
    let csv_text = ok(d, &["export", "INC-1", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let message = header.iter().position(|h| h == "message").unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows.len());
    let hostile = records.iter().find(|r| &r[1] == "step").unwrap();
    let said: Value = serde_json::from_str(&hostile[message]).expect("the output, whole");
    assert_eq!(said, *output);
    let flaky = records
        .iter()
        .find(|r| &r[1] == "step" && &r[6] == "flaky")
        .unwrap();
    assert_eq!(&flaky[message], "not yet");
    assert!(
        records
            .iter()
            .all(|r| r.iter().all(|c| !c.starts_with(['=', '+', '@']))),
        "no cell starts a formula"
    );

    // Markdown and HTML: the markup is text.
    let md = ok(d, &["export", "INC-1", "--format", "markdown"]);
    assert!(
        md.contains("## Timeline") && md.contains("flaky"),
        "{}",
        &md[..400]
    );
    let html = ok(d, &["export", "INC-1", "--format", "html"]);
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "markup escaped"
    );
    assert!(
        html.contains("&lt;script&gt;document.title="),
        "and shown as text"
    );
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt; &amp; &quot;q&quot;"));
    assert!(html.contains(BAD_UTF8_LOG));
}

#[test]
fn chromium_renders_the_chart_with_one_bar_per_attempt_and_runs_no_script() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hostile_incident(d);
    let page = d.join("INC-1.html");
    std::fs::write(&page, ok(d, &["export", "INC-1", "--format", "html"])).unwrap();

    let dom = chromium(d, &page, "--dump-dom");
    assert_eq!(
        dom.matches("class=\"attempt ").count(),
        4,
        "one bar per attempt"
    );
    for lane in ["agent", "human:on-call", "human:alice", "system"] {
        assert!(
            dom.contains(&format!("data-lane=\"{lane}\"")),
            "lane {lane}"
        );
    }
    assert!(
        dom.contains("class=\"handoff\""),
        "the takeover is a lane change"
    );
    assert!(
        dom.contains("class=\"hold backoff\""),
        "the backoff is shaded"
    );
    assert!(!dom.to_lowercase().contains("<script"), "no script element");
    let body = &dom[dom.find("<body").unwrap()..];
    let body_tag = &body[..body.find('>').unwrap()];
    assert!(
        !body_tag.contains("data-pwned"),
        "no handler ran: {body_tag}"
    );
    assert!(dom.contains("<title>Incident INC-1 — postmortem</title>"));
    assert!(
        dom.contains("&lt;script&gt;document.title"),
        "the payload is text"
    );

    let shot = d.join("shot.png");
    chromium(d, &page, &format!("--screenshot={}", shot.display()));
    assert_not_blank(&shot);
}

/// Runs headless Chromium on `page` with `arg`, returning its stdout.
fn chromium(dir: &Path, page: &Path, arg: &str) -> String {
    chromium_with(dir, page, &["--window-size=1280,1400", arg])
}

/// Runs headless Chromium on `page` with `args` (a window size, what to
/// do), returning its stdout.
pub(crate) fn chromium_with(dir: &Path, page: &Path, args: &[&str]) -> String {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is installed (scripts/bootstrap.sh --tests installs it)");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", dir.join("chromium").display()),
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read while it runs: a DOM bigger than a pipe's buffer would block it.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium hung on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap().expect("chromium's output")
}

pub(crate) fn assert_not_blank(png_path: &PathBuf) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("a screenshot"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(
        colours.len() > 20,
        "the screenshot shows a page, not a blank: {} colours",
        colours.len()
    );
}

/// Day 0 of the forged incidents, and a minute.
const T0: u64 = 1_790_000_000_000;
const MIN: u64 = 60_000;

/// A forged incident of 10,000 events: attempts, approvals, takeovers,
/// handbacks, retries, in-doubt attempts.
fn forge_long(store: &RocksStore) -> u32 {
    let mut f = Forge::open(store, "LONG-1", "api", T0);
    let mut t = T0;
    let mut attempts = 0;
    let mut n = 1;
    while attempts < 2_000 {
        t += 1_000;
        let outcome = match n % 5 {
            0 => RecordOutcome::Retry,
            3 => RecordOutcome::InDoubt,
            _ => RecordOutcome::Ok,
        };
        if n % 7 == 0 {
            f.approval("restart", n, t, t + 500, "alice");
            t += 500;
        }
        if n % 11 == 0 {
            f.event(
                t,
                "human:bob",
                EventKind::Takeover,
                None,
                "human:bob took over",
            );
            f.event(
                t + 10,
                "human:bob",
                EventKind::Handback,
                None,
                "handed back to agent:runbox",
            );
        }
        f.attempt(Attempt {
            step: "restart",
            attempt: n,
            outcome,
            span: (t, t + 200),
            tool: Some(("systemctl", (n % 3) as i32 - 1)),
            error: None,
            human: None,
        });
        attempts += 1;
        n += 1;
    }
    // Pad with blocked events to exactly 10,000 (the resolution is the last).
    let events_so_far = 10_000 - f.events() - 1;
    for i in 0..events_so_far {
        f.event(
            t + i,
            "agent:runbox",
            EventKind::Blocked,
            Some(("restart", n)),
            "<held> by a \"rule\", =1+1",
        );
    }
    f.end(Status::Resolved, t + 60_000);
    f.finish();
    attempts
}

#[test]
fn a_forged_incident_of_ten_thousand_events_stays_valid_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attempts = {
        let store = RocksStore::open(&d.join("data")).unwrap();
        forge_long(&store)
    };
    let export: Value =
        serde_json::from_str(&ok(d, &["export", "LONG-1", "--format", "json"])).unwrap();
    assert_valid(
        &schema("postmortem.schema.json"),
        &export,
        "the long export",
    );
    assert_eq!(export["timeline"].as_array().unwrap().len(), 10_000);
    assert_eq!(export["figures"]["attempts"], attempts);
    assert_eq!(export["figures"]["approvals"], 2_000 / 7);
    assert_eq!(export["figures"]["takeovers"], 2_000 / 11);
    assert_eq!(export["figures"]["approval_wait_ms"], (2_000 / 7) * 500);

    let jsonl = ok(d, &["export", "LONG-1", "--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 10_000 + attempts as usize);

    let html = ok(d, &["export", "LONG-1", "--format", "html"]);
    let page = d.join("LONG-1.html");
    std::fs::write(&page, &html).unwrap();
    eprintln!(
        "HTML of 10,000 events and {attempts} attempts: {} bytes",
        html.len()
    );
    assert!(
        html.len() < 12 << 20,
        "the page stays reasonable: {} bytes",
        html.len()
    );
    let dom = chromium(d, &page, "--dump-dom");
    assert_eq!(dom.matches("class=\"attempt ").count(), attempts as usize);
    assert!(dom.contains("class=\"overview\""), "a zoomed-out overview");
    assert!(
        dom.matches("<tr>").count() > 10_000 + attempts as usize,
        "a row for every event and step"
    );
}

/// Three incidents of `api` and one of `db` with known times and outcomes.
fn forge_known(store: &RocksStore) {
    // api-1: diagnose ok (1 min), restart approved after 4 min, ok; resolved at 10 min.
    let mut f = Forge::open(store, "api-1", "api", T0);
    f.attempt(a(
        "diagnose",
        1,
        RecordOutcome::Ok,
        (T0, T0 + MIN),
        Some(("probe", 0)),
    ));
    f.approval("restart", 1, T0 + MIN, T0 + 5 * MIN, "alice");
    f.attempt(a(
        "restart",
        1,
        RecordOutcome::Ok,
        (T0 + 5 * MIN, T0 + 6 * MIN),
        Some(("systemctl", 0)),
    ));
    f.end(Status::Resolved, T0 + 10 * MIN);
    f.finish();
    // api-2: diagnose retries once (timeout), then ok; restart approved after
    // 2 min; resolved at 20 min.
    let t = T0 + 60 * MIN;
    let mut f = Forge::open(store, "api-2", "api", t);
    f.attempt(Attempt {
        error: Some(ErrorCategory::Timeout),
        ..a(
            "diagnose",
            1,
            RecordOutcome::Retry,
            (t, t + 2 * MIN),
            Some(("probe", 1)),
        )
    });
    f.attempt(a(
        "diagnose",
        2,
        RecordOutcome::Ok,
        (t + 2 * MIN, t + 3 * MIN),
        Some(("probe", 0)),
    ));
    f.approval("restart", 1, t + 3 * MIN, t + 5 * MIN, "bob");
    f.attempt(a(
        "restart",
        1,
        RecordOutcome::Ok,
        (t + 5 * MIN, t + 9 * MIN),
        Some(("systemctl", 0)),
    ));
    f.end(Status::Resolved, t + 20 * MIN);
    f.finish();
    // api-3: restart in doubt, escalated; alice takes over at 30 min and
    // resolves the step herself at 40 min.
    let t = T0 + 120 * MIN;
    let mut f = Forge::open(store, "api-3", "api", t);
    f.attempt(a(
        "diagnose",
        1,
        RecordOutcome::Ok,
        (t, t + MIN),
        Some(("probe", 0)),
    ));
    f.attempt(a(
        "restart",
        1,
        RecordOutcome::InDoubt,
        (t + MIN, t + 2 * MIN),
        None,
    ));
    f.end(Status::Escalated, t + 2 * MIN);
    f.event(
        t + 30 * MIN,
        "human:alice",
        EventKind::Takeover,
        None,
        "human:alice took over",
    );
    f.attempt(Attempt {
        human: Some("alice"),
        ..a(
            "restart",
            1,
            RecordOutcome::Ok,
            (t + 40 * MIN, t + 40 * MIN),
            None,
        )
    });
    f.finish();
    // db-1, opened long before the others.
    let mut f = Forge::open(store, "db-1", "db", T0 - 400 * 24 * 60 * MIN);
    f.attempt(a(
        "vacuum",
        1,
        RecordOutcome::Fail,
        (T0 - 1, T0),
        Some(("psql", 2)),
    ));
    f.end(Status::Failed, T0);
    f.finish();
}

fn a(
    step: &'static str,
    attempt: u32,
    outcome: RecordOutcome,
    span: (u64, u64),
    tool: Option<(&'static str, i32)>,
) -> Attempt<'static> {
    Attempt {
        step,
        attempt,
        outcome,
        span,
        tool,
        error: None,
        human: None,
    }
}

#[test]
fn report_over_incidents_with_known_outcomes_gives_the_known_figures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    forge_known(&RocksStore::open(&d.join("data")).unwrap());
    let report: Value = serde_json::from_str(&ok(d, &["report", "--format", "json"])).unwrap();
    assert_valid(&schema("patterns.schema.json"), &report, "the report");
    assert_eq!(report["incidents"], 4);
    let api = &report["runbooks"][0];
    assert_eq!(api["runbook"], "api");
    assert_eq!(api["incidents"], 3);
    assert_eq!(api["statuses"]["resolved"], 2);
    assert_eq!(api["statuses"]["escalated"], 1);
    // Time to resolve: 10 and 20 minutes.
    assert_eq!(api["time_to_resolve_ms"]["p50"], 10 * MIN);
    assert_eq!(api["time_to_resolve_ms"]["p95"], 20 * MIN);

    let diagnose = &api["steps"][0];
    assert_eq!(diagnose["step"], "diagnose");
    assert_eq!(diagnose["attempts"], 4);
    assert_eq!(diagnose["outcomes"]["ok"], 3);
    assert_eq!(diagnose["outcomes"]["retry"], 1);
    assert_eq!(diagnose["retries"], 1);
    assert_eq!(diagnose["error_categories"]["timeout"], 1);
    assert_eq!(diagnose["tool_rcs"]["probe"]["0"], 3);
    assert_eq!(diagnose["tool_rcs"]["probe"]["1"], 1);
    // Durations 1, 2, 1, 1 minutes.
    assert_eq!(diagnose["duration_ms"]["p50"], MIN);
    assert_eq!(diagnose["duration_ms"]["p95"], 2 * MIN);

    let restart = &api["steps"][1];
    assert_eq!(restart["step"], "restart");
    // api-3's restart#1 was in doubt, then alice settled it: one record.
    assert_eq!(restart["attempts"], 3);
    assert_eq!(restart["overrides"], 1);
    assert!((restart["override_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    // Approval waits of 4 and 2 minutes.
    assert_eq!(restart["approval_wait_ms"]["p50"], 2 * MIN);
    assert_eq!(restart["approval_wait_ms"]["p95"], 4 * MIN);
    assert_eq!(restart["tool_rcs"]["systemctl"]["0"], 2);

    let db = &report["runbooks"][1];
    assert_eq!(db["steps"][0]["outcomes"]["fail"], 1);
    assert_eq!(db["steps"][0]["tool_rcs"]["psql"]["2"], 1);

    // Per incident: api-3 was the agent's for 2 minutes, on-call's until
    // alice took it at 30, and alice's until she settled it at 40.
    let api3 = report["per_incident"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "api-3")
        .unwrap();
    assert_eq!(api3["agent_ms"], 2 * MIN);
    assert_eq!(api3["human_ms"], 38 * MIN);
    assert_eq!(api3["time_to_resolve_ms"], Value::Null);
    let api1 = &report["per_incident"][1];
    assert_eq!(api1["id"], "api-1");
    assert_eq!(api1["time_to_resolve_ms"], 10 * MIN);
    assert_eq!(api1["approval_wait_ms"], 4 * MIN);

    // --since leaves db-1 (opened 400 days before) out.
    let since = runbox_core::time::format_ms(T0 - MIN);
    let recent: Value =
        serde_json::from_str(&ok(d, &["report", "--since", &since, "--format", "json"])).unwrap();
    assert_eq!(recent["incidents"], 3);
    let table = ok(d, &["report"]);
    assert!(
        table.contains("runbook api: 3 incidents") && table.contains("diagnose"),
        "{table}"
    );
    let html = ok(d, &["report", "--format", "html"]);
    assert!(
        html.contains("<svg") && html.contains("Runbook api"),
        "charts"
    );

    // export --all streams every incident; --since filters by opening.
    let all = ok(d, &["export", "--all", "--format", "jsonl"]);
    let incidents: std::collections::BTreeSet<String> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["incident"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(incidents.len(), 4);
    let recent = ok(
        d,
        &["export", "--all", "--since", &since, "--format", "json"],
    );
    let recent: Value = serde_json::from_str(&recent).unwrap();
    assert_eq!(recent.as_array().unwrap().len(), 3);
}

#[test]
fn bad_report_and_export_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    forge_known(&RocksStore::open(&d.join("data")).unwrap());
    for (args, needle) in [
        (
            &["report", "--since", "last tuesday"][..],
            "--since: `last tuesday`",
        ),
        (
            &["export", "--all", "--since", "soon"][..],
            "--since: `soon`",
        ),
        (&["export", "NOPE-1", "--format", "html"][..], "NOPE-1"),
        (
            &["export", "--all", "--format", "html"][..],
            "runbox report",
        ),
        (&["export", "api-1", "--since", "1d"][..], "--all"),
    ] {
        let (code, text) = runbox(d, args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(
            text.contains(needle),
            "{args:?} should name {needle:?}: {text}"
        );
    }
}

#[test]
fn committed_schemas_are_current() {
    runbox_tests::assert_committed_schemas(runbox_report::schemas(), "postmortem");
}
