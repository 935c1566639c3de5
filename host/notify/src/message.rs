//! What a notification says: one [`Notice`] built from the incident's
//! records, and the three bodies made from it (the webhook's JSON, Slack's
//! blocks, PagerDuty's Events API v2 event).
//!
//! Every text that came from outside runbox (an agent's escalation reason, a
//! step's output quoted in an event, alert labels) is hostile: it is
//! stripped of control characters, cut to a length, and carried where the
//! receiver shows it as text (a JSON string; Slack `plain_text`, which is
//! never parsed for mentions or links), apart from what runbox itself says.

use std::collections::BTreeMap;

use runbox_core::alert::UnroutedAlert;
use runbox_core::notify::{NotifyEvent, OutboxEntry};
use runbox_core::records::{Owner, Status, TimelineEvent};
use runbox_incidents::Incidents;
use runbox_store::StoreExt;
use serde::Serialize;
use serde_json::json;

use crate::NotifyError;

/// The schema name of the webhook body.
pub const NOTICE_SCHEMA: &str = "runbox.notification/v1";
/// The longest recorded text carried in a notice, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// What a notification tells, whatever the sink (the webhook body).
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// [`NOTICE_SCHEMA`].
    pub schema: &'static str,
    /// The outbox entry's id, the same on every delivery (`Idempotency-Key`).
    pub id: String,
    /// What happened.
    pub event: NotifyEvent,
    /// When it was committed (ms since epoch).
    pub at_ms: u64,
    /// The incident, as it stands when the notice is sent (none for
    /// `alert-unrouted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentPart>,
    /// The alert group no route took (`alert-unrouted` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<UnroutedAlert>,
    /// The event's message as recorded, written by `actor`.
    pub message: String,
    /// Who wrote `message`: `agent:NAME` text is the agent's, not runbox's.
    pub actor: String,
    /// What is asked of the reader.
    pub asked: &'static str,
    /// The commands that act on it, to copy.
    pub commands: Vec<String>,
}

