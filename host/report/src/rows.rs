//! Incidents as rows for a warehouse or a notebook: one timeline event or
//! step record a line, as JSONL or CSV (RFC 4180).
//!
//! Rows stream: the timeline is read a page at a time, and each step record
//! is written right after the event that committed it, read by a cursor
//! over that step's records. An export of a million events holds a page in
//! memory, never the incident. Events are decoded borrowing their strings
//! from the page, so an event row costs no allocation of its own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use runbox_core::event::EventKind;
use runbox_core::records::{RecordOutcome, StepRecord, TimelineEvent};
use runbox_core::time::format_ms;
use runbox_incidents::Incidents;
use runbox_trust::AllowedSigners;

use crate::ReportError;
use crate::postmortem::{DecisionView, EventView, StepView};

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// One JSON object a line ([`Row`]'s schema, `row.schema.json`).
    Jsonl,
    /// RFC 4180 CSV with a header; text cells that a spreadsheet would
    /// read as a formula get a leading `'`.
    Csv,
}

/// One line of a JSONL export: the document behind `row.schema.json`.
/// Rows are written from [`StoredEvent`] and [`StepView`] directly; the
/// tests check every line against this schema.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(dead_code, reason = "only its schema is used")]
pub(crate) enum Row<'a> {
    /// A timeline event.
    Event {
        /// The incident.
        incident: &'a str,
        /// The event.
        #[serde(flatten)]
        event: EventView,
    },
    /// A step record.
    Step {
        /// The incident.
        incident: &'a str,
        /// The record.
        #[serde(flatten)]
        step: Box<StepView>,
    },
}

/// The CSV header: one shape for event and step rows.
const CSV_HEADER: [&str; 17] = [
    "incident",
    "type",
    "seq",
    "at",
    "ended",
    "duration_ms",
    "step",
    "attempt",
    "actor",
    "kind",
    "outcome",
    "tool_calls",
    "tool_rc",
    "error_category",
    "human_override",
    "approved_by",
    "message",
];

/// A timeline event as stored, its strings borrowed from the stored bytes
/// where they hold no escapes; serialized with the field names of
/// [`EventView`].
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent<'a> {
    seq: u64,
    #[serde(rename(serialize = "at"), serialize_with = "crate::stamp::rfc3339")]
    at_ms: u64,
    #[serde(borrow)]
    actor: Cow<'a, str>,
    kind: EventKind,
    #[serde(borrow)]
    step: Option<Cow<'a, str>>,
    attempt: Option<u32>,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        rename(serialize = "fingerprint", deserialize = "signed"),
        serialize_with = "fingerprint"
    )]
    signed: Option<SignedRef<'a>>,
}

/// Of a signed statement, the fingerprint of its key.
#[derive(Debug, Deserialize)]
struct SignedRef<'a> {
    #[serde(borrow)]
    fingerprint: Cow<'a, str>,
}

fn fingerprint<S: serde::Serializer>(
    signed: &Option<SignedRef<'_>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_some(&signed.as_ref().map(|f| f.fingerprint.as_ref()))
}

/// Rows encoded into a buffer, one encoder a thread.
enum Encoder {
    Jsonl { out: Vec<u8>, buf: Vec<u8> },
    Csv(Box<csv::Writer<Vec<u8>>>),
}

impl Encoder {
    fn new(format: RowFormat) -> Self {
        match format {
            RowFormat::Jsonl => Encoder::Jsonl {
                out: Vec::new(),
                buf: Vec::new(),
            },
            RowFormat::Csv => Encoder::Csv(Box::new(csv::Writer::from_writer(Vec::new()))),
        }
    }

    fn event(&mut self, incident: &str, e: &StoredEvent<'_>) -> Result<(), ReportError> {
        match self {
            Encoder::Jsonl { out, buf } => jsonl(out, buf, "event", incident, e),
            Encoder::Csv(w) => csv_row(w, event_cells(incident, e)),
        }
    }

