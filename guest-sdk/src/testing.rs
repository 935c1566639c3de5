//! Unit-test steps natively: an in-memory stand-in for the runbox host.
//!
//! On non-wasm targets every SDK call goes to a thread-local [`MockHost`].
//! Set it up, run the step function with [`run_step`], and inspect what it
//! did. Grants are not enforced here: that is the real sandbox's job, and
//! `runbox exec` is the bench for it.
//!
//! ```
//! use runbox_guest::{kv, testing, Outcome};
//!
//! fn bump(_: serde_json::Value) -> Outcome {
//!     let n = kv::get_string("count").unwrap().map_or(0, |s| s.parse::<u32>().unwrap());
//!     kv::put("count", (n + 1).to_string().as_bytes()).unwrap();
//!     Outcome::ok(n + 1)
//! }
//!
//! let mut host = testing::MockHost::new(serde_json::json!({}));
//! host.kv.insert("count".into(), b"41".to_vec());
//! let (outcome, host) = testing::run_step(host, bump);
//! assert_eq!(outcome, Outcome::Ok(serde_json::json!(42)));
//! assert_eq!(host.kv["count"], b"42");
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::Outcome;
use crate::tool::ToolResult;

/// A tool stand-in: gets the JSON args, returns the result.
pub type ToolFn = Box<dyn FnMut(&serde_json::Value) -> ToolResult>;

/// The in-memory host state a native test runs against.
pub struct MockHost {
    /// The step input.
    pub input: serde_json::Value,
    /// The KV store (writes land here directly).
    pub kv: BTreeMap<String, Vec<u8>>,
    /// Tools by name; calling a missing one returns `Denied`.
    pub tools: BTreeMap<String, ToolFn>,
    /// Every log line as (level, message).
    pub logs: Vec<(i32, String)>,
    /// Tool calls made, in order, as (name, mutate, args).
    pub calls: Vec<(String, bool, serde_json::Value)>,
    /// The most recent tool call's answer, as `last_tool_answer` reads it.
    last_answer: Option<Vec<u8>>,
}

impl MockHost {
    /// A host with this input and nothing else.
    pub fn new(input: serde_json::Value) -> Self {
        MockHost {
            input,
            kv: BTreeMap::new(),
            tools: BTreeMap::new(),
            logs: Vec::new(),
            calls: Vec::new(),
            last_answer: None,
        }
    }

    /// Adds a tool.
    pub fn tool(
        mut self,
        name: &str,
        f: impl FnMut(&serde_json::Value) -> ToolResult + 'static,
    ) -> Self {
        self.tools.insert(name.to_string(), Box::new(f));
        self
    }
}

thread_local! {
    static HOST: RefCell<Option<MockHost>> = const { RefCell::new(None) };
}

struct Finished(Outcome);

