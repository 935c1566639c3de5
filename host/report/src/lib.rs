//! # runbox-report: postmortems
//!
//! Every step record and the timeline of an incident, as JSON for tools
//! ([`json`]) or Markdown for people ([`markdown`]). Reports read the
//! store through [`Incidents`] only: no sandbox, no writes.

#![deny(missing_docs)]

use std::fmt::Write as _;

use serde::Serialize;

use runbox_core::records::{StepRecord, TimelineEvent};
use runbox_core::time::format_ms;
use runbox_engine::{EngineError, IncidentView, Incidents};

/// Everything a postmortem review needs about one incident.
#[derive(Debug, Clone, Serialize)]
pub struct Postmortem {
    /// Status, owner, checkpoint, params.
    pub incident: IncidentView,
    /// Every step attempt, in order.
    pub steps: Vec<StepRecord>,
    /// Every event, in order.
    pub timeline: Vec<TimelineEvent>,
}

/// Collects the postmortem of `id`.
pub fn postmortem(incidents: &Incidents, id: &str) -> Result<Postmortem, EngineError> {
    Ok(Postmortem {
        incident: incidents.view(id)?,
        steps: incidents.step_records(id)?,
        timeline: incidents.timeline(id)?,
    })
}

/// Renders a postmortem as pretty-printed JSON.
pub fn json(p: &Postmortem) -> String {
    serde_json::to_string_pretty(p).expect("a postmortem always serializes")
}

/// Renders a postmortem as Markdown.
pub fn markdown(p: &Postmortem) -> String {
    let mut out = String::new();
    let i = &p.incident;
    let _ = writeln!(out, "# Incident {} ({})\n", i.id, i.runbook);
    let _ = writeln!(out, "- status: **{}**, owner: {}", i.status, i.owner);
    let _ = writeln!(out, "- params: {:?}", i.params);
    if let Some(why) = &i.why {
        let _ = writeln!(out, "- last word: {why}");
    }
    let _ = writeln!(out, "\n## Steps\n");
    let _ = writeln!(
        out,
        "| step | action | attempt | start | end | outcome | tool rc | error | override | actor |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---|---|---:|---|---|---|");
    for r in &p.steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.step,
            r.action,
            r.attempt,
            format_ms(r.started_at_ms),
            format_ms(r.ended_at_ms),
            r.outcome.as_str(),
            r.tool_rc()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.error.as_ref().map(|e| e.category.as_str()).unwrap_or("-"),
            if r.human_override { "yes" } else { "no" },
            r.actor,
        );
    }
    let _ = writeln!(out, "\n## Timeline\n\n```");
    for e in &p.timeline {
        let _ = writeln!(out, "{}", e.line());
    }
    let _ = writeln!(out, "```");
    out
}
