//! # runbox-report: postmortems
//!
//! What happened during an incident, for the people in the postmortem
//! meeting and for the machines that load it into a warehouse:
//!
//! - [`Postmortem`] (`runbox.postmortem/v1`) collects one incident: its
//!   runbook, every step record, every timeline event, who owned it when,
//!   the signed human decisions and whether they verify, and the derived
//!   [`Figures`] (time to resolve, agent and human time, approval wait,
//!   escalations, overrides). Render it as JSON ([`json`]), Markdown
//!   ([`markdown`]) or one self-contained HTML page ([`html`]) with a
//!   timeline chart.
//! - [`write_rows`] streams incidents as JSONL or CSV, one step record or
//!   event a line, a page of the store at a time, so memory stays bounded
//!   however long the incidents are.
//! - [`patterns`] reads many incidents and reports, per runbook and step,
//!   how attempts ended and how long they and their approvals took
//!   ([`Patterns`], `runbox.patterns/v1`).
//!
//! Reports read the store through [`runbox_incidents::Incidents`] only: no
//! sandbox, no writes.
//!
//! ```no_run
//! # fn demo(incidents: &runbox_incidents::Incidents) -> Result<(), runbox_report::ReportError> {
//! let p = runbox_report::postmortem(incidents, "INC-7", false)?;
//! println!("took {:?} ms to resolve", p.figures.time_to_resolve_ms);
//! std::fs::write("INC-7.html", runbox_report::html(&p)).unwrap();
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod chart;
mod figures;
mod html;
mod markdown;
mod patterns;
mod postmortem;
mod rows;
mod stamp;

pub use figures::{Figures, Hold, HoldKind, OwnerChange, Wait, WaitEnd};
pub use html::html;
pub use markdown::markdown;
pub use patterns::{
    IncidentFigures, PATTERNS_SCHEMA, Patterns, Quantiles, RunbookPatterns, StepPatterns,
    incidents_since, patterns, patterns_html, patterns_table,
};
pub use postmortem::{
    DecisionView, EventView, IncidentSection, POSTMORTEM_SCHEMA, Postmortem, RunbookSection,
    StepView, json, postmortem,
};
pub use rows::{RowFormat, write_rows};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the store failed, or there is no such incident.
    #[error(transparent)]
    Read(#[from] runbox_incidents::ReadError),
    /// Writing the output failed (a full disk, a closed pipe).
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
    /// Writing CSV failed.
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// The JSON Schemas of the documents this crate writes, by file name.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let value = |s: schemars::Schema| serde_json::to_value(s).unwrap_or_default();
    vec![
        (
            "postmortem.schema.json",
            value(schemars::schema_for!(Postmortem)),
        ),
        (
            "patterns.schema.json",
            value(schemars::schema_for!(Patterns)),
        ),
        (
            "row.schema.json",
            value(schemars::schema_for!(rows::Row<'static>)),
        ),
    ]
}
