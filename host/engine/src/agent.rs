//! What an agent may write besides running steps: a note on the timeline,
//! and handing the incident to humans. Both wait for a running attempt of
//! the incident to commit first (they take its run lock), so they never
//! break an attempt's fenced commit.
//!
//! Notes are commentary: they never void a pending human decision (see
//! [`crate::decision`]), and each author may add at most
//! [`MAX_NOTES_PER_WINDOW`] to an incident per [`NOTE_WINDOW_MS`], so no
//! agent buries the timeline a human reads. An escalation needs no limit of
//! its own: an escalated incident refuses another.

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::Owner;
use runbox_core::time::now_ms;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::change::{Change, escalation};
use crate::decision::refused;
use crate::run::Runs;
use crate::{Engine, EngineError, Result};
use runbox_incidents::parse_id;

/// The longest note or escalation reason, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// How many notes one author may add to one incident per [`NOTE_WINDOW_MS`]:
/// a running commentary, not a flood.
pub const MAX_NOTES_PER_WINDOW: usize = 10;

/// The window [`MAX_NOTES_PER_WINDOW`] counts over: a minute.
pub const NOTE_WINDOW_MS: u64 = 60_000;

/// How many of the newest events the note limit looks at: enough to find
/// an author's notes among others' events, bounded whatever the timeline.
const NOTE_LOOKBACK: usize = 8 * MAX_NOTES_PER_WINDOW;

impl Runs<'_> {
    /// Adds a note by `actor` (`agent:NAME`: a note is unsigned, so never
    /// a human's) to the timeline. At most [`MAX_NOTE_BYTES`].
    pub async fn note(self, id: &str, actor: &str, text: &str) -> Result<u64> {
        let id = parse_id(id)?;
        let actor = Owner::unsigned(actor).map_err(|message| EngineError::Refused {
            id: id.to_string(),
            message,
        })?;
        check_text(&id, "note", text)?;
        let lock = self.engine.run_lock(&id);
        let _guard = lock.lock().await;
        self.engine.check_note_rate(&id, &actor)?;
        let cp = self.engine.incidents.checkpoint(&id)?;
        let mut change = Change::default();
        change.event(&actor.to_string(), EventKind::Note, None, text.to_string());
        self.engine.apply(&id, &cp, change)?;
        Ok(cp.next_seq)
    }

    /// The agent `agent` (a name) hands the incident to humans with
    /// `reason`: it stops, escalated to `human:on-call`. Refused when the
    /// incident is over, already escalated, or owned by a human.
    pub async fn escalate(self, id: &str, agent: &str, reason: &str) -> Result<()> {
        let id = parse_id(id)?;
        let agent = Owner::Agent(
            runbox_core::ident::Name::new(agent).map_err(EngineError::invalid("agent name"))?,
        );
        check_text(&id, "reason", reason)?;
        let lock = self.engine.run_lock(&id);
        let _guard = lock.lock().await;
        let status = self.engine.incidents.status_of(&id)?;
        if status.is_terminal() {
            return Err(refused(&id, format!("the incident is {status}")));
        }
        if status == runbox_core::records::Status::Escalated {
            return Err(refused(&id, "it is escalated already"));
        }
        let owner = self.engine.incidents.owner_of(&id)?;
        if !owner.is_agent() {
            return Err(refused(&id, format!("{owner} owns it")));
        }
        let cp = self.engine.incidents.checkpoint(&id)?;
        let mut change = Change::default();
        let at = cp.step.as_deref().map(|s| (s, cp.attempt));
        escalation(
            &mut change,
            &agent.to_string(),
            at,
            format!("{agent} escalated: {reason}"),
        );
        self.engine.apply(&id, &cp, change)?;
        Ok(())
    }
}

impl Engine {
    /// Refuses a note by `actor` who added [`MAX_NOTES_PER_WINDOW`] to the
    /// incident within the last [`NOTE_WINDOW_MS`].
    fn check_note_rate(&self, id: &IncidentId, actor: &Owner) -> Result<()> {
        let since = now_ms().saturating_sub(NOTE_WINDOW_MS);
        let actor = actor.to_string();
        let newest = self
            .store
            .read_back(&keys::timeline(id), None, NOTE_LOOKBACK)?;
        let mut recent = 0;
        for (_, e) in &newest {
            if e.at_ms < since {
                break;
            }
            recent += usize::from(e.kind == EventKind::Note && e.actor == actor);
        }
        if recent >= MAX_NOTES_PER_WINDOW {
            return Err(refused(
                id,
                format!(
                    "{actor} added {recent} notes within the last {} s; at most {MAX_NOTES_PER_WINDOW}: wait, or say it in one note",
                    NOTE_WINDOW_MS / 1000
                ),
            ));
        }
        Ok(())
    }
}

fn check_text(id: &IncidentId, what: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(refused(id, format!("the {what} is empty")));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(refused(
            id,
            format!(
                "the {what} is {} bytes; at most {MAX_NOTE_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(())
}
