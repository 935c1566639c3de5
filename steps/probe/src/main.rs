//! `probe`: asks the `http_probe` read tool about a service and classifies the
//! answer, so the runbook can branch on it.
//!
//! Input: `{"service": "api"}`. Grants: tool `http_probe` (read), nothing
//! else, so it runs in read-only (diagnosis) mode.
//! Outcomes: `ok` with `{"class": "healthy"|"degraded"|"down", "status": N}`
//! for any answer it understands; `escalate` when the probe itself cannot run.
//! The probe tool prints the HTTP status on stdout (`000` when unreachable).

use runbox_guest::{Outcome, log, tool};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    service: String,
}

/// Classifies an HTTP status: 2xx healthy, 5xx and 429 degraded, no answer down.
fn classify(status: u16) -> &'static str {
    match status {
        200..=299 => "healthy",
        0 => "down",
        _ => "degraded",
    }
}

fn probe(input: Input) -> Outcome {
    let answer = match tool::read(
        "http_probe",
        &serde_json::json!({ "service": input.service }),
    ) {
        Ok(answer) => answer,
        Err(e) => return Outcome::Escalate(format!("http_probe could not run: {e}")),
    };
    if answer.timed_out {
        return Outcome::ok(
            serde_json::json!({"class": "down", "status": 0, "detail": "probe timed out"}),
        );
    }
    let Ok(status) = answer.stdout.trim().parse::<u16>() else {
        return Outcome::Escalate(format!(
            "http_probe answered rc {} with unreadable output {:?}",
            answer.rc, answer.stdout
        ));
    };
    let class = classify(status);
    log::info(&format!("{} answered {status}: {class}", input.service));
    Outcome::ok(serde_json::json!({ "class": class, "status": status }))
}

runbox_guest::step!(probe);