/// The incident a notice is about.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentPart {
    /// Its id.
    pub id: String,
    /// Its runbook.
    pub runbook: String,
    /// Its params.
    pub params: BTreeMap<String, String>,
    /// Its status now.
    pub status: Status,
    /// Who owns it now.
    pub owner: Owner,
    /// The step the event is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Its attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl Notice {
    /// The notice of `entry`, from the incident's records (or the
    /// unrouted alert's).
    pub fn of(incidents: &Incidents, entry: &OutboxEntry) -> Result<Notice, NotifyError> {
        if let Some(key) = &entry.unrouted {
            return Notice::of_unrouted(incidents, entry, key);
        }
        let id = entry.incident_id().ok_or_else(|| NotifyError::Entry {
            id: entry.id(),
            message: "names no valid incident".into(),
        })?;
        let event: TimelineEvent = incidents
            .store()
            .read(&runbox_store::keys::event(&id, entry.seq))?
            .ok_or_else(|| NotifyError::Entry {
                id: entry.id(),
                message: format!("its event {} is not on the timeline", entry.seq),
            })?;
        let meta = incidents.meta(&id)?;
        let incident = IncidentPart {
            id: id.to_string(),
            runbook: meta.runbook_name,
            params: meta.params,
            status: incidents.status_of(&id)?,
            owner: incidents.owner_of(&id)?,
            step: event.step.clone(),
            attempt: event.attempt,
        };
        Ok(Notice {
            schema: NOTICE_SCHEMA,
            id: entry.id(),
            event: entry.event,
            at_ms: event.at_ms,
            commands: commands(entry.event, Some(&incident)),
            asked: asked(entry.event),
            message: clean(&event.message),
            actor: event.actor,
            incident: Some(incident),
            alert: None,
        })
    }

    fn of_unrouted(
        incidents: &Incidents,
        entry: &OutboxEntry,
        key: &str,
    ) -> Result<Notice, NotifyError> {
        let missing = || NotifyError::Entry {
            id: entry.id(),
            message: format!("its unrouted alert `{key}` is not recorded"),
        };
        let key = runbox_store::keys::unrouted_alert_named(key).ok_or_else(missing)?;
        let mut alert = incidents.store().meta_read(&key)?.ok_or_else(missing)?;
        alert.reason = clean(&alert.reason);
        Ok(Notice {
            schema: NOTICE_SCHEMA,
            id: entry.id(),
            event: entry.event,
            at_ms: alert.received_ms,
            commands: commands(entry.event, None),
            asked: asked(entry.event),
            message: clean(&format!("an alert group no route took: {}", alert.reason)),
            actor: alert.by.clone(),
            incident: None,
            alert: Some(alert),
        })
    }

    /// A sample notice for `runbox notify test`.
    pub fn sample(sink: &str) -> Notice {
        let incident = IncidentPart {
            id: "TEST-1".into(),
            runbook: "sample".into(),
            params: BTreeMap::new(),
            status: Status::Escalated,
            owner: Owner::on_call(),
            step: Some("check".into()),
            attempt: Some(1),
        };
        Notice {
            schema: NOTICE_SCHEMA,
            id: format!("test:{}:{sink}", runbox_core::time::now_ms()),
            event: NotifyEvent::Escalated,
            at_ms: runbox_core::time::now_ms(),
            commands: commands(NotifyEvent::Escalated, Some(&incident)),
            asked: "Nothing: this is `runbox notify test`, checking the sink is reachable.",
            message: "a test notification from `runbox notify test`".into(),
            actor: "runbox".into(),
            incident: Some(incident),
            alert: None,
        }
    }

    /// What it is about: `INC-7 (api-outage)`, or `an alert group`.
    fn subject(&self) -> String {
        match &self.incident {
            Some(inc) => inc.id.clone(),
            None => "alert group".into(),
        }
    }

    /// One line: `INC-7 escalated (api-outage): why`.
    pub fn summary(&self, max: usize) -> String {
        let runbook = self
            .incident
            .as_ref()
            .map_or("no runbook", |i| i.runbook.as_str());
        let line = format!(
            "{} {} ({runbook}): {}",
            self.subject(),
            self.event,
            self.message
        );
        truncate(&line, max)
    }

    /// The webhook body.
    pub fn webhook_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a notice always serializes")
    }

    /// A Slack incoming-webhook message: runbox's own words in mrkdwn,
    /// recorded text in `plain_text` (never parsed for mentions).
    pub fn slack_body(&self) -> Vec<u8> {
        let field = |name: &str, value: String| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")});
        let fields = match &self.incident {
            Some(inc) => {
                let step = match (&inc.step, inc.attempt) {
                    (Some(s), Some(a)) => format!("`{s}` (attempt {a})"),
                    (Some(s), None) => format!("`{s}`"),
                    _ => "none".into(),
                };
                vec![
                    field("Status", inc.status.to_string()),
                    field("Owner", format!("`{}`", inc.owner)),
                    field("Runbook", format!("`{}`", inc.runbook)),
                    field("Step", step),
                ]
            }
            None => vec![field("Event", self.event.to_string())],
        };
        let title = format!("{}: {}", self.subject(), self.event);
        let commands = self.commands.join("\n");
        let body = json!({
            "text": truncate(&format!("runbox: {title}"), 150),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150)}},
                {"type": "section", "fields": fields},
                {"type": "section", "text": {"type": "plain_text", "text": truncate(&format!("{} wrote: {}", self.actor, self.message), 3000)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*Asked of you:* {}\n```{commands}```", self.asked)}},
            ],
        });
        serde_json::to_vec(&body).expect("a message always serializes")
    }

    /// A PagerDuty Events API v2 event: `trigger` for what needs a human,
    /// `acknowledge` when one takes over, `resolve` when the incident is;
    /// one PagerDuty incident per runbox incident (`dedup_key`).
    pub fn pagerduty_body(&self, routing_key: &str) -> Vec<u8> {
        let action = pagerduty_action(self.event);
        let Some(inc) = &self.incident else {
            // `notify.toml` refuses `alert-unrouted` for PagerDuty; an entry
            // without an incident pages about the deployment.
            return serde_json::to_vec(&json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "payload": {"summary": self.summary(1024), "source": "runbox", "severity": "warning"},
            }))
            .expect("an event always serializes");
        };
        let mut body = json!({
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": inc.id,
        });
        if action == "trigger" {
            body["payload"] = json!({
                "summary": self.summary(1024),
                "source": format!("runbox/{}", inc.runbook),
                "severity": if self.event == NotifyEvent::Limited { "warning" } else { "critical" },
                "component": inc.params.get("service").cloned().unwrap_or_default(),
                "group": inc.runbook,
                "class": self.event.as_str(),
                "custom_details": {
                    "notification": self.id,
                    "status": inc.status,
                    "owner": inc.owner.to_string(),
                    "step": inc.step,
                    "attempt": inc.attempt,
                    "params": inc.params,
                    "written_by": self.actor,
                    "message": self.message,
                    "asked": self.asked,
                    "commands": self.commands,
                },
            });
        }
        serde_json::to_vec(&body).expect("an event always serializes")
    }
}

/// What PagerDuty is asked to do for `event`.
pub fn pagerduty_action(event: NotifyEvent) -> &'static str {
    match event {
        NotifyEvent::Takeover => "acknowledge",
        NotifyEvent::Resolved => "resolve",
        NotifyEvent::ApprovalRequired
        | NotifyEvent::Escalated
        | NotifyEvent::InDoubt
        | NotifyEvent::BrakeEngaged
        | NotifyEvent::Limited
        | NotifyEvent::AlertUnrouted => "trigger",
    }
}

