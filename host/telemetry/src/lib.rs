//! # runbox-telemetry: what runbox counts, and the traces it is in
//!
//! Every metric runbox exports is declared once here, in [`CATALOG`]: its
//! name, type, labels and meaning (which `docs/operations.md` lists, and a
//! test holds the two together). The crates that do the work record through
//! the typed calls below, never through a metric name of their own, so a
//! name or a label set lives in one place.
//!
//! The calls go through the [`metrics`] facade: with no recorder installed
//! (a one-shot command, a library user) each is a check of a global and
//! nothing more. The binary installs the Prometheus exporter
//! (`runbox_server::metrics`) when it serves `/metrics`.
//!
//! Names follow Prometheus's conventions: the `runbox_` prefix, `_total`
//! on counters, base units (`_seconds`), and labels of low cardinality:
//! runbook, step, tool, mode, outcome, never an incident id.
//!
//! ```
//! // An attempt of step `restart` in runbook `api-outage` that ended ok
//! // after 1.5 s and moved the incident on:
//! runbox_telemetry::attempt("api-outage", "restart", "ok", 1.5, true);
//! ```

#![deny(missing_docs)]

pub mod traces;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};

use metrics::{counter, gauge, histogram};

/// What kind of metric an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_seconds`).
    Histogram,
}

/// One metric of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its full name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it means (the exposition's `# HELP`).
    pub help: &'static str,
}

