//! Failure patterns across incidents (`runbox report`): per runbook and
//! step, how attempts ended, what failed them, how often a human had to step
//! in, and how long attempts and approvals took; per incident, the time to
//! resolve and the agent's and humans' share of it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use runbox_core::records::{IncidentMeta, RecordOutcome, Status};
use runbox_core::text::count;
use runbox_incidents::Incidents;

use crate::ReportError;
use crate::figures::{Figures, Fold, WaitEnd};
use crate::stamp::{opt_rfc3339, span};

/// The `schema` of a patterns report.
pub const PATTERNS_SCHEMA: &str = "runbox.patterns/v1";

/// Failure patterns across incidents.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Patterns {
    /// Always [`PATTERNS_SCHEMA`].
    pub schema: String,
    /// Incidents opened before this were left out.
    #[serde(rename = "since", serialize_with = "opt_rfc3339")]
    #[schemars(rename = "since", with = "Option<String>")]
    pub since_ms: Option<u64>,
    /// How many incidents it covers.
    pub incidents: u32,
    /// Per runbook, by name.
    pub runbooks: Vec<RunbookPatterns>,
    /// Per incident, in the order they were opened.
    pub per_incident: Vec<IncidentFigures>,
}

/// The patterns of one runbook.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunbookPatterns {
    /// The runbook's name.
    pub runbook: String,
    /// Incidents opened with it.
    pub incidents: u32,
    /// How many stand at each status.
    pub statuses: BTreeMap<Status, u32>,
    /// Time to resolve of its resolved incidents.
    pub time_to_resolve_ms: Quantiles,
    /// Per step, in the order steps first ran.
    pub steps: Vec<StepPatterns>,
}

/// The patterns of one step of a runbook.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct StepPatterns {
    /// The step id.
    pub step: String,
    /// Attempts recorded.
    pub attempts: u32,
    /// Attempts per outcome.
    pub outcomes: BTreeMap<RecordOutcome, u32>,
    /// Attempts per error category.
    pub error_categories: BTreeMap<String, u32>,
    /// Per tool, calls per return code.
    pub tool_rcs: BTreeMap<String, BTreeMap<i32, u32>>,
    /// Attempts that asked to be retried.
    pub retries: u32,
    /// Attempts that escalated.
    pub escalations: u32,
    /// Attempts found in doubt after a crash.
    pub in_doubt: u32,
    /// Attempts whose outcome a human decided.
    pub overrides: u32,
    /// `overrides / attempts`.
    pub override_rate: f64,
    /// How long its approvals took to come.
    pub approval_wait_ms: Quantiles,
    /// How long its attempts ran.
    pub duration_ms: Quantiles,
}

/// Nearest-rank percentiles of a set of durations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Quantiles {
    /// How many values.
    pub count: u32,
    /// The median.
    pub p50: Option<u64>,
    /// The 95th percentile.
    pub p95: Option<u64>,
    /// The largest.
    pub max: Option<u64>,
}

impl Quantiles {
    /// The quantiles of `values` (nearest rank: the smallest value with at
    /// least p% of the values at or below it).
    pub fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let rank = |p: f64| {
            let n = values.len();
            (n > 0).then(|| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        Quantiles {
            count: values.len() as u32,
            p50: rank(0.50),
            p95: rank(0.95),
            max: values.last().copied(),
        }
    }
}

/// One incident's figures.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IncidentFigures {
    /// The id.
    pub id: String,
    /// The runbook.
    pub runbook: String,
    /// Its status.
    pub status: Status,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The incidents opened at or after `since_ms` (all when `None`), with
/// what was fixed when each was opened, read one at a time: what
/// `report --since` and `export --all --since` cover.
pub fn incidents_since(
    incidents: &Incidents,
    since_ms: Option<u64>,
) -> Result<impl Iterator<Item = Result<(String, IncidentMeta), ReportError>> + '_, ReportError> {
    Ok(incidents.ids()?.into_iter().filter_map(move |id| {
        match incidents.incident_meta(id.as_str()) {
            Ok(meta) if since_ms.is_some_and(|since| meta.opened_at_ms < since) => None,
            Ok(meta) => Some(Ok((id.to_string(), meta))),
            Err(e) => Some(Err(e.into())),
        }
    }))
}

/// What one step's attempts add up to, before the quantiles.
#[derive(Default)]
struct StepTally {
    patterns: StepPatterns,
    durations: Vec<u64>,
    waits: Vec<u64>,
}

#[derive(Default)]
struct RunbookTally {
    incidents: u32,
    statuses: BTreeMap<Status, u32>,
    resolve_times: Vec<u64>,
    steps: Vec<StepTally>,
    step_index: HashMap<String, usize>,
}

impl RunbookTally {
    fn step(&mut self, step: &str) -> &mut StepTally {
        let next = self.steps.len();
        let i = *self.step_index.entry(step.to_string()).or_insert(next);
        if i == next {
            self.steps.push(StepTally::default());
            self.steps[i].patterns.step = step.to_string();
        }
        &mut self.steps[i]
    }
}

