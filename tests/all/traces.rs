//! Traces: one trace per incident run, sent over OTLP/HTTP to a receiver on
//! loopback that decodes them with the official protocol definitions
//! (`runbox_tests::otlp`); the W3C `traceparent` of an HTTP request or an
//! MCP call continued into runbox; the trace id kept in each step record
//! and shown in the postmortem; the last spans sent before a one-shot
//! command exits.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use runbox_tests::otlp::{OtlpReceiver, Span};
use serde_json::{Value, json};

use crate::util::{TestCommand, open_and_run, serve_with_agent};

/// The trace and span an agent sends in its `traceparent`.
const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";

/// The data dir and runbooks of an incident whose one step stages a KV
/// write, logs, calls the read tool `probe` and finishes ok:
/// `runbooks/traced.toml`.
fn traced_world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    runbox_tests::write_file(
        &runbooks,
        "tools.toml",
        "[tools.probe]\nmode = \"read\"\nargv = [\"echo\", \"ok\"]\n",
    );
    runbox_tests::write_file(
        &runbooks,
        "traced.toml",
        &format!(
            "[runbook]\nname = \"traced\"\ntools = \"tools.toml\"\n[[steps]]\nid = \"look\"\nmodule = \"{}\"\ngrants = {{ tools = [\"probe\"], kv_write = [\"seen\"] }}\n",
            runbox_tests::fixture("engine/traced.wat").display()
        ),
    );
    dir
}

/// `runbox` sending traces to `receiver`, batched every 100 ms.
fn traced_runbox(data: &Path, receiver: &OtlpReceiver) -> TestCommand {
    let mut cmd = TestCommand::new();
    cmd.env("RUNBOX_DATA_DIR", data)
        .env_remove("RUNBOX_MUTATION_TOKEN")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "runbox-under-test")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    cmd
}

/// The spans of one trace, by parent.
struct Trace(Vec<Span>);

impl Trace {
    fn of(spans: &[Span], trace_id: &str) -> Trace {
        Trace(
            spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect(),
        )
    }

    fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|s| s.name.as_str()).collect()
    }

    /// The one span named `name`.
    fn one(&self, name: &str) -> &Span {
        let found: Vec<&Span> = self.0.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` span in {:#?}", self.0);
        found[0]
    }

    /// The spans named `name` whose parent is `parent`.
    fn children(&self, parent: &Span, name: &str) -> Vec<&Span> {
        self.0
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
            .collect()
    }

    /// Whether `span` descends from `ancestor`.
    fn descends(&self, span: &Span, ancestor: &Span) -> bool {
        let mut at = span.parent_span_id.clone();
        while let Some(parent) = self.0.iter().find(|s| s.span_id == at) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            at = parent.parent_span_id.clone();
        }
        false
    }
}

/// Waits until the trace `trace_id` holds every span of an incident run
/// and the span `outer` that carried it. `outer` (the HTTP request, the MCP
/// tool call) ends after the run's spans, so it may leave in a later batch:
/// waiting only for the run's spans raced its export.
async fn run_trace(receiver: &OtlpReceiver, trace_id: &str, outer: &str) -> Trace {
    let wanted = [
        outer,
        "incident",
        "gate",
        "attempt",
        "sandbox",
        "host_call",
        "tool_call",
        "commit",
    ];
    let spans = receiver
        .wait_for(Duration::from_secs(60), |spans| {
            let trace = Trace::of(spans, trace_id);
            let names = trace.names();
            wanted.iter().all(|w| names.contains(w))
        })
        .await;
    let trace = Trace::of(&spans, trace_id);
    assert!(
        wanted.iter().all(|w| trace.names().contains(w)),
        "trace {trace_id} lacks spans of the run: {:?}",
        trace.names()
    );
    trace
}

/// The run's span tree: incident → gate, attempt → sandbox → each host
/// call and the tool call; the attempt's commit under the attempt.
fn assert_run_tree(trace: &Trace) {
    let incident = trace.one("incident");
    assert_eq!(incident.attr("incident"), Some("INC-1"), "{incident:?}");
    assert_eq!(trace.children(incident, "gate").len(), 1, "{:#?}", trace.0);
    let attempt = trace.one("attempt");
    assert_eq!(attempt.parent_span_id, incident.span_id);
    assert_eq!(attempt.attr("step"), Some("look"));
    assert_eq!(attempt.attr("outcome"), Some("ok"));
    let sandbox = trace.one("sandbox");
    assert_eq!(sandbox.parent_span_id, attempt.span_id);
    let calls: BTreeSet<&str> = trace
        .children(sandbox, "host_call")
        .iter()
        .filter_map(|s| s.attr("call"))
        .collect();
    for call in ["kv_put", "log", "finish"] {
        assert!(calls.contains(call), "no `{call}` host call: {calls:?}");
    }
    let tool = trace.one("tool_call");
    assert_eq!(tool.parent_span_id, sandbox.span_id);
    assert_eq!(
        (tool.attr("tool"), tool.attr("mode"), tool.attr("rc")),
        (Some("probe"), Some("read"), Some("0"))
    );
    let commits = trace.children(attempt, "commit");
    assert_eq!(commits.len(), 1, "{:#?}", trace.0);
    assert_eq!(commits[0].attr("result"), Some("ok"));
    assert_eq!(
        incident.resource.get("service.name").map(String::as_str),
        Some("runbox-under-test")
    );
    assert_eq!(
        incident
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("ci")
    );
    assert!(incident.resource.contains_key("service.version"));
    // Spans leave, log lines do not: what the step logged stays home.
    for span in &trace.0 {
        assert!(
            span.events.iter().all(|e| !e.contains("probing")),
            "{span:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_run_over_http_is_one_trace_that_continues_the_agents() {
    let dir = traced_world();
    let receiver = OtlpReceiver::spawn().await;
    let (serve, url, token) = serve_with_agent(
        traced_runbox(&dir.path().join("data"), &receiver),
        dir.path(),
    );
    let agents = format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01");
    let answer = open_and_run(
        &url,
        &token,
        ("traced", "INC-1"),
        &[("traceparent", &agents)],
    )
    .await;
    assert_eq!(answer["record"]["trace_id"], AGENT_TRACE, "{answer}");
    let trace = run_trace(&receiver, AGENT_TRACE, "request").await;
    // The request continues the agent's span; the run is inside it.
    let request = trace.one("request");
    assert_eq!(request.parent_span_id, AGENT_SPAN);
    assert_eq!(request.attr("http.request.method"), Some("POST"));
    assert!(trace.descends(trace.one("incident"), request));
    assert_run_tree(&trace);
    // A traceparent that does not parse (an all-zero trace id) is ignored:
    // the run is a trace of its own.
    let zero = "0".repeat(32);
    let unparsable = format!("00-{zero}-{AGENT_SPAN}-01");
    let answer = open_and_run(
        &url,
        &token,
        ("traced", "INC-2"),
        &[("traceparent", &unparsable)],
    )
    .await;
    let own = answer["record"]["trace_id"].as_str().unwrap_or_default();
    assert!(
        own.len() == 32 && own != zero && own != AGENT_TRACE,
        "{answer}"
    );
    let request = run_trace(&receiver, own, "request")
        .await
        .one("request")
        .clone();
    assert_eq!(request.parent_span_id, "", "a root: {request:?}");
    // The postmortem names the trace of each attempt.
    drop(serve);
    let data = dir.path().join("data");
    let export: Value = serde_json::from_str(
        &TestCommand::on(&data)
            .args(["export", "INC-1", "--format", "json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(export["steps"][0]["trace_id"], AGENT_TRACE, "{export}");
    let markdown = TestCommand::on(&data)
        .args(["export", "INC-1", "--format", "markdown"])
        .ok();
    assert!(
        markdown.contains(&format!("## Traces\n\n- look#1: trace `{AGENT_TRACE}`")),
        "{markdown}"
    );
    let html = TestCommand::on(&data)
        .args(["export", "INC-1", "--format", "html"])
        .ok();
    assert!(
        html.contains(AGENT_TRACE),
        "the HTML postmortem names the trace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_tool_call_continues_the_trace_context_of_its_meta() {
    use rmcp::ServiceExt;
    use rmcp::model::{CallToolRequestParams, RequestMetaObject};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let dir = traced_world();
    let receiver = OtlpReceiver::spawn().await;
    let (_serve, url, token) = serve_with_agent(
        traced_runbox(&dir.path().join("data"), &receiver),
        dir.path(),
    );
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token),
    );
    let client = ().serve(transport).await.unwrap();
    let call = |tool: &str, args: Value, traceparent: Option<String>| {
        let mut params = CallToolRequestParams::new(tool.to_string())
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        if let Some(traceparent) = traceparent {
            let mut meta = RequestMetaObject::new();
            meta.set_traceparent(traceparent);
            params.meta = Some(meta);
        }
        client.call_tool(params)
    };
    let opened = call(
        "open_incident",
        json!({"runbook": "traced", "id": "INC-1"}),
        None,
    )
    .await
    .unwrap();
    assert_ne!(opened.is_error, Some(true), "{opened:?}");
    let ran = call(
        "run_step",
        json!({"id": "INC-1"}),
        Some(format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01")),
    )
    .await
    .unwrap();
    let answer = ran.structured_content.clone().unwrap_or_default();
    assert_eq!(answer["record"]["trace_id"], AGENT_TRACE, "{answer}");
    let trace = run_trace(&receiver, AGENT_TRACE, "mcp.tool").await;
    let tool = trace.one("mcp.tool");
    assert_eq!(tool.parent_span_id, AGENT_SPAN);
    assert_eq!(tool.attr("tool"), Some("run_step"));
    assert!(trace.descends(trace.one("incident"), tool));
    assert_run_tree(&trace);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_run_sends_its_trace_before_it_exits_and_traces_stay_off_unasked() {
    let dir = traced_world();
    let data = dir.path().join("data");
    let runbook = dir.path().join("runbooks/traced.toml");
    let receiver = OtlpReceiver::spawn().await;
    for id in ["INC-1", "INC-2", "INC-3"] {
        TestCommand::on(&data)
            .args(["open", id, "--runbook", runbook.to_str().unwrap()])
            .ok();
    }
    // Batched once a minute: only the flush at exit can have sent them.
    let mut run = traced_runbox(&data, &receiver);
    run.env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .env("RUNBOX_LOG", "info")
        .env("RUNBOX_LOG_FORMAT", "json")
        .args(["run", "INC-1"]);
    let out = run.tokio().output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = receiver.spans();
    let incident = spans
        .iter()
        .find(|s| s.name == "incident")
        .unwrap_or_else(|| panic!("the run's spans were sent before exit: {spans:#?}"));
    assert_eq!(
        incident.parent_span_id, "",
        "a run of its own is a trace's root"
    );
    let trace = Trace::of(&spans, &incident.trace_id);
    assert_run_tree(&trace);
    let export: Value = serde_json::from_str(
        &TestCommand::on(&data)
            .args(["export", "INC-1", "--format", "json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(export["steps"][0]["trace_id"], incident.trace_id.as_str());
    // A log line of the run names its runner and its trace.
    let tool_line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "tool call")
        .unwrap_or_else(|| {
            panic!(
                "a `tool call` line: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let run_span = tool_line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "incident"))
        .unwrap_or_else(|| panic!("the line is in the incident's span: {tool_line}"));
    assert_eq!(
        run_span["trace_id"],
        incident.trace_id.as_str(),
        "{tool_line}"
    );
    assert_eq!(run_span["runner"], "local", "{tool_line}");
    assert_eq!(tool_line["span"]["name"], "tool_call", "{tool_line}");
    // A protocol runbox does not speak turns traces off, saying why; the
    // run goes on.
    let mut grpc = traced_runbox(&data, &receiver);
    grpc.env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .args(["list"]);
    let out = grpc.tokio().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("traces off") && stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
        "{stderr}"
    );
    // So does a timeout that is not milliseconds, and an exporter other than OTLP.
    for (var, value, said) in [
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "soon",
            "not a number of milliseconds",
        ),
        (
            "OTEL_TRACES_EXPORTER",
            "zipkin",
            "runbox exports traces with `otlp`",
        ),
    ] {
        let mut bad = traced_runbox(&data, &receiver);
        bad.env(var, value).args(["list"]);
        let out = bad.tokio().output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("traces off")
                && stderr.contains(&format!("{var}={value}"))
                && stderr.contains(said),
            "{stderr}"
        );
    }
    // Without the variables nothing is sent and no record names a trace.
    let before = receiver.requests();
    TestCommand::on(&data).args(["run", "INC-2"]).ok();
    let export: Value = serde_json::from_str(
        &TestCommand::on(&data)
            .args(["export", "INC-2", "--format", "json"])
            .ok(),
    )
    .unwrap();
    assert!(export["steps"][0]["trace_id"].is_null(), "{export}");
    assert_eq!(receiver.requests(), before);
    // A collector that is down costs the spans, never the run: it runs, and
    // stderr says the export failed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mut down = traced_runbox(&data, &receiver);
    down.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}"))
        .args(["run", "INC-3"]);
    let out = down.tokio().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ExportError"), "{stderr}");
}
