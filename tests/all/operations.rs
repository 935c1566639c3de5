//! What an operator's tooling reads: log lines as JSON objects for a log
//! pipeline (`--log-format json`, `RUNBOX_LOG_FORMAT`).

use runbox_tests::{code_and_text, ok_runbook};
use serde_json::Value;

use crate::util::runbox;

#[test]
fn json_logs_are_one_object_a_line_with_the_incident_as_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let rb = ok_runbook(dir.path(), 1);
    let out = runbox()
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
        &runbox()
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