macro_rules! catalog {
    ($($(#[$doc:meta])* $const:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $($(#[$doc])* pub const $const: &str = $name;)*
        /// Every metric runbox exports.
        pub const CATALOG: &[Metric] = &[$(Metric {
            name: $name,
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        }),*];
    };
}

catalog! {
    /// Step attempts committed.
    ATTEMPTS = "runbox_attempts_total", Counter, ["runbook", "step", "outcome"],
        "Step attempts committed, by how they ended (ok, fail, retry, error, in-doubt, ...).";
    /// Steps that moved the incident on.
    STEPS = "runbox_steps_total", Counter, ["runbook", "step", "outcome"],
        "Steps finished: attempts after which the incident moved on (not retried), by outcome.";
    /// How long attempts took.
    ATTEMPT_SECONDS = "runbox_attempt_duration_seconds", Histogram, ["runbook", "step", "outcome"],
        "Time from an attempt's start to its commit.";
    /// Tool calls made.
    TOOL_CALLS = "runbox_tool_calls_total", Counter, ["tool", "mode", "outcome"],
        "Tool calls run (not replayed, not intercepted by a dry run), by outcome: ok, nonzero, timed-out, error.";
    /// How long tool calls took.
    TOOL_CALL_SECONDS = "runbox_tool_call_duration_seconds", Histogram, ["tool", "mode"],
        "Time a tool call ran.";
    /// Commits to incidents.
    COMMITS = "runbox_commits_total", Counter, ["result"],
        "Commits to incidents, by result: ok, conflict (the checkpoint moved), error.";
    /// How long commits took.
    COMMIT_SECONDS = "runbox_commit_duration_seconds", Histogram, [],
        "Time a commit took in the store (a synced write, or an etcd transaction).";
    /// Timeline events committed.
    EVENTS = "runbox_timeline_events_total", Counter, ["kind"],
        "Timeline events committed, by kind: escalated, in-doubt, limited (a rate-limit hold), limit-used (a fill), brake-engaged, approval-required, ...";
    /// How long approvals waited.
    APPROVAL_WAIT_SECONDS = "runbox_approval_wait_seconds", Histogram, ["runbook"],
        "Time from an approval request to the human's signed approval.";
    /// Incidents by status and owner.
    INCIDENTS = "runbox_incidents", Gauge, ["status", "owner"],
        "Incidents by status and owner kind (agent, human), counted at most once per scrape interval.";
    /// Notification tries.
    NOTIFICATIONS = "runbox_notifications_total", Counter, ["sink", "outcome"],
        "Notification tries, by outcome: delivered, failed (tried again), parked (out of tries).";
    /// Notifications not delivered.
    NOTIFICATIONS_OWED = "runbox_notifications_owed", Gauge, ["state"],
        "Notifications not delivered yet, by state: pending, parked; counted with runbox_incidents.";
    /// Brakes engaged.
    BRAKES = "runbox_brakes_engaged", Gauge, [],
        "Brakes engaged now (fleet-wide on a shared store); counted with runbox_incidents.";
    /// Attempts running in the sandbox.
    SANDBOX_IN_USE = "runbox_sandbox_attempts_in_use", Gauge, [],
        "Step attempts running in the sandbox now (each holds a pooled instance slot).";
    /// Modules prepared.
    MODULES = "runbox_modules_total", Counter, ["source"],
        "Modules and components prepared, by source: cache (in memory), artifact (compiled earlier, from disk), compiled.";
    /// etcd lease renewals.
    LEASE_RENEWALS = "runbox_etcd_lease_renewals_total", Counter, ["result"],
        "Renewals of the runner's etcd lease, by result: ok, failed (tried on another member).";
    /// etcd leases lost.
    LEASE_LAPSES = "runbox_etcd_lease_lapses_total", Counter, [],
        "Times the runner's etcd lease expired: its claims went to other runners.";
    /// etcd claims.
    CLAIMS = "runbox_etcd_claims_total", Counter, ["result"],
        "Claims of an incident on etcd, by result: ours, theirs (another runner holds it).";
    /// Commits refused for a lost claim.
    FENCED = "runbox_etcd_fenced_total", Counter, [],
        "Commits refused because another runner took the incident over (this runner's lease lapsed): the failovers this runner lost.";
    /// The build.
    BUILD_INFO = "runbox_build_info", Gauge, ["version"],
        "Always 1; its label is the runbox version.";
}

/// Whether a recorder is installed ([`describe`] says so): until then
/// every call below returns at once, and no handle is cached that the
/// recorder installed later would not see.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Whether a recorder is installed: a caller need not gather what it
/// would record (a commit's event kinds) when none is.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Gives every metric its `# HELP` (the exporter shows a metric once it is
/// recorded), sets [`BUILD_INFO`], and turns the calls below on. Call
/// once, after installing the process's recorder.
pub fn describe(version: &'static str) {
    RECORDING.store(true, Ordering::Relaxed);
    for m in CATALOG {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    gauge!(BUILD_INFO, "version" => version).set(1.0);
}

/// An attempt committed: `outcome` as recorded, `seconds` from its start,
/// `finished` when the incident moved on from the step.
pub fn attempt(runbook: &str, step: &str, outcome: &'static str, seconds: f64, finished: bool) {
    if !recording() {
        return;
    }
    let handles = attempt_handles(runbook, step, outcome);
    handles.attempts.increment(1);
    handles.seconds.record(seconds);
    if finished {
        handles.steps.increment(1);
    }
}

/// The handles of one (runbook, step, outcome): registered once per
/// process (and per recorder), so an attempt records without building
/// labels or looking them up in the recorder's registry.
#[derive(Clone)]
struct AttemptHandles {
    attempts: metrics::Counter,
    steps: metrics::Counter,
    seconds: metrics::Histogram,
}

/// Runbook → step → outcome → handles.
type AttemptCache = HashMap<String, HashMap<String, Vec<(&'static str, AttemptHandles)>>>;

static ATTEMPT_CACHE: LazyLock<RwLock<AttemptCache>> = LazyLock::new(RwLock::default);

fn attempt_handles(runbook: &str, step: &str, outcome: &'static str) -> AttemptHandles {
    let cached = ATTEMPT_CACHE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(runbook)
        .and_then(|steps| steps.get(step))
        .and_then(|outcomes| outcomes.iter().find(|(o, _)| *o == outcome))
        .map(|(_, h)| h.clone());
    if let Some(handles) = cached {
        return handles;
    }
    let labels = [
        ("runbook", runbook.to_string()),
        ("step", step.to_string()),
        ("outcome", outcome.to_string()),
    ];
    let handles = AttemptHandles {
        attempts: counter!(ATTEMPTS, &labels),
        steps: counter!(STEPS, &labels),
        seconds: histogram!(ATTEMPT_SECONDS, &labels),
    };
    ATTEMPT_CACHE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(runbook.to_string())
        .or_default()
        .entry(step.to_string())
        .or_default()
        .push((outcome, handles.clone()));
    handles
}

/// A tool call ran (`outcome`: ok, nonzero, timed-out, error).
pub fn tool_call(tool: &str, mode: &'static str, outcome: &'static str, seconds: f64) {
    if !recording() {
        return;
    }
    let (calls, took) = tool_handles(tool, mode, outcome);
    calls.increment(1);
    took.record(seconds);
}

/// Tool → (mode, outcome, its counter and histogram).
type ToolCache = HashMap<
    String,
    Vec<(
        &'static str,
        &'static str,
        metrics::Counter,
        metrics::Histogram,
    )>,
>;

static TOOL_CACHE: LazyLock<RwLock<ToolCache>> = LazyLock::new(RwLock::default);

/// The handles of one (tool, mode, outcome), registered once, as
/// [`attempt_handles`] does.
fn tool_handles(
    tool: &str,
    mode: &'static str,
    outcome: &'static str,
) -> (metrics::Counter, metrics::Histogram) {
    let cached = TOOL_CACHE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(tool)
        .and_then(|all| all.iter().find(|(m, o, ..)| *m == mode && *o == outcome))
        .map(|(_, _, calls, took)| (calls.clone(), took.clone()));
    if let Some(handles) = cached {
        return handles;
    }
    let calls =
        counter!(TOOL_CALLS, "tool" => tool.to_string(), "mode" => mode, "outcome" => outcome);
    let took = histogram!(TOOL_CALL_SECONDS, "tool" => tool.to_string(), "mode" => mode);
    TOOL_CACHE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(tool.to_string())
        .or_default()
        .push((mode, outcome, calls.clone(), took.clone()));
    (calls, took)
}

/// Handles of one metric by the value of its one label, a `'static` str
/// from a short fixed set (commit results, event kinds, module sources):
/// registered once per process, then found by a scan of a few entries.
struct ByLabel<H> {
    cache: RwLock<Vec<(&'static str, H)>>,
}

impl<H: Clone> ByLabel<H> {
    const fn new() -> Self {
        ByLabel {
            cache: RwLock::new(Vec::new()),
        }
    }

    fn get(&self, label: &'static str, register: impl FnOnce() -> H) -> H {
        let found = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, h)| h.clone());
        found.unwrap_or_else(|| {
            let handle = register();
            self.cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .push((label, handle.clone()));
            handle
        })
    }
}

static COMMIT_COUNTERS: ByLabel<metrics::Counter> = ByLabel::new();
static EVENT_COUNTERS: ByLabel<metrics::Counter> = ByLabel::new();
static MODULE_COUNTERS: ByLabel<metrics::Counter> = ByLabel::new();
/// The metrics without labels, by name.
static UNLABELLED_HISTOGRAMS: ByLabel<metrics::Histogram> = ByLabel::new();
static UNLABELLED_GAUGES: ByLabel<metrics::Gauge> = ByLabel::new();

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// Written.
    Ok,
    /// The checkpoint moved since the change was decided.
    Conflict,
    /// Anything else the store refused or failed.
    Error,
}

impl CommitResult {
    /// Its label: `ok`, `conflict`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitResult::Ok => "ok",
            CommitResult::Conflict => "conflict",
            CommitResult::Error => "error",
        }
    }
}