    fn step(&mut self, incident: &str, s: &StepView) -> Result<(), ReportError> {
        match self {
            Encoder::Jsonl { out, buf } => jsonl(out, buf, "step", incident, s),
            Encoder::Csv(w) => csv_row(w, step_cells(incident, s)),
        }
    }

    /// Every row encoded since the last [`Encoder::take`].
    fn bytes(&self) -> &[u8] {
        match self {
            Encoder::Jsonl { out, .. } => out,
            Encoder::Csv(w) => w.get_ref(),
        }
    }

    /// The rows encoded so far; the encoder starts afresh.
    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Jsonl { out, .. } => std::mem::take(out),
            Encoder::Csv(w) => {
                let fresh = Box::new(csv::Writer::from_writer(Vec::new()));
                // Every row was flushed as it was written: nothing can fail.
                std::mem::replace(w, fresh).into_inner().unwrap_or_default()
            }
        }
    }
}

/// `{"type":…,"incident":…,` then the value's own fields: [`Row`]'s shape,
/// without serde's slower flattening.
fn jsonl(
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    kind: &str,
    incident: &str,
    value: &impl Serialize,
) -> Result<(), ReportError> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value).map_err(std::io::Error::from)?;
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"incident\":");
    serde_json::to_writer(&mut *out, incident).map_err(std::io::Error::from)?;
    out.push(b',');
    out.extend_from_slice(&buf[1..]);
    out.push(b'\n');
    Ok(())
}

fn csv_row(w: &mut csv::Writer<Vec<u8>>, cells: Vec<String>) -> Result<(), ReportError> {
    let cells: Vec<Cow<'_, str>> = cells.iter().map(|c| neutralise(c)).collect();
    w.write_record(cells.iter().map(|c| c.as_bytes()))?;
    // Into the writer's Vec (no system call), so its bytes are whole rows.
    w.flush()?;
    Ok(())
}

/// Writes every event and step record of `ids` as rows to `out`, and
/// returns how many rows it wrote.
///
/// Two threads share the work, a page at a time: one reads the timeline
/// and encodes its events; the other (the caller's) reads and encodes the
/// step records, puts each after the event that committed it, and writes.
/// The two halves cost about the same, and at most [`PAGES_AHEAD`] pages
/// wait between them, so memory stays bounded.
pub fn write_rows<W: Write>(
    incidents: &Incidents,
    ids: &[String],
    format: RowFormat,
    mut out: W,
) -> Result<u64, ReportError> {
    if format == RowFormat::Csv {
        let mut header = csv::Writer::from_writer(Vec::new());
        header.write_record(CSV_HEADER)?;
        out.write_all(
            &header
                .into_inner()
                .map_err(csv::IntoInnerError::into_error)?,
        )?;
    }
    let signers = incidents.signers()?;
    let (pages, rx) = std::sync::mpsc::sync_channel(PAGES_AHEAD);
    std::thread::scope(|scope| {
        let events = scope.spawn(|| event_pages(incidents, ids, &signers, format, pages));
        let steps = write_pages(incidents, format, rx, &mut out);
        // The event thread stops at its next page once `rx` is gone.
        let events = events
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let rows = events? + steps?;
        out.flush()?;
        Ok(rows)
    })
}

/// Pages encoded ahead of the writer.
const PAGES_AHEAD: usize = 4;

/// A page of the timeline, encoded, with the places where something other
/// than its bytes happens.
struct EncodedPage {
    bytes: Vec<u8>,
    marks: Vec<Mark>,
}

/// At byte `at` of its page: what the writer does there.
struct Mark {
    at: usize,
    what: Pending,
}

enum Pending {
    /// The rows of this incident start here.
    Incident(String),
    /// An approval of `step`#`attempt`, written with that attempt's record.
    Approval(String, u32, DecisionView),
    /// `kind` may have committed the record of `step`#`attempt`.
    Commit(EventKind, String, u32),
}

