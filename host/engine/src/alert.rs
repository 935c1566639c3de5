//! What an alert group's later webhooks leave on its incident: an `alert`
//! event while it fires, `alert-resolved` when it resolves, each with the
//! group's [`AlertState`] in the same commit (`status` shows it). A
//! resolved alert never resolves the incident: the runbook's own verify
//! step does, or a human.

use runbox_core::alert::{AlertState, AlertStatus, Webhook};
use runbox_core::event::EventKind;
use runbox_core::records::Owner;
use runbox_core::time::now_ms;
use runbox_incidents::parse_id;
use runbox_store::StoreExt;
use runbox_store::keys;

use crate::change::Change;
use crate::decision::refused;
use crate::open::Opener;
use crate::{EngineError, Result};

impl Opener<'_> {
    /// Records `hook` (arriving through route `route`, posted by `actor`,
    /// an `agent:NAME`) on incident `id`: an `alert` or `alert-resolved`
    /// event and the group's new state, in one commit. Refused when the
    /// incident is over. Returns the event's sequence number.
    pub async fn alert_event(
        &self,
        id: &str,
        actor: &str,
        hook: &Webhook,
        route: &str,
    ) -> Result<u64> {
        let id = parse_id(id)?;
        let actor = Owner::unsigned(actor).map_err(|message| EngineError::Refused {
            id: id.to_string(),
            message,
        })?;
        // After a running attempt commits, as a note waits: never in the
        // middle of its fenced commit.
        let lock = self.engine.run_lock(&id);
        let _guard = lock.lock().await;
        let status = self.engine.incidents.status_of(&id)?;
        if status.is_terminal() {
            return Err(refused(&id, format!("the incident is {status}")));
        }
        let before: Option<AlertState> = self.engine.store.read(&keys::alert(&id))?;
        let cp = self.engine.incidents.checkpoint(&id)?;
        let mut change = Change::default();
        alert_change(
            &mut change,
            &id,
            &actor.to_string(),
            before.as_ref(),
            (hook, route),
        );
        self.engine.apply(&id, &cp, change)?;
        Ok(cp.next_seq)
    }

    /// Opens incident `id` for the first webhook of a group (arriving
    /// through route `route`): its `alert` event and the group's state are
    /// in the opening commit, so no reader ever sees the incident without
    /// the alert that opened it.
    pub fn open_for_alert(
        &self,
        id: &str,
        runbook_path: &std::path::Path,
        params: &std::collections::BTreeMap<String, String>,
        actor: &str,
        (hook, route): (&Webhook, &str),
    ) -> Result<runbox_core::records::IncidentMeta> {
        let incident = parse_id(id)?;
        let no_kv = std::collections::BTreeMap::new();
        self.engine
            .open_and(id, runbook_path, params, actor, &no_kv, |change, actor| {
                alert_change(change, &incident, actor, None, (hook, route));
            })
    }
}

/// Adds a webhook's event and the group's new state (after `before`) to
/// `change`.
fn alert_change(
    change: &mut Change,
    id: &runbox_core::ident::IncidentId,
    actor: &str,
    before: Option<&AlertState>,
    (hook, route): (&Webhook, &str),
) {
    let state = AlertState::after(before, hook, route, now_ms());
    let kind = match hook.status {
        AlertStatus::Firing => EventKind::Alert,
        AlertStatus::Resolved => EventKind::AlertResolved,
    };
    change.event(actor, kind, None, hook.describe());
    change.record(keys::alert(id), &state);
}