/// Runs a step function against `host`, returning its outcome and the host
/// afterwards. Input that does not decode yields `Fail`, as on wasm.
pub fn run_step<I, F>(host: MockHost, f: F) -> (Outcome, MockHost)
where
    I: serde::de::DeserializeOwned,
    F: FnOnce(I) -> Outcome + std::panic::UnwindSafe,
{
    HOST.with(|h| *h.borrow_mut() = Some(host));
    let result = std::panic::catch_unwind(|| crate::run(f));
    let host = HOST
        .with(|h| h.borrow_mut().take())
        .expect("the mock host is installed for the whole run");
    match result {
        Ok(never) => match never {},
        Err(payload) => match payload.downcast::<Finished>() {
            Ok(finished) => (finished.0, host),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

pub(crate) mod host {
    use super::*;

    fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
        HOST.with(|h| {
            let mut h = h.borrow_mut();
            let host = h
                .as_mut()
                .expect("runbox-guest: no host; natively, run steps with testing::run_step");
            f(host)
        })
    }

    const INVALID: i64 = runbox_abi::Code::Invalid.raw() as i64;
    const NOT_FOUND: i64 = runbox_abi::Code::NotFound.raw() as i64;
    const DENIED: i64 = runbox_abi::Code::Denied.raw() as i64;

    fn copy_out(value: &[u8], buf: &mut [u8]) -> i64 {
        let n = value.len().min(buf.len());
        buf[..n].copy_from_slice(&value[..n]);
        value.len() as i64
    }

    pub(crate) fn input_bytes() -> Vec<u8> {
        with(|h| serde_json::to_vec(&h.input).unwrap_or_default())
    }

    pub(crate) fn log(level: i32, msg: &[u8]) {
        with(|h| {
            h.logs
                .push((level, String::from_utf8_lossy(msg).into_owned()));
        });
    }

    pub(crate) fn finish(code: i32, bytes: &[u8]) -> ! {
        let text = || String::from_utf8_lossy(bytes).into_owned();
        use runbox_abi::Outcome as Code;
        let outcome = match Code::from_code(code) {
            Some(Code::Ok) => {
                Outcome::Ok(serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null))
            }
            Some(Code::Retry) => Outcome::Retry(text()),
            Some(Code::Escalate) => Outcome::Escalate(text()),
            Some(Code::Fail) | None => Outcome::Fail(text()),
        };
        std::panic::resume_unwind(Box::new(Finished(outcome)))
    }

    pub(crate) fn kv_get(key: &[u8], buf: &mut [u8]) -> i64 {
        let Ok(key) = std::str::from_utf8(key) else {
            return INVALID;
        };
        with(|h| match h.kv.get(key) {
            Some(v) => copy_out(v, buf),
            None => NOT_FOUND,
        })
    }

    pub(crate) fn kv_put(key: &[u8], value: &[u8]) -> i64 {
        let Ok(key) = std::str::from_utf8(key) else {
            return INVALID;
        };
        with(|h| h.kv.insert(key.to_string(), value.to_vec()));
        0
    }

    pub(crate) fn kv_delete(key: &[u8]) -> i64 {
        let Ok(key) = std::str::from_utf8(key) else {
            return INVALID;
        };
        with(|h| h.kv.remove(key));
        0
    }

    pub(crate) fn tool_read(name: &[u8], args: &[u8], buf: &mut [u8]) -> i64 {
        tool_call(false, name, args, buf)
    }

    pub(crate) fn tool_mutate(name: &[u8], args: &[u8], buf: &mut [u8]) -> i64 {
        tool_call(true, name, args, buf)
    }

    fn tool_call(mutate: bool, name: &[u8], args: &[u8], buf: &mut [u8]) -> i64 {
        let (Ok(name), Ok(args)) = (std::str::from_utf8(name), serde_json::from_slice(args)) else {
            return INVALID;
        };
        with(|h| {
            h.calls.push((name.to_string(), mutate, args));
            let args = &h.calls.last().expect("just pushed").2.clone();
            h.last_answer = None;
            match h.tools.get_mut(name) {
                Some(tool) => {
                    let result = serde_json::to_vec(&tool(args)).unwrap_or_default();
                    let n = copy_out(&result, buf);
                    h.last_answer = Some(result);
                    n
                }
                None => DENIED,
            }
        })
    }

    pub(crate) fn last_tool_answer(buf: &mut [u8]) -> i64 {
        with(|h| match &h.last_answer {
            Some(answer) => copy_out(answer, buf),
            None => NOT_FOUND,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kv, tool};

    fn restart(input: serde_json::Value) -> Outcome {
        let service = input["service"].as_str().unwrap_or_default().to_string();
        match tool::mutate("restart", &serde_json::json!({ "service": service })) {
            Ok(r) if r.rc == 0 => {
                kv::put(&format!("svc/{service}/restarted"), b"1").unwrap();
                Outcome::ok(serde_json::json!({"restarted": service}))
            }
            Ok(r) => Outcome::Escalate(format!("restart failed: rc {}", r.rc)),
            Err(e) => Outcome::Escalate(e.to_string()),
        }
    }

    #[test]
    fn mock_host_runs_a_step_and_records_its_effects() {
        let host =
            MockHost::new(serde_json::json!({"service": "api"})).tool("restart", |_| ToolResult {
                rc: 0,
                stdout: String::new(),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
            });
        let (outcome, host) = run_step(host, restart);
        assert_eq!(
            outcome,
            Outcome::Ok(serde_json::json!({"restarted": "api"}))
        );
        assert_eq!(host.kv["svc/api/restarted"], b"1");
        assert_eq!(host.calls[0].0, "restart");
        assert!(host.calls[0].1, "called as a mutation");
    }

    #[test]
    fn a_long_tool_answer_is_read_back_without_calling_the_tool_again() {
        let long = "x".repeat(100 * 1024);
        let stdout = long.clone();
        let host = MockHost::new(serde_json::json!({})).tool("dump", move |_| ToolResult {
            rc: 0,
            stdout: stdout.clone(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
        });
        let (outcome, host) = run_step(host, |_: serde_json::Value| {
            match tool::read("dump", &serde_json::json!({})) {
                Ok(r) => Outcome::ok(r.stdout.len()),
                Err(e) => Outcome::Fail(e.to_string()),
            }
        });
        assert_eq!(outcome, Outcome::Ok(serde_json::json!(long.len())));
        assert_eq!(host.calls.len(), 1, "the tool ran once");
    }

    #[test]
    fn missing_tool_is_denied_like_an_ungranted_one() {
        let (outcome, _) = run_step(
            MockHost::new(serde_json::json!({"service": "api"})),
            restart,
        );
        assert_eq!(outcome, Outcome::Escalate("denied by policy".into()));
    }

    #[test]
    fn input_that_does_not_decode_fails_the_step() {
        #[derive(serde::Deserialize, Debug)]
        struct Needs {
            #[allow(dead_code, reason = "only read by the decoder, which must fail")]
            count: u32,
        }
        let (outcome, _) = run_step(MockHost::new(serde_json::json!({})), |_: Needs| {
            Outcome::ok(1)
        });
        assert!(matches!(outcome, Outcome::Fail(m) if m.contains("count")));
    }
}
