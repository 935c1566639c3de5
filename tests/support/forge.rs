//! Forged incidents: records written straight into a store with chosen
//! times and outcomes, for report tests with known figures and for
//! benchmarks of incidents far longer than a test could run. Every write
//! goes through `Store::commit`, as the engine's do, a chunk at a time.

use std::collections::BTreeMap;

use runbox_core::attempt::{ErrorCategory, StepError, ToolCall};
use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{
    Checkpoint, IncidentMeta, Owner, RecordOutcome, Status, StepRecord, TimelineEvent,
};
use runbox_core::tools::ToolMode;
use runbox_store::keys;
use runbox_store::{Batch, Expect, Records, Store};

/// Records per commit.
const CHUNK: usize = 4096;

/// An incident being forged.
pub struct Forge<'a> {
    store: &'a dyn Store,
    id: IncidentId,
    checkpoint: Checkpoint,
    pending: Records,
    committed: bool,
    status: Status,
    owner: Owner,
}

/// One attempt to forge.
pub struct Attempt<'a> {
    /// The step.
    pub step: &'a str,
    /// The attempt number.
    pub attempt: u32,
    /// How it ended.
    pub outcome: RecordOutcome,
    /// Start and end, ms since the epoch.
    pub span: (u64, u64),
    /// A tool call: name and return code.
    pub tool: Option<(&'a str, i32)>,
    /// An error category.
    pub error: Option<ErrorCategory>,
    /// The human who decided it (a human override), if one did.
    pub human: Option<&'a str>,
}

impl<'a> Forge<'a> {
    /// Opens incident `id` of `runbook` at `opened_ms`.
    pub fn open(store: &'a dyn Store, id: &str, runbook: &str, opened_ms: u64) -> Self {
        let id: IncidentId = id.parse().expect("a valid incident id");
        let mut forge = Forge {
            store,
            checkpoint: Checkpoint::first("diagnose"),
            id,
            pending: Records::default(),
            committed: false,
            status: Status::Open,
            owner: Owner::default_agent(),
        };
        let meta = IncidentMeta {
            id: forge.id.to_string(),
            runbook_name: runbook.to_string(),
            runbook_path: format!("/forged/{runbook}.toml"),
            runbook_text: format!("[runbook]\nname = \"{runbook}\"\n"),
            base_dir: "/forged".into(),
            tools_text: None,
            params: BTreeMap::from([("service".to_string(), "api".to_string())]),
            modules: BTreeMap::new(),
            opened_at_ms: opened_ms,
            opened_by: "agent:runbox".into(),
            signed_decisions: false,
            tools_sha256: BTreeMap::new(),
            seeded_kv: Vec::new(),
        };
        forge.put(keys::meta(&forge.id), &meta);
        let id = forge.id.clone();
        forge.put(keys::index(&id), &id);
        forge.event(opened_ms, "agent:runbox", EventKind::Opened, None, "opened");
        forge
    }

    fn put<T: serde::Serialize>(&mut self, key: keys::Key<T>, value: &T) {
        self.pending.put(key, value);
        if self.pending.len() >= CHUNK {
            self.flush();
        }
    }

    /// Appends an event.
    pub fn event(
        &mut self,
        at_ms: u64,
        actor: &str,
        kind: EventKind,
        at: Option<(&str, u32)>,
        message: &str,
    ) {
        let event = TimelineEvent {
            seq: self.checkpoint.next_seq,
            at_ms,
            actor: actor.into(),
            kind,
            step: at.map(|(s, _)| s.to_string()),
            attempt: at.map(|(_, a)| a),
            message: message.into(),
            signed: None,
        };
        self.checkpoint.next_seq += 1;
        self.put(keys::event(&self.id, event.seq), &event);
        if let Some(owner) = match kind {
            EventKind::Takeover => Some(forged_owner(actor)),
            EventKind::Escalated if actor.starts_with("human:") => Some(forged_owner(actor)),
            EventKind::Escalated => Some(Owner::on_call()),
            EventKind::Handback => Some(Owner::default_agent()),
            _ => None,
        } {
            self.owner = owner;
        }
    }

    /// Appends an attempt: its record and the event that committed it.
    pub fn attempt(&mut self, a: Attempt<'_>) {
        let actor = a
            .human
            .map_or("agent:runbox".to_string(), |h| format!("human:{h}"));
        let mut record = StepRecord::new(
            a.step.into(),
            a.step,
            a.attempt,
            a.outcome,
            actor.clone(),
            a.span.0,
        );
        record.ended_at_ms = a.span.1;
        record.human_override = a.human.is_some();
        record.tool_calls = a
            .tool
            .map(|(name, rc)| ToolCall {
                name: name.into(),
                mode: ToolMode::Read,
                rc,
                timed_out: false,
                error: None,
                duration_ms: 1,
                dry_run: false,
            })
            .into_iter()
            .collect();
        record.error = a
            .error
            .map(|c| StepError::new(c, format!("forged {}", c.as_str())));
        record.reason = (a.outcome != RecordOutcome::Ok).then(|| format!("forged {}", a.outcome));
        self.put(keys::step(&self.id, a.step, a.attempt), &record);
        // The event the engine commits such a record with.
        let kind = match (a.human, a.outcome) {
            (Some(_), _) => EventKind::HumanResolve,
            (None, RecordOutcome::InDoubt) => EventKind::InDoubt,
            (None, _) => EventKind::StepCommitted,
        };
        self.event(
            a.span.1,
            &actor,
            kind,
            Some((a.step, a.attempt)),
            &format!("{} {}", a.step, a.outcome),
        );
    }

    /// A wait for approval of `step`#`attempt` from `asked` to `approved` by `human`.
    pub fn approval(&mut self, step: &str, attempt: u32, asked: u64, approved: u64, human: &str) {
        let at = Some((step, attempt));
        self.event(
            asked,
            "agent:runbox",
            EventKind::ApprovalRequired,
            at,
            "approval required",
        );
        self.event(
            approved,
            &format!("human:{human}"),
            EventKind::Approved,
            at,
            "approved",
        );
    }

    /// Ends the incident with `status` at `at_ms`.
    pub fn end(&mut self, status: Status, at_ms: u64) {
        let kind = match status {
            Status::Resolved => EventKind::Resolved,
            Status::Failed => EventKind::Failed,
            Status::Escalated => EventKind::Escalated,
            _ => return,
        };
        self.status = status;
        self.event(at_ms, "agent:runbox", kind, None, status.as_str());
    }

    /// How many events it has so far.
    pub fn events(&self) -> u64 {
        self.checkpoint.next_seq
    }

    /// Commits what is pending.
    pub fn flush(&mut self) {
        let expected = if self.committed {
            Expect::Version(self.checkpoint.version)
        } else {
            Expect::Absent
        };
        self.checkpoint.version = expected.next_version();
        let mut batch = Batch::new(self.checkpoint.clone());
        batch.put_all(std::mem::take(&mut self.pending));
        batch.put(keys::status(&self.id), &self.status);
        batch.put(keys::owner(&self.id), &self.owner);
        self.store
            .commit(&self.id, expected, batch)
            .expect("a forged commit");
        self.committed = true;
    }

    /// Commits the rest.
    pub fn finish(mut self) {
        self.flush();
    }
}

/// The owner an event's actor makes: a forged history names real actors.
fn forged_owner(actor: &str) -> Owner {
    Owner::try_from(actor.to_string()).expect("a forged actor is an owner")
}