/// A commit to an incident ended as `result` after `seconds`, with these
/// timeline events (counted only when it was written).
pub fn commit(result: CommitResult, seconds: f64, events: impl IntoIterator<Item = &'static str>) {
    if !recording() {
        return;
    }
    let label = result.as_str();
    COMMIT_COUNTERS
        .get(label, || counter!(COMMITS, "result" => label))
        .increment(1);
    if result == CommitResult::Ok {
        UNLABELLED_HISTOGRAMS
            .get(COMMIT_SECONDS, || histogram!(COMMIT_SECONDS))
            .record(seconds);
        for kind in events {
            EVENT_COUNTERS
                .get(kind, || counter!(EVENTS, "kind" => kind))
                .increment(1);
        }
    }
}

/// A human approved a step of `runbook` `seconds` after it was requested.
pub fn approval_waited(runbook: &str, seconds: f64) {
    if !recording() {
        return;
    }
    histogram!(APPROVAL_WAIT_SECONDS, "runbook" => runbook.to_string()).record(seconds);
}

/// Sets the incident gauges: how many incidents stand at each (status,
/// owner kind).
pub fn incidents<'a>(counts: impl IntoIterator<Item = (&'a str, &'a str, usize)>) {
    if !recording() {
        return;
    }
    for (status, owner, n) in counts {
        gauge!(INCIDENTS, "status" => status.to_string(), "owner" => owner.to_string())
            .set(n as f64);
    }
}