/// The event thread: every incident's timeline as encoded pages, sent to
/// `pages`; returns how many events it encoded.
fn event_pages(
    incidents: &Incidents,
    ids: &[String],
    signers: &AllowedSigners,
    format: RowFormat,
    pages: std::sync::mpsc::SyncSender<EncodedPage>,
) -> Result<u64, ReportError> {
    let mut encoder = Encoder::new(format);
    let mut rows = 0;
    for id in ids {
        let mut marks = vec![Mark {
            at: 0,
            what: Pending::Incident(id.clone()),
        }];
        for page in incidents.event_pages(id)? {
            for (key, stored) in page? {
                let event: StoredEvent<'_> = decode(&key, &stored)?;
                encoder.event(id, &event)?;
                rows += 1;
                let (Some(step), Some(attempt)) = (event.step.as_deref(), event.attempt) else {
                    continue;
                };
                let what = if event.kind == EventKind::Approved {
                    let full: TimelineEvent = decode(&key, &stored)?;
                    let view = DecisionView::new(&full, signers);
                    Pending::Approval(step.to_string(), attempt, view)
                } else if event.kind.commits_record() {
                    Pending::Commit(event.kind, step.to_string(), attempt)
                } else {
                    continue;
                };
                marks.push(Mark {
                    at: encoder.bytes().len(),
                    what,
                });
            }
            let page = EncodedPage {
                bytes: encoder.take(),
                marks: std::mem::take(&mut marks),
            };
            if pages.send(page).is_err() {
                // The writer stopped on an error of its own; it reports it.
                return Ok(rows);
            }
        }
    }
    Ok(rows)
}

/// The writer: each page's events, with each step record after the event
/// that committed it; returns how many step records it wrote.
fn write_pages<W: Write>(
    incidents: &Incidents,
    format: RowFormat,
    pages: std::sync::mpsc::Receiver<EncodedPage>,
    out: &mut W,
) -> Result<u64, ReportError> {
    let mut encoder = Encoder::new(format);
    let mut id = String::new();
    // Approvals wait here for the record of the attempt they covered.
    let mut approvals: HashMap<(String, u32), Vec<DecisionView>> = HashMap::new();
    let mut records = Records::default();
    let mut rows = 0;
    for page in pages {
        let mut written = 0;
        for mark in page.marks {
            out.write_all(&page.bytes[written..mark.at])?;
            written = mark.at;
            match mark.what {
                Pending::Incident(next) => {
                    id = next;
                    approvals.clear();
                    records = Records::default();
                }
                Pending::Approval(step, attempt, view) => {
                    approvals.entry((step, attempt)).or_default().push(view);
                }
                Pending::Commit(kind, step, attempt) => {
                    let Some(r) = records.committed_by(incidents, &id, kind, (&step, attempt))?
                    else {
                        continue;
                    };
                    let mine = approvals.remove(&(step, attempt)).unwrap_or_default();
                    let before = encoder.bytes().len();
                    encoder.step(&id, &StepView::new(r, mine, false))?;
                    out.write_all(&encoder.bytes()[before..])?;
                    rows += 1;
                }
            }
        }
        out.write_all(&page.bytes[written..])?;
        encoder.take();
    }
    Ok(rows)
}

/// Decodes a stored record, naming its key when it is corrupt.
fn decode<'a, T: Deserialize<'a>>(
    key: &impl std::fmt::Display,
    bytes: &'a [u8],
) -> Result<T, ReportError> {
    serde_json::from_slice(bytes).map_err(|source| {
        runbox_incidents::ReadError::from(runbox_store::StoreError::Corrupt {
            key: key.to_string(),
            source,
        })
        .into()
    })
}

/// A cursor over each step's records, in attempt order: events commit a
/// step's attempts in order, so each record is read by moving forward,
/// cheaper than looking each up by key.
#[derive(Default)]
struct Records {
    cursors: HashMap<String, std::iter::Peekable<runbox_incidents::Attempts>>,
}

