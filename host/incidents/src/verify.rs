//! `runbox verify`: checks that an incident's records agree with each other.
//!
//! | check | violation when |
//! |---|---|
//! | records decode | meta, status, owner or checkpoint is missing or corrupt |
//! | timeline | sequence numbers are not exactly `0..checkpoint.next_seq` |
//! | step records | a committed record has no timeline event for its step and attempt |
//! | checkpoint | an open incident's next attempt already has a record, a resolved one still names a step, a running one has nothing in flight |
//! | step KV | a KV key is neither seeded at open (`open --kv`) nor among the writes of any committed record (a staged write of an uncommitted attempt leaked) |
//! | approvals | an approval names a step the runbook does not have |
//! | recordings | a replayable attempt's recording misses tool calls the record has, or has a schema this version does not know |
//! | decisions | a human's decision carries no signed statement, its signature does not verify against allowed_signers (tampered, or its key removed), or the statement is for another deployment, incident, action, step or human |
//!
//! An attempt in flight (started a mutation, nothing committed) is not a
//! violation: it is what a crash leaves, and it is *flagged* as in doubt.

use std::collections::BTreeSet;

use serde::Serialize;

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, IncidentMeta, Owner, Status, StepRecord, TimelineEvent};
use runbox_core::runbook::LoadedRunbook;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::{Incidents, ReadError, parse_id};

/// What `verify` found for one incident.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The incident.
    pub id: String,
    /// Inconsistencies: each one is a bug or damage.
    pub violations: Vec<String>,
    /// Things a human should know that are not inconsistencies (in-doubt attempts).
    pub flags: Vec<String>,
    /// Step records checked.
    pub records: usize,
    /// Timeline events checked.
    pub events: usize,
    /// KV keys checked.
    pub kv_keys: usize,
}

