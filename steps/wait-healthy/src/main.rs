//! `wait-healthy`: probes a service and asks to be retried until it answers
//! 2xx. The runbook's `max_retries` and backoff bound the wait; when they run
//! out the engine escalates.
//!
//! Input: `{"service": "api"}`. Grants: tool `http_probe` (read).
//! Outcomes: `ok` with `{"status": S}` when healthy; `retry` otherwise.

use runbox_guest::{Outcome, tool};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    service: String,
}

fn wait_healthy(input: Input) -> Outcome {
    match tool::read(
        "http_probe",
        &serde_json::json!({ "service": input.service }),
    ) {
        Ok(r) => match r.stdout.trim().parse::<u16>() {
            Ok(status @ 200..=299) => Outcome::ok(serde_json::json!({ "status": status })),
            Ok(status) => Outcome::Retry(format!("{} answers {status}", input.service)),
            Err(_) => Outcome::Retry(format!("{} does not answer", input.service)),
        },
        Err(e) => Outcome::Escalate(format!("http_probe could not run: {e}")),
    }
}

runbox_guest::step!(wait_healthy);
