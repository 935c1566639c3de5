//! `restart`: restarts a service through the `restart_service` mutating tool,
//! counts the restart in KV, and checks the service answers afterwards.
//!
//! Input: `{"service": "api"}`. Grants: tools `restart_service` (mutate) and
//! `http_probe` (read); `kv_read`/`kv_write` on `svc/{service}/restarts`.
//! Outcomes: `ok` with `{"restarts": N, "status": S}`; `fail` when the restart
//! tool fails; `escalate` when it cannot run at all.

use runbox_guest::{Outcome, kv, log, tool};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    service: String,
}

fn restart(input: Input) -> Outcome {
    let key = format!("svc/{}/restarts", input.service);
    let before: u64 = match kv::get_string(&key) {
        Ok(v) => v.and_then(|s| s.parse().ok()).unwrap_or(0),
        Err(e) => return Outcome::Escalate(format!("cannot read {key}: {e}")),
    };
    let args = serde_json::json!({ "service": input.service });
    let result = match tool::mutate("restart_service", &args) {
        Ok(r) => r,
        Err(e) => return Outcome::Escalate(format!("restart_service could not run: {e}")),
    };
    if result.rc != 0 {
        return Outcome::Fail(format!(
            "restart_service exited {}: {}",
            result.rc,
            result.stderr.trim()
        ));
    }
    let restarts = before + 1;
    if let Err(e) = kv::put(&key, restarts.to_string().as_bytes()) {
        // The restart happened; losing the count must not hide it.
        return Outcome::Escalate(format!("restarted, but cannot record it in {key}: {e}"));
    }
    let status = tool::read("http_probe", &args)
        .ok()
        .and_then(|r| r.stdout.trim().parse::<u16>().ok())
        .unwrap_or(0);
    log::info(&format!(
        "restarted {} (restart #{restarts}), now answers {status}",
        input.service
    ));
    Outcome::ok(serde_json::json!({ "restarts": restarts, "status": status }))
}

runbox_guest::step!(restart);