impl VerifyReport {
    /// Whether no violation was found.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Verifies one incident. Store errors (unreadable records) become violations.
pub fn verify(incidents: &Incidents, id: &str) -> Result<VerifyReport, ReadError> {
    let id = &parse_id(id)?;
    let store = incidents.store();
    let mut report = VerifyReport {
        id: id.to_string(),
        ..VerifyReport::default()
    };
    let meta: Option<IncidentMeta> = store.read(&keys::meta(id))?;
    let Some(meta) = meta else {
        return Err(ReadError::UnknownIncident(id.to_string()));
    };
    let mut need = |what: &str, ok: bool| {
        if !ok {
            report
                .violations
                .push(format!("the {what} record is missing"));
        }
        ok
    };
    let status: Option<Status> = store.read(&keys::status(id))?;
    let owner: Option<Owner> = store.read(&keys::owner(id))?;
    let cp: Option<Checkpoint> = store.read(&keys::checkpoint(id))?;
    let (has_status, has_owner, has_cp) = (
        need("status", status.is_some()),
        need("owner", owner.is_some()),
        need("checkpoint", cp.is_some()),
    );
    let (Some(status), Some(cp)) = (status.filter(|_| has_status), cp.filter(|_| has_cp)) else {
        return Ok(report);
    };
    let _ = has_owner;
    let events: Vec<TimelineEvent> = store
        .read_all(&keys::timeline(id))?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let records: Vec<StepRecord> = store
        .read_all(&keys::steps(id))?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    report.events = events.len();
    report.records = records.len();
    check_timeline(&mut report, &events, &cp);
    check_records(&mut report, &records, &events);
    check_recordings(&mut report, &records);
    check_checkpoint(&mut report, id, status, &cp, &records);
    check_kv(incidents, &mut report, id, &meta, &records)?;
    check_approvals(incidents, &mut report, id, &meta)?;
    check_outbox(incidents, &mut report, id, &events)?;
    let deployments = incidents.known_deployments()?;
    let trust = (&incidents.signers()?, deployments.as_slice());
    check_decisions(&mut report, id, &meta, &events, trust);
    Ok(report)
}

/// A recording marked complete must hold every tool call its record made.
fn check_recordings(report: &mut VerifyReport, records: &[StepRecord]) {
    use runbox_core::recording::{RECORDING_SCHEMA, Seen};
    for r in records {
        let Some(rec) = &r.recording else { continue };
        let at = format!("attempt {} of `{}`", r.attempt, r.step);
        if rec.schema != RECORDING_SCHEMA {
            report.violations.push(format!(
                "{at}: recording schema `{}` is unknown",
                rec.schema
            ));
            continue;
        }
        if !rec.complete {
            continue;
        }
        let calls = rec
            .events
            .iter()
            .filter(|e| matches!(e, Seen::Tool { .. }))
            .count();
        if calls != r.tool_calls.len() {
            report.violations.push(format!(
                "{at}: its recording holds {calls} tool calls but the record {}: not replayable as marked",
                r.tool_calls.len()
            ));
        }
    }
}

/// Every human decision in the timeline re-verified offline.
fn check_decisions(
    report: &mut VerifyReport,
    id: &IncidentId,
    meta: &IncidentMeta,
    events: &[TimelineEvent],
    (signers, deployments): (&runbox_trust::AllowedSigners, &[String]),
) {
    let mut nonces: BTreeSet<String> = BTreeSet::new();
    for e in events.iter().filter(|e| e.kind.is_human_decision()) {
        let at = format!("event {} ({} by {})", e.seq, e.kind, e.actor);
        let Some(signed) = &e.signed else {
            if meta.signed_decisions {
                report
                    .violations
                    .push(format!("{at} carries no signed statement"));
            }
            continue;
        };
        match signers.verify(&runbox_trust::Decision::from(signed)) {
            Err(err) => report
                .violations
                .push(format!("{at}: its signature does not verify: {err}")),
            Ok(v) => {
                let audience = v.statement.audience.as_ref();
                if let Some(a) = audience.filter(|a| !deployments.contains(a)) {
                    report.violations.push(format!(
                        "{at}: the signed statement is for deployment {a}, not this one ({})",
                        deployments.last().map_or("none made yet", String::as_str)
                    ));
                }
                if let Some(wrong) = statement_mismatch(id, e, &v.statement) {
                    report
                        .violations
                        .push(format!("{at}: the signed statement {wrong}"));
                }
                if !nonces.insert(v.statement.nonce.clone()) {
                    report.violations.push(format!(
                        "{at}: its signed statement was used for an earlier decision too"
                    ));
                }
            }
        }
    }
}

/// How a verified statement disagrees with the event it is stored on.
fn statement_mismatch(
    id: &IncidentId,
    e: &TimelineEvent,
    s: &runbox_trust::Statement,
) -> Option<String> {
    use runbox_trust::Action;
    let action = match e.kind {
        EventKind::Approved => Action::Approve,
        EventKind::Denied => Action::Deny,
        EventKind::Takeover => Action::Takeover,
        EventKind::Handback => Action::Handback,
        EventKind::HumanResolve => Action::Resolve,
        EventKind::HumanRetry => Action::Retry,
        EventKind::BrakeReleased => Action::ReleaseBrake,
        _ => Action::Skip,
    };
    // A brake's release names no incident: it reopens each one it held.
    let for_incident = match action {
        Action::ReleaseBrake => s.incident.is_none(),
        _ => s.incident.as_deref() == Some(id.as_str()),
    };
    if !for_incident {
        return Some(format!("is for incident {:?}", s.incident));
    }
    if s.action != action {
        return Some(format!("is a `{}`, not a `{action}`", s.action));
    }
    if e.actor != format!("human:{}", s.signer) {
        return Some(format!("is signed by {}", s.signer));
    }
    if e.step.is_some() && s.step.is_some() && e.step != s.step {
        return Some(format!("is for step {:?}", s.step));
    }
    // A retry's event names the attempt it asks for, the statement the one it settles.
    if e.kind != EventKind::HumanRetry
        && e.attempt.is_some()
        && s.attempt.is_some()
        && e.attempt != s.attempt
    {
        return Some(format!("is for attempt {:?}", s.attempt));
    }
    None
}

fn check_timeline(report: &mut VerifyReport, events: &[TimelineEvent], cp: &Checkpoint) {
    for (expected, event) in events.iter().enumerate() {
        if event.seq != expected as u64 {
            report.violations.push(format!(
                "timeline gap: event {} found where {expected} was expected",
                event.seq
            ));
            return;
        }
    }
    if events.len() as u64 != cp.next_seq {
        report.violations.push(format!(
            "timeline has {} events but the checkpoint expects {}",
            events.len(),
            cp.next_seq
        ));
    }
}

fn check_records(report: &mut VerifyReport, records: &[StepRecord], events: &[TimelineEvent]) {
    for r in records {
        let has_event = events.iter().any(|e| {
            e.step.as_deref() == Some(r.step.as_str())
                && (e.attempt == Some(r.attempt) || e.kind == EventKind::HumanRetry)
                && e.kind.commits_record()
        });
        if !has_event {
            report.violations.push(format!(
                "step record `{}` attempt {} has no timeline event",
                r.step, r.attempt
            ));
        }
    }
}

fn check_checkpoint(
    report: &mut VerifyReport,
    id: &IncidentId,
    status: Status,
    cp: &Checkpoint,
    records: &[StepRecord],
) {
    if let Some(f) = &cp.in_flight {
        report.flags.push(format!(
            "attempt {} of `{}` is in doubt: it started mutating tool `{}` and nothing was committed",
            f.attempt, f.step, f.tool
        ));
    }
    let recorded = |step: &str, attempt: u32| {
        records
            .iter()
            .any(|r| r.step == step && r.attempt == attempt)
    };
    match (status, &cp.step) {
        (Status::Resolved, Some(step)) => report.violations.push(format!(
            "incident `{id}` is resolved but the checkpoint still names step `{step}`"
        )),
        (Status::Running, _) if cp.in_flight.is_none() => report
            .violations
            .push("status is running but no attempt is in flight".into()),
        (Status::Open | Status::AwaitingApproval, Some(step)) if recorded(step, cp.attempt) => {
            report.violations.push(format!(
                "the checkpoint's next attempt ({step} #{}) already has a committed record",
                cp.attempt
            ));
        }
        (Status::Open | Status::AwaitingApproval | Status::Running, None) => {
            report.violations.push(format!(
                "status is {status} but the checkpoint names no step"
            ));
        }
        _ => {}
    }
}

/// Every KV key is a write of the incident's own: the seed of its opening
/// commit, or a committed step record's.
fn check_kv(
    incidents: &Incidents,
    report: &mut VerifyReport,
    id: &IncidentId,
    meta: &IncidentMeta,
    records: &[StepRecord],
) -> Result<(), ReadError> {
    let written: BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.kv_keys.iter().map(String::as_str))
        .chain(meta.seeded_kv.iter().map(String::as_str))
        .collect();
    let kv = incidents.store().kv_scan(id)?;
    report.kv_keys = kv.len();
    for (key, _) in kv {
        if !written.contains(key.as_str()) {
            report.violations.push(format!(
                "KV key `{key}` is neither seeded at open nor a write of any committed step record"
            ));
        }
    }
    Ok(())
}

