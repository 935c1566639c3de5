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
    /// Every human decision: who, with which key, and whether its
    /// signature verifies against the data dir's allowed_signers now.
    pub decisions: Vec<DecisionView>,
}

/// One human decision as a postmortem shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionView {
    /// The timeline event's sequence number.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// The event kind (`approved`, `takeover`, …).
    pub kind: String,
    /// `human:NAME`.
    pub by: String,
    /// The step, if any.
    pub step: Option<String>,
    /// `SHA256:…` of the key that signed it, if signed.
    pub fingerprint: Option<String>,
    /// Whether the signature verifies now.
    pub verified: bool,
    /// Why not, when it does not.
    pub problem: Option<String>,
}

/// Collects the postmortem of `id`.
pub fn postmortem(incidents: &Incidents, id: &str) -> Result<Postmortem, EngineError> {
    let timeline = incidents.timeline(id)?;
    let signers = incidents.signers()?;
    let decisions = timeline
        .iter()
        .filter(|e| e.kind.is_human_decision())
        .map(|e| decision_view(e, &signers))
        .collect();
    Ok(Postmortem {
        incident: incidents.view(id)?,
        steps: incidents.step_records(id)?,
        timeline,
        decisions,
    })
}

fn decision_view(e: &TimelineEvent, signers: &runbox_trust::AllowedSigners) -> DecisionView {
    let (fingerprint, verified, problem) = match &e.signed {
        None => (
            None,
            false,
            Some("not signed (recorded before signed decisions)".to_string()),
        ),
        Some(signed) => match signers.verify(&runbox_trust::Decision::from(signed)) {
            Ok(_) => (Some(signed.fingerprint.clone()), true, None),
            Err(err) => (
                Some(signed.fingerprint.clone()),
                false,
                Some(err.to_string()),
            ),
        },
    };
    DecisionView {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.to_string(),
        by: e.actor.clone(),
        step: e.step.clone(),
        fingerprint,
        verified,
        problem,
    }
}

impl Postmortem {
    /// The postmortem without the attempts' recordings (what each saw, for
    /// replay), which can dwarf the rest: exports leave them out unless asked.
    pub fn without_recordings(mut self) -> Self {
        for step in &mut self.steps {
            step.recording = None;
        }
        self
    }
}

/// Renders a postmortem as pretty-printed JSON.
pub fn json(p: &Postmortem) -> String {
    serde_json::to_string_pretty(p).expect("a postmortem always serializes")
}

/// What each attempt said: output or reason, error, and log lines, quoted
/// so no step text can break out of its block.
fn step_details(out: &mut String, steps: &[StepRecord]) {
    let said: Vec<&StepRecord> = steps
        .iter()
        .filter(|r| {
            r.output.is_some() || r.reason.is_some() || r.error.is_some() || !r.logs.is_empty()
        })
        .collect();
    if said.is_empty() {
        return;
    }
    // Backticks written as `\u0060`, so no step text can close the fence.
    let safe = |text: String| text.replace('`', "\\u0060");
    let _ = writeln!(out, "\n## What the steps said\n\n```");
    for r in said {
        let _ = writeln!(out, "{}#{}", r.step, r.attempt);
        if let Some(output) = &r.output {
            let _ = writeln!(out, "  output {}", safe(output.to_string()));
        }
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "  reason {}", safe(format!("{reason:?}")));
        }
        if let Some(error) = &r.error {
            let _ = writeln!(out, "  error  {}", safe(format!("{:?}", error.to_string())));
        }
        for log in &r.logs {
            let _ = writeln!(
                out,
                "  log    {} {}",
                log.level,
                safe(format!("{:?}", log.message))
            );
        }
    }
    let _ = writeln!(out, "```");
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
        "| step | action | attempt | start | end | outcome | tool rc | error | override | actor | next |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---|---|---:|---|---|---|---|");
    for r in &p.steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            r.next.as_deref().unwrap_or("-"),
        );
    }
    step_details(&mut out, &p.steps);
    if !p.decisions.is_empty() {
        let _ = writeln!(out, "\n## Human decisions\n");
        let _ = writeln!(out, "| # | when | decision | step | by | key | signature |");
        let _ = writeln!(out, "|---:|---|---|---|---|---|---|");
        for d in &p.decisions {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                d.seq,
                format_ms(d.at_ms),
                d.kind,
                d.step.as_deref().unwrap_or(""),
                d.by,
                d.fingerprint.as_deref().unwrap_or("-"),
                match (&d.problem, d.verified) {
                    (_, true) => "verified".to_string(),
                    (Some(why), false) => format!("NOT VERIFIED: {}", why.replace('|', "/")),
                    (None, false) => "NOT VERIFIED".to_string(),
                }
            );
        }
    }
    let _ = writeln!(out, "\n## Timeline\n\n```");
    for e in &p.timeline {
        let _ = writeln!(out, "{}", e.line());
    }
    let _ = writeln!(out, "```");
    out
}