/// Reads every incident opened at or after `since_ms` (all when `None`)
/// and adds up their patterns. Each incident's timeline is streamed, so
/// memory follows the number of attempts, not of events.
pub fn patterns(incidents: &Incidents, since_ms: Option<u64>) -> Result<Patterns, ReportError> {
    let mut runbooks: BTreeMap<String, RunbookTally> = BTreeMap::new();
    let mut per_incident = Vec::new();
    for chosen in incidents_since(incidents, since_ms)? {
        let (id, meta) = chosen?;
        let status = incidents.status(&id)?;
        let tally = runbooks.entry(meta.runbook_name.clone()).or_default();
        let mut fold = Fold::new(meta.opened_at_ms);
        for r in incidents.step_records(&id)? {
            fold.step(&r);
            count_attempt(tally.step(&r.step), &r);
        }
        for event in incidents.events(&id)? {
            fold.event(&event?);
        }
        let folded = fold.finish();
        for w in folded.waits.iter().filter(|w| w.end == WaitEnd::Approved) {
            tally
                .step(&w.step)
                .waits
                .push(w.to_ms.saturating_sub(w.from_ms));
        }
        tally.incidents += 1;
        *tally.statuses.entry(status).or_default() += 1;
        tally
            .resolve_times
            .extend(folded.figures.time_to_resolve_ms);
        per_incident.push(IncidentFigures {
            id,
            runbook: meta.runbook_name,
            status,
            figures: folded.figures,
        });
    }
    per_incident.sort_by_key(|i| i.figures.opened_ms);
    Ok(Patterns {
        schema: PATTERNS_SCHEMA.to_string(),
        since_ms,
        incidents: per_incident.len() as u32,
        runbooks: runbooks.into_iter().map(summarise).collect(),
        per_incident,
    })
}

fn count_attempt(t: &mut StepTally, r: &runbox_core::records::StepRecord) {
    let p = &mut t.patterns;
    p.attempts += 1;
    *p.outcomes.entry(r.outcome).or_default() += 1;
    if let Some(e) = &r.error {
        *p.error_categories
            .entry(e.category.as_str().to_string())
            .or_default() += 1;
    }
    for call in &r.tool_calls {
        *p.tool_rcs
            .entry(call.name.clone())
            .or_default()
            .entry(call.rc)
            .or_default() += 1;
    }
    p.retries += u32::from(r.outcome == RecordOutcome::Retry);
    p.escalations += u32::from(r.outcome == RecordOutcome::Escalate);
    p.in_doubt += u32::from(r.outcome == RecordOutcome::InDoubt);
    p.overrides += u32::from(r.human_override);
    t.durations
        .push(r.ended_at_ms.saturating_sub(r.started_at_ms));
}

fn summarise((runbook, t): (String, RunbookTally)) -> RunbookPatterns {
    RunbookPatterns {
        runbook,
        incidents: t.incidents,
        statuses: t.statuses,
        time_to_resolve_ms: Quantiles::of(t.resolve_times),
        steps: t
            .steps
            .into_iter()
            .map(|s| StepPatterns {
                override_rate: f64::from(s.patterns.overrides)
                    / f64::from(s.patterns.attempts.max(1)),
                approval_wait_ms: Quantiles::of(s.waits),
                duration_ms: Quantiles::of(s.durations),
                ..s.patterns
            })
            .collect(),
    }
}

/// `p50/p95` of a set of durations, or `-`.
pub(crate) fn p50_p95(q: &Quantiles) -> String {
    match (q.p50, q.p95) {
        (Some(a), Some(b)) => format!("{}/{}", span(a), span(b)),
        _ => "-".into(),
    }
}

/// The outcome mix, `ok 3 retry 1`.
pub(crate) fn mix<K: std::fmt::Display>(m: &BTreeMap<K, u32>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The report as plain text tables.
pub fn patterns_table(p: &Patterns) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", count(p.incidents as u64, "incident"));
    for rb in &p.runbooks {
        let _ = writeln!(
            out,
            "\nrunbook {}: {} ({}), time to resolve p50/p95 {}",
            rb.runbook,
            count(rb.incidents as u64, "incident"),
            mix(&rb.statuses),
            p50_p95(&rb.time_to_resolve_ms)
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>8}  {:<32} {:>9} {:>17} {:>17}  errors / tool rcs",
            "step", "attempts", "outcomes", "override", "duration p50/p95", "approval p50/p95"
        );
        for s in &rb.steps {
            let rcs: Vec<String> = s
                .tool_rcs
                .iter()
                .map(|(tool, rcs)| format!("{tool} {}", mix(rcs)))
                .collect();
            let _ = writeln!(
                out,
                "  {:<20} {:>8}  {:<32} {:>8.0}% {:>17} {:>17}  {} / {}",
                s.step,
                s.attempts,
                mix(&s.outcomes),
                s.override_rate * 100.0,
                p50_p95(&s.duration_ms),
                p50_p95(&s.approval_wait_ms),
                mix(&s.error_categories),
                if rcs.is_empty() {
                    "-".into()
                } else {
                    rcs.join("; ")
                },
            );
        }
    }
    if !p.per_incident.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<24} {:<20} {:<18} {:>10} {:>10} {:>10}",
            "incident", "runbook", "status", "resolved", "agent", "human"
        );
    }
    for i in &p.per_incident {
        let f = &i.figures;
        let _ = writeln!(
            out,
            "  {:<24} {:<20} {:<18} {:>10} {:>10} {:>10}",
            i.id,
            i.runbook,
            i.status,
            f.time_to_resolve_ms.map_or("-".into(), span),
            span(f.agent_ms),
            span(f.human_ms)
        );
    }
    out
}

pub use crate::html::patterns_html;

#[cfg(test)]
mod tests {
    use super::Quantiles;

    #[test]
    fn nearest_rank_percentiles() {
        let q = Quantiles::of((1..=100).rev().collect());
        assert_eq!(
            (q.p50, q.p95, q.max, q.count),
            (Some(50), Some(95), Some(100), 100)
        );
        assert_eq!(Quantiles::of(vec![7]).p95, Some(7));
        assert_eq!(Quantiles::of(vec![]).p50, None);
    }
}