/// Every outbox entry tells of an event on the timeline, of the kind it
/// says: an entry is written only with its event, in the same commit.
fn check_outbox(
    incidents: &Incidents,
    report: &mut VerifyReport,
    id: &IncidentId,
    events: &[TimelineEvent],
) -> Result<(), ReadError> {
    use runbox_core::notify::NotifyEvent;
    let entries = incidents.store().read_all(&keys::outbox(id))?;
    for (key, entry) in entries {
        let told = events
            .iter()
            .find(|e| e.seq == entry.seq)
            .and_then(|e| NotifyEvent::of(e.kind));
        if told != Some(entry.event) || entry.incident != id.as_str() {
            report.violations.push(format!(
                "outbox entry `{key}` tells of `{}` at event {}, which the timeline does not hold",
                entry.event, entry.seq
            ));
        }
    }
    Ok(())
}

fn check_approvals(
    incidents: &Incidents,
    report: &mut VerifyReport,
    id: &IncidentId,
    meta: &IncidentMeta,
) -> Result<(), ReadError> {
    let approvals = incidents.store().read_all(&keys::approvals(id))?;
    let runbook = LoadedRunbook::parse(
        &meta.runbook_text,
        meta.runbook_path.as_ref(),
        meta.base_dir.clone().into(),
    );
    for (_, a) in approvals {
        if let Ok(rb) = &runbook
            && rb.step(&a.step).is_none()
        {
            report.violations.push(format!(
                "approval by {} names unknown step `{}`",
                a.by, a.step
            ));
        }
    }
    if let Err(e) = runbook {
        report
            .violations
            .push(format!("the recorded runbook no longer parses: {e}"));
    }
    Ok(())
}
