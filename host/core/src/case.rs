//! The other files a user writes: `runbox test` case files and KV seeds.
//!
//! A **KV seed** (`runbox open --kv seed.json`, `runbox exec --kv`, a
//! case's `[kv]`) is an object of key to value: a string is stored as it
//! is, anything else as its JSON text (`3` is stored as `3`, `{"a": 1}` as
//! `{"a":1}`). A **case** runs a whole
//! runbook in memory with scripted tool answers and says what must hold
//! when it stops. `docs/testing.md` is the reference; the JSON Schemas in
//! `docs/schemas/` are generated from these types.
//!
//! ```
//! use runbox_core::case::{Case, KvSeed};
//!
//! let case: Case = toml::from_str(r#"
//!     approve = ["restart"]
//!     [kv]
//!     budget = 2
//!     [tools.http_probe]
//!     answers = [{ stdout = "503" }, { stdout = "200" }]
//!     [expect]
//!     status = "resolved"
//!     kv = { budget = 1 }
//! "#)?;
//! assert_eq!(case.kv.to_bytes()["budget"], b"2");
//! assert_eq!(case.expect.kv.to_bytes()["budget"], b"1");
//! assert_eq!(case.tools["http_probe"].script()[1].stdout, "200");
//!
//! let seed: KvSeed = serde_json::from_str(r#"{"svc/limit": 3, "note": "as is"}"#)?;
//! assert_eq!(seed.to_bytes()["note"], b"as is");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::records::Status;
use crate::tools::ToolAnswer;

/// The most keys one seed holds.
pub const MAX_SEED_KEYS: usize = 1000;

/// Step KV given at open: key to value. A string is stored as it is,
/// anything else as its JSON text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KvSeed(pub BTreeMap<String, serde_json::Value>);

impl KvSeed {
    /// The bytes each key holds: the one rule for seeds and expectations.
    pub fn to_bytes(&self) -> BTreeMap<String, Vec<u8>> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), value_bytes(v)))
            .collect()
    }
}

/// A seed value's bytes: a string as it is, anything else as its JSON text.
pub fn value_bytes(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

impl schemars::JsonSchema for KvSeed {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KvSeed".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let key_bytes = crate::policy::Limits::DEFAULT_KV_KEY_BYTES;
        schemars::json_schema!({
            "description": "Step KV, key to value: a string is stored as it is, anything else as its JSON text (`3` is stored as `3`, `{\"a\": 1}` as `{\"a\":1}`). Keys are 1 to 256 bytes without NUL, outside the shared namespace (`shared:`); values at most 64 KiB.",
            "type": "object",
            "maxProperties": MAX_SEED_KEYS,
            "propertyNames": {
                "minLength": 1,
                "maxLength": key_bytes,
                "not": { "pattern": "^shared:" }
            }
        })
    }
}

/// A `runbox test` case: the runbook runs in memory from `open` until it
/// stops (resolved, failed, escalated, or waiting on a human the case does
/// not stand in for), and what it ended with is checked against `expect`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows; printed beside its file name.
    #[serde(default)]
    pub description: String,
    /// Runbook parameters, as `runbox open --param NAME=VALUE` gives them
    /// (strings; defaults apply to the ones left out).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Step KV seeded at open (the format of `runbox open --kv`).
    #[serde(default)]
    pub kv: KvSeed,
    /// What each tool answers, by tool name. A tool the case does not name
    /// fails every call (-6, "has no scripted answer"); no real tool runs.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolCase>,
    /// Steps a tester approves each time one waits for approval (each
    /// attempt once, with as many signatures as `approvals` asks). A step
    /// waiting for approval that is not listed stops the run:
    /// `status = "awaiting-approval"`.
    #[serde(default)]
    pub approve: Vec<String>,
    /// What must hold when the run stops. Default: nothing is checked.
    #[serde(default)]
    pub expect: Expect,
}

/// A tool's scripted answers: one answer (`rc`, `stdout`, `stderr`) for
/// every call, or `answers`, one per call in order, the last repeating.
/// Calls are counted per tool across the whole run (every step and attempt).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCase {
    /// One answer per call, in turn; the last repeats. When given, `rc`,
    /// `stdout` and `stderr` of the tool itself must be left out.
    #[serde(default)]
    pub answers: Option<Vec<ToolAnswer>>,
    /// The exit code of every call. Default: 0.
    #[serde(default)]
    pub rc: i32,
    /// The stdout of every call. Default: empty.
    #[serde(default)]
    pub stdout: String,
    /// The stderr of every call. Default: empty.
    #[serde(default)]
    pub stderr: String,
}

impl ToolCase {
    /// The answers in call order (the last repeats).
    pub fn script(&self) -> Vec<ToolAnswer> {
        self.answers.clone().unwrap_or_else(|| {
            vec![ToolAnswer {
                rc: self.rc,
                stdout: self.stdout.clone(),
                stderr: self.stderr.clone(),
            }]
        })
    }

    /// Why the tool's answers are ambiguous, if they are: `answers` beside
    /// a tool-level `rc`, `stdout` or `stderr` would silently drop the latter.
    pub fn conflict(&self) -> Option<&'static str> {
        let single = self.rc != 0 || !self.stdout.is_empty() || !self.stderr.is_empty();
        (self.answers.is_some() && single)
            .then_some("give either `answers` or one answer (`rc`, `stdout`, `stderr`), not both")
    }
}

/// What must hold when a case's run stops; each field is checked only when
/// given.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The incident's final status: `resolved`, `failed`, `escalated`, or
    /// `awaiting-approval` (a high-impact step waits for a human the case
    /// does not `approve`).
    #[serde(default)]
    pub status: Option<Status>,
    /// Every committed attempt's step, in order (a step retried twice is
    /// listed three times).
    #[serde(default)]
    pub steps: Option<Vec<String>>,
    /// Step KV after the run, compared as seeds are stored: a string as it
    /// is, anything else as its JSON text. Keys not named are not checked.
    #[serde(default)]
    pub kv: KvSeed,
}