impl Records {
    /// The record of `step`#`attempt` if `event` wrote it as it stands.
    fn committed_by(
        &mut self,
        incidents: &Incidents,
        id: &str,
        kind: EventKind,
        (step, attempt): (&str, u32),
    ) -> Result<Option<StepRecord>, ReportError> {
        if !self.cursors.contains_key(step) {
            let cursor = incidents.attempts(id, step)?.peekable();
            self.cursors.insert(step.to_string(), cursor);
        }
        let cursor = self.cursors.get_mut(step).expect("inserted above");
        while let Some(next) = cursor.peek() {
            match next {
                Ok(r) if r.attempt < attempt => {
                    cursor.next();
                }
                Ok(r) if r.attempt == attempt && committed_by(kind, r) => {
                    return Ok(cursor.next().transpose()?);
                }
                Ok(_) => return Ok(None),
                Err(_) => return Err(cursor.next().expect("peeked").unwrap_err().into()),
            }
        }
        Ok(None)
    }
}

/// Whether `event` wrote the record as it stands. A record is rewritten
/// when a human settles an attempt the agent left in doubt or escalated, so
/// it is written out once, after the event that last wrote it.
fn committed_by(kind: EventKind, r: &StepRecord) -> bool {
    match kind {
        EventKind::StepCommitted => !r.human_override && r.outcome != RecordOutcome::InDoubt,
        EventKind::InDoubt => !r.human_override && r.outcome == RecordOutcome::InDoubt,
        _ => r.human_override,
    }
}

/// An event's cells, in [`CSV_HEADER`]'s order.
fn event_cells(incident: &str, e: &StoredEvent<'_>) -> Vec<String> {
    vec![
        incident.to_string(),
        "event".into(),
        e.seq.to_string(),
        format_ms(e.at_ms),
        String::new(),
        String::new(),
        e.step.as_deref().unwrap_or_default().to_string(),
        e.attempt.map(|a| a.to_string()).unwrap_or_default(),
        e.actor.to_string(),
        e.kind.as_str().into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        e.message.to_string(),
    ]
}

/// A step record's cells, in [`CSV_HEADER`]'s order.
fn step_cells(incident: &str, s: &StepView) -> Vec<String> {
    vec![
        incident.to_string(),
        "step".into(),
        String::new(),
        format_ms(s.started_ms),
        format_ms(s.ended_ms),
        s.duration_ms.to_string(),
        s.step.clone(),
        s.attempt.to_string(),
        s.actor.clone(),
        s.action.clone(),
        s.outcome.as_str().into(),
        s.tool_calls
            .iter()
            .map(|c| format!("{}:{}:{}", c.name, c.mode, c.rc))
            .collect::<Vec<_>>()
            .join(" "),
        s.tool_calls
            .last()
            .map(|c| c.rc.to_string())
            .unwrap_or_default(),
        s.error_category
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        s.human_override.to_string(),
        s.approvals
            .iter()
            .map(|a| a.by.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        step_message(s),
    ]
}

/// What a step said, for the one message column: its reason, else its
/// error, else its output as JSON.
fn step_message(s: &StepView) -> String {
    s.reason
        .clone()
        .or_else(|| s.error.clone())
        .or_else(|| s.output.as_ref().map(ToString::to_string))
        .unwrap_or_default()
}

/// A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab,
/// carriage return first) gets a leading `'`, OWASP's advice against CSV
/// injection. A number stays a number: `-1` is a return code, not a formula.
fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    let formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula && cell.parse::<f64>().is_err() {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use super::neutralise;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        assert_eq!(neutralise("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("+1+1"), "'+1+1");
        assert_eq!(neutralise("-1"), "-1");
        assert_eq!(neutralise("\t=1"), "'\t=1");
        assert_eq!(neutralise("plain, \"quoted\""), "plain, \"quoted\"");
    }
}