/// Sets the owed-notification gauges.
pub fn notifications_owed(pending: usize, parked: usize) {
    if !recording() {
        return;
    }
    gauge!(NOTIFICATIONS_OWED, "state" => "pending").set(pending as f64);
    gauge!(NOTIFICATIONS_OWED, "state" => "parked").set(parked as f64);
}

/// Sets the engaged-brakes gauge.
pub fn brakes_engaged(n: usize) {
    if !recording() {
        return;
    }
    gauge!(BRAKES).set(n as f64);
}

/// A notification try to `sink` ended (`delivered`, `failed`, `parked`).
pub fn notification(sink: &str, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(NOTIFICATIONS, "sink" => sink.to_string(), "outcome" => outcome).increment(1);
}

/// Counts an attempt in the sandbox while the returned guard lives.
pub fn sandbox_in_use() -> InUse {
    let counted = recording();
    if counted {
        in_use_gauge().increment(1.0);
    }
    InUse { counted }
}

fn in_use_gauge() -> metrics::Gauge {
    UNLABELLED_GAUGES.get(SANDBOX_IN_USE, || gauge!(SANDBOX_IN_USE))
}

/// One attempt in the sandbox ([`sandbox_in_use`]).
#[derive(Debug)]
pub struct InUse {
    /// Whether it was counted in (a recorder was installed by then).
    counted: bool,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.counted {
            in_use_gauge().decrement(1.0);
        }
    }
}

/// A module was prepared from `source` (cache, artifact, compiled).
pub fn module(source: &'static str) {
    if !recording() {
        return;
    }
    MODULE_COUNTERS
        .get(source, || counter!(MODULES, "source" => source))
        .increment(1);
}

/// The etcd lease was renewed (`ok`) or a renewal failed.
pub fn lease_renewal(ok: bool) {
    if !recording() {
        return;
    }
    counter!(LEASE_RENEWALS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// The etcd lease expired.
pub fn lease_lapse() {
    if !recording() {
        return;
    }
    counter!(LEASE_LAPSES).increment(1);
}

/// An etcd claim was ours or another runner's.
pub fn claim(ours: bool) {
    if !recording() {
        return;
    }
    counter!(CLAIMS, "result" => if ours { "ours" } else { "theirs" }).increment(1);
}

/// A commit was refused because another runner holds the incident now.
pub fn fenced() {
    if !recording() {
        return;
    }
    counter!(FENCED).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_the_prometheus_conventions() {
        let mut names = std::collections::BTreeSet::new();
        for m in CATALOG {
            assert!(names.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("runbox_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: `_total` is for counters alone",
                m.name
            );
            if m.kind == Kind::Histogram {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            assert!(
                !m.labels.iter().any(|l| l.contains("incident")),
                "{}: never an incident id",
                m.name
            );
        }
    }
}
