//! The HTTP API's contract: the OpenAPI 3.1 document generated from the
//! handlers' own types is the one committed under `docs/schemas/`, `serve`
//! answers it at `/v1/openapi.json`, every route is in it, and what the
//! live server answers fits the schemas it declares.

use serde_json::{Value, json};

use crate::util::{TestCommand, bootstrap_tool, escalating_world, serve_with_agent};

#[test]
fn the_committed_openapi_document_is_the_handlers() {
    let generated = serde_json::to_value(runbox_server::http::openapi()).unwrap();
    runbox_tests::assert_committed_schemas(vec![("openapi.json", generated)], "openapi");
}

/// The schema `doc` declares for the answer `status` of `method path`, as a
/// document of its own that resolves the components' references.
fn answer_schema(doc: &Value, method: &str, path: &str, status: u16) -> jsonschema::Validator {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} declares no JSON answer {status}"
    );
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).unwrap()
}

/// Asserts `answer` fits what the document says `method path` answers.
fn assert_fits(doc: &Value, (method, path, status): (&str, &str, u16), answer: &Value) {
    let validator = answer_schema(doc, method, path, status);
    let errors: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not fit its schema: {errors:?}\n{answer:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_the_document_and_its_answers_fit_it() {
    let dir = escalating_world();
    let (_serve, url, token) = serve_with_agent(TestCommand::new(), dir.path());
    // Without a token: the contract is no secret.
    let served: Value = reqwest::get(format!("{url}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        serde_json::to_value(runbox_server::http::openapi()).unwrap()
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = served["paths"].as_object().unwrap();
    for route in [
        "/v1/runbooks",
        "/v1/incidents",
        "/v1/incidents/{id}",
        "/v1/incidents/{id}/steps:run",
        "/v1/incidents/{id}/steps/{step}",
        "/v1/incidents/{id}/timeline",
        "/v1/incidents/{id}/events",
        "/v1/incidents/{id}/await",
        "/v1/incidents/{id}/escalate",
        "/v1/incidents/{id}/notes",
        "/v1/incidents/{id}/statements",
        "/v1/incidents/{id}/decisions",
        "/v1/brakes",
        "/v1/brakes/statements",
        "/v1/brakes/release",
        "/v1/alerts",
    ] {
        assert!(paths.contains_key(route), "{route} is not in the document");
    }
    // Path parameters are declared by name.
    let params = &served["paths"]["/v1/incidents/{id}/steps/{step}"]["get"]["parameters"];
    let names: Vec<&str> = params
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"id") && names.contains(&"step"), "{params}");
    // What the live server answers fits what the document declares.
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap())
        }
    };
    let (status, opened) = call(
        reqwest::Method::POST,
        "/v1/incidents".into(),
        Some(json!({"runbook": "page", "id": "INC-1"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_fits(&served, ("post", "/v1/incidents", 201), &opened);
    let (status, ran) = call(
        reqwest::Method::POST,
        "/v1/incidents/INC-1/steps:run".into(),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_fits(&served, ("post", "/v1/incidents/{id}/steps:run", 200), &ran);
    for (path, route) in [
        ("/v1/incidents", "/v1/incidents"),
        ("/v1/incidents/INC-1", "/v1/incidents/{id}"),
        (
            "/v1/incidents/INC-1/timeline",
            "/v1/incidents/{id}/timeline",
        ),
        (
            "/v1/incidents/INC-1/steps/look",
            "/v1/incidents/{id}/steps/{step}",
        ),
        ("/v1/runbooks", "/v1/runbooks"),
        ("/v1/brakes", "/v1/brakes"),
    ] {
        let (status, answer) = call(reqwest::Method::GET, path.into(), None).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_fits(&served, ("get", route, 200), &answer);
    }
    // The event stream frames each event as the document says, and its
    // data is a timeline event.
    let mut stream = http
        .get(format!("{url}/v1/incidents/INC-1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = stream.chunk().await.unwrap().expect("an event");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim_start().to_string())
            .unwrap_or_default()
    };
    let event = json!({"event": field("event"), "id": field("id"), "data": field("data")});
    let framing = &served["paths"]["/v1/incidents/{id}/events"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"];
    let mut root = framing.clone();
    root["components"] = served["components"].clone();
    let validator = jsonschema::validator_for(&root).unwrap();
    assert!(validator.is_valid(&event), "{event}");
    let mut data_schema = framing["properties"]["data"]["contentSchema"].clone();
    data_schema["components"] = served["components"].clone();
    let data: Value = serde_json::from_str(&field("data")).unwrap();
    assert!(
        jsonschema::validator_for(&data_schema)
            .unwrap()
            .is_valid(&data),
        "{data}"
    );
    // Errors have the shape the document gives them.
    let (status, missing) = call(reqwest::Method::GET, "/v1/incidents/INC-9".into(), None).await;
    assert_eq!(status, 404);
    assert_fits(&served, ("get", "/v1/incidents/{id}", 404), &missing);
}

/// schemathesis (PyPI, pinned by `scripts/bootstrap.sh --tests`) reads the
/// served document and drives the live server with what it generates from
/// it: examples, boundaries, fuzzing, and stateful sequences along the
/// links it infers (open an incident, then run, read and escalate it). No
/// answer may be a 5xx, break its declared schema or content type. Seeded,
/// ten examples an operation: a short run for CI; a long campaign is the
/// same command with `-n 1000` (docs/agents.md).
///
/// Left out, each for a reason: `GET …/events` is an endless stream (its
/// framing is checked in `serve_answers_the_document_and_its_answers_fit_it`
/// and its schema by the freshness test); `GET …/await` waits up to 50 s a
/// call. `POST /v1/alerts` answers this `run` agent 403 (it takes the
/// `alert` power), which schemathesis reports and the checks allow.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let schemathesis = bootstrap_tool("-st/bin/schemathesis", "--tests");
    let dir = escalating_world();
    let (_serve, url, token) = serve_with_agent(TestCommand::new(), dir.path());
    // Its cache (`.schemathesis/`) goes to the test's own dir.
    let out = tokio::process::Command::new(schemathesis)
        .current_dir(dir.path())
        .args(["run", &format!("{url}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
        ])
        .args(["--max-examples", "10", "--seed", "20261203"])
        .args(["--exclude-path-regex", "/(events|await)$"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Stateful") && !report.contains(" 0 generated"),
        "{report}"
    );
}