fn asked(event: NotifyEvent) -> &'static str {
    match event {
        NotifyEvent::ApprovalRequired => {
            "A human named in allowed_signers approves or denies the step: it will not run until one does."
        }
        NotifyEvent::Escalated => {
            "A human takes the incident over, looks at why it stopped, and settles, resolves or hands it back."
        }
        NotifyEvent::InDoubt => {
            "A human settles the attempt: it may have changed the world before runbox lost it, so it is never re-run on its own."
        }
        NotifyEvent::BrakeEngaged => {
            "A human checks what tripped the brake and releases it when mutating is safe again."
        }
        NotifyEvent::Limited => {
            "Nothing yet: a rate limit holds a mutating step. Look if it keeps waiting."
        }
        NotifyEvent::Resolved => "Nothing: the incident is resolved.",
        NotifyEvent::Takeover => "Nothing: a human has the incident.",
        NotifyEvent::AlertUnrouted => {
            "Add a route for this alert to routes.toml, or open an incident by hand."
        }
    }
}

/// The commands that act on `event`; ids and step names are identifiers
/// (no spaces, no shell characters), so each line copies as it is.
fn commands(event: NotifyEvent, inc: Option<&IncidentPart>) -> Vec<String> {
    let Some(inc) = inc else {
        return vec!["runbox alerts".into()];
    };
    let id = &inc.id;
    let status = format!("runbox status {id}");
    let step = inc.step.as_deref().unwrap_or("STEP");
    match event {
        NotifyEvent::ApprovalRequired => vec![
            status,
            format!("runbox approve {id} {step} --as YOU"),
            format!("runbox deny {id} {step} --as YOU"),
        ],
        NotifyEvent::Escalated => vec![
            status,
            format!("runbox timeline {id}"),
            format!("runbox takeover {id} --as YOU"),
        ],
        NotifyEvent::InDoubt => vec![
            status,
            format!("runbox resolve {id} --step {step} --outcome ok --as YOU"),
            format!("runbox retry {id} --step {step} --as YOU"),
            format!("runbox skip {id} --step {step} --as YOU"),
        ],
        NotifyEvent::BrakeEngaged => vec!["runbox brake list".into(), status],
        NotifyEvent::Limited => vec![status, "runbox limits".into()],
        NotifyEvent::Resolved => vec![format!("runbox report {id}")],
        NotifyEvent::Takeover => vec![status],
        NotifyEvent::AlertUnrouted => vec!["runbox alerts".into()],
    }
}

/// Recorded text as a notice carries it: inert by the one rule every
/// output uses (`runbox_core::inert`: no control or invisible character,
/// a newline shown as `⏎`), at most [`MAX_TEXT_CHARS`].
pub fn clean(text: &str) -> String {
    truncate(&runbox_core::inert::inert(text), MAX_TEXT_CHARS)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > max => format!("{}…", &text[..cut]),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn hostile_text_is_flattened_and_cut() {
        let shown = clean("a\nb\u{1b}[31mc\u{202e}d");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.starts_with("a⏎b"), "{shown}");
        let long = "x".repeat(MAX_TEXT_CHARS + 5);
        assert_eq!(clean(&long).chars().count(), MAX_TEXT_CHARS);
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("hé", 3), "hé");
    }

    #[test]
    fn slack_never_puts_recorded_text_in_mrkdwn() {
        let mut notice = Notice::sample("s");
        notice.message = "<!channel> *urgent* <https://evil|click>".into();
        let body: Value = serde_json::from_slice(&notice.slack_body()).unwrap();
        for block in body["blocks"].as_array().unwrap() {
            let text = &block["text"];
            if text["type"] == "mrkdwn" {
                assert!(
                    !text["text"].as_str().unwrap().contains("<!channel>"),
                    "{block}"
                );
            }
        }
        assert!(
            body.to_string().contains("<!channel>"),
            "the text is shown, as plain text"
        );
    }

    #[test]
    fn pagerduty_maps_takeover_and_resolve() {
        let mut notice = Notice::sample("p");
        let body: Value = serde_json::from_slice(&notice.pagerduty_body("R")).unwrap();
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], "TEST-1");
        assert!(body["payload"]["summary"].as_str().unwrap().len() <= 1024 * 4);
        notice.event = NotifyEvent::Takeover;
        let body: Value = serde_json::from_slice(&notice.pagerduty_body("R")).unwrap();
        assert_eq!(body["event_action"], "acknowledge");
        assert!(body.get("payload").is_none());
    }
}
