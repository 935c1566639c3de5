//! Alerts in: Alertmanager's webhook payload (version "4"), checked
//! against limits before anything reads it, and the records an alert
//! leaves: an incident's [`AlertState`], an [`UnroutedAlert`] in the meta
//! plane, and the incident id a group key maps to.
//!
//! Every string of a payload came from outside (label values reach
//! timelines, pages and terminals): it is bounded here and shown through
//! [`crate::inert`] wherever a human reads it.
//!
//! ```
//! use runbox_core::alert::{Webhook, incident_id};
//!
//! let body = br#"{"version": "4", "status": "firing", "receiver": "runbox",
//!   "groupKey": "{}:{alertname=\"ApiDown\"}", "commonLabels": {"alertname": "ApiDown"},
//!   "alerts": [{"status": "firing", "labels": {"alertname": "ApiDown"}, "fingerprint": "f1"}]}"#;
//! let hook = Webhook::parse(body)?;
//! assert_eq!(hook.alerts.len(), 1);
//! let id = incident_id("api", &hook.group_key, 1);
//! assert!(id.as_str().starts_with("ALERT-"));
//! assert_eq!(incident_id("api", &hook.group_key, 2).as_str(), format!("{id}-2"));
//! # Ok::<(), runbox_core::alert::WebhookError>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ident::IncidentId;

/// The largest webhook body `POST /v1/alerts` reads: 1 MiB. Alertmanager
/// sends every alert of a group in one body; a receiver's `max_alerts`
/// keeps a huge group under it (the rest is counted in `truncatedAlerts`).
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// The most alerts one webhook may carry.
pub const MAX_ALERTS: usize = 1000;
/// The most labels (or annotations) in one set.
pub const MAX_LABELS: usize = 64;
/// The longest label or annotation name, in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// The longest annotation value, in bytes (a description may be a paragraph).
pub const MAX_ANNOTATION_BYTES: usize = 4096;
/// The longest group key, receiver, URL or other text field, in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;
/// The webhook payload version runbox reads.
pub const WEBHOOK_VERSION: &str = "4";

/// Whether an alert (or a group) fires or is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// It fires.
    Firing,
    /// It stopped firing.
    Resolved,
}

impl AlertStatus {
    /// Its name, as Alertmanager spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Labels or annotations: name to value.
pub type Labels = BTreeMap<String, String>;

/// Alertmanager's webhook payload, version "4". Unknown fields are
/// ignored: Alertmanager adds fields within a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// The payload version: [`WEBHOOK_VERSION`].
    pub version: String,
    /// The receiver's name in Alertmanager's configuration.
    #[serde(default)]
    pub receiver: String,
    /// `firing` while any alert of the group fires.
    pub status: AlertStatus,
    /// The group's alerts.
    pub alerts: Vec<Alert>,
    /// The labels the group is grouped by.
    #[serde(default)]
    pub group_labels: Labels,
    /// The labels every alert of the group has.
    #[serde(default)]
    pub common_labels: Labels,
    /// The annotations every alert of the group has.
    #[serde(default)]
    pub common_annotations: Labels,
    /// Alertmanager's URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// The group's key: the same for every notification of the group.
    pub group_key: String,
    /// How many alerts the receiver's `max_alerts` left out.
    #[serde(default)]
    pub truncated_alerts: u64,
}

/// One alert of a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: AlertStatus,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Its annotations.
    #[serde(default)]
    pub annotations: Labels,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub starts_at: String,
    /// When it ended (RFC 3339; Alertmanager's zero time while firing).
    #[serde(default)]
    pub ends_at: String,
    /// The URL of what fired it.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's fingerprint of its labels.
    #[serde(default)]
    pub fingerprint: String,
}

/// Why a webhook body is refused. Nothing is written for one.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not JSON, or not the payload's shape.
    #[error("the body is not an Alertmanager webhook payload: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Another payload version.
    #[error("webhook payload version {0} is not supported: runbox reads version \"4\"")]
    Version(String),
    /// A limit is exceeded or a field is empty.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`alerts[3].labels`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The version alone, read before the rest: another version's payload
/// is refused for its version, not for a shape it need not have.
#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default)]
    version: serde_json::Value,
}

impl Webhook {
    /// Parses and checks a webhook body (the caller caps its size at
    /// [`MAX_WEBHOOK_BYTES`]).
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let VersionOnly { version } =
            serde_json::from_slice(body).map_err(WebhookError::Malformed)?;
        if version.as_str() != Some(WEBHOOK_VERSION) {
            let mut shown = version.to_string();
            shown.truncate(crate::inert::SHOWN_CHARS);
            return Err(WebhookError::Version(shown));
        }
        let hook: Webhook = serde_json::from_slice(body).map_err(WebhookError::Malformed)?;
        hook.check()?;
        Ok(hook)
    }

    /// Checks every limit; the first broken one is named.
    fn check(&self) -> Result<(), WebhookError> {
        if self.alerts.is_empty() || self.alerts.len() > MAX_ALERTS {
            return Err(invalid(
                "alerts",
                format!("{} alerts; 1..={MAX_ALERTS}", self.alerts.len()),
            ));
        }
        if self.group_key.is_empty() {
            return Err(invalid("groupKey", "empty".into()));
        }
        for (field, text) in [
            ("groupKey", &self.group_key),
            ("receiver", &self.receiver),
            ("externalURL", &self.external_url),
        ] {
            check_text(field, text)?;
        }
        check_labels("groupLabels", &self.group_labels, MAX_LABEL_VALUE_BYTES)?;
        check_labels("commonLabels", &self.common_labels, MAX_LABEL_VALUE_BYTES)?;
        check_labels(
            "commonAnnotations",
            &self.common_annotations,
            MAX_ANNOTATION_BYTES,
        )?;
        for (i, alert) in self.alerts.iter().enumerate() {
            alert.check(&format!("alerts[{i}]"))?;
        }
        Ok(())
    }

    /// The fingerprints of the group's alerts, in order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.alerts.iter().map(|a| a.fingerprint.clone()).collect()
    }

    /// How many of the alerts fire.
    pub fn firing(&self) -> usize {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .count()
    }

    /// One line for the timeline: status, counts, the alert name and the
    /// summary. Raw (outside) text, shown inert by every output; bounded
    /// by the field limits above.
    pub fn describe(&self) -> String {
        let name = self
            .common_labels
            .get("alertname")
            .map(|n| format!(" `{}`", clip(n, 128)))
            .unwrap_or_default();
        let mut line = format!(
            "alert{name} {}: {} firing, {} resolved",
            self.status,
            self.firing(),
            self.alerts.len() - self.firing(),
        );
        if self.truncated_alerts > 0 {
            line.push_str(&format!(", {} truncated", self.truncated_alerts));
        }
        let summary = ["summary", "description"]
            .iter()
            .find_map(|k| self.common_annotations.get(*k));
        if let Some(summary) = summary {
            line.push_str(&format!("; {}", clip(summary, 512)));
        }
        line
    }
}

impl Alert {
    fn check(&self, at: &str) -> Result<(), WebhookError> {
        check_labels(&format!("{at}.labels"), &self.labels, MAX_LABEL_VALUE_BYTES)?;
        check_labels(
            &format!("{at}.annotations"),
            &self.annotations,
            MAX_ANNOTATION_BYTES,
        )?;
        for (field, text) in [
            ("startsAt", &self.starts_at),
            ("endsAt", &self.ends_at),
            ("generatorURL", &self.generator_url),
            ("fingerprint", &self.fingerprint),
        ] {
            check_text(&format!("{at}.{field}"), text)?;
        }
        Ok(())
    }
}

fn invalid(field: &str, message: String) -> WebhookError {
    WebhookError::Invalid {
        field: field.to_string(),
        message,
    }
}

fn check_text(field: &str, text: &str) -> Result<(), WebhookError> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(invalid(
            field,
            format!("{} bytes; at most {MAX_FIELD_BYTES}", text.len()),
        ));
    }
    Ok(())
}

fn check_labels(field: &str, labels: &Labels, max_value: usize) -> Result<(), WebhookError> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            field,
            format!("{} entries; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (name, value) in labels {
        // A name is a key in messages and templates: no control characters.
        if name.is_empty()
            || name.len() > MAX_LABEL_NAME_BYTES
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                field,
                format!(
                    "name {:?}: 1..={MAX_LABEL_NAME_BYTES} bytes, no control characters",
                    clip(name, 64)
                ),
            ));
        }
        if value.len() > max_value {
            return Err(invalid(
                &format!("{field}.{}", clip(name, 64)),
                format!("{} bytes; at most {max_value}", value.len()),
            ));
        }
    }
    Ok(())
}

/// `text` cut to at most `max` characters, with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The most incidents one alert group opens over time: generation 2 is
/// the incident opened when the group fired again after its first
/// incident was over, and so on.
pub const MAX_GENERATIONS: u32 = 1000;

/// The incident a route opens for an alert group: `ALERT-` and 12 hex
/// digits of sha256(route name, group key), so the same group through
/// the same route is always the same incident (a re-sent webhook finds
/// it); generation `n > 1` adds `-n`.
pub fn incident_id(route: &str, group_key: &str, generation: u32) -> IncidentId {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    // A separator no route name holds: ("a", "bc") and ("ab", "c") differ.
    hash.update([0u8]);
    hash.update(group_key.as_bytes());
    let digest = hex::encode(&hash.finalize()[..6]);
    let id = match generation {
        0 | 1 => format!("ALERT-{digest}"),
        n => format!("ALERT-{digest}-{n}"),
    };
    IncidentId::new(&id).expect("ALERT-, hex digits and a number make a valid incident id")
}

/// The alert group behind an incident, as it stands: `status` shows it.
/// Written in the same commit as each `alert` and `alert-resolved` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AlertState {
    /// The group's status in the newest webhook.
    pub status: AlertStatus,
    /// When that webhook arrived, ms since the epoch.
    pub at_ms: u64,
    /// The route that opened the incident.
    pub route: String,
    /// Alertmanager's group key.
    pub group_key: String,
    /// How many of its alerts fire.
    pub firing: u32,
    /// How many of its alerts are resolved.
    pub resolved: u32,
    /// How many webhooks of the group this incident has seen.
    pub notifications: u32,
}

impl AlertState {
    /// The state after `hook`, arriving at `at_ms` through `route`,
    /// following `before` (none: the first).
    pub fn after(before: Option<&AlertState>, hook: &Webhook, route: &str, at_ms: u64) -> Self {
        let firing = hook.firing();
        AlertState {
            status: hook.status,
            at_ms,
            route: route.to_string(),
            group_key: hook.group_key.clone(),
            firing: firing as u32,
            resolved: (hook.alerts.len() - firing) as u32,
            notifications: before.map_or(1, |b| b.notifications.saturating_add(1)),
        }
    }
}

/// An alert group no route took (or whose route could not open its
/// incident), kept in the meta plane under `runbox_store::keys::alert_unrouted`:
/// `runbox alerts` lists these, and a notification sink that wants
/// `alert-unrouted` is told of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnroutedAlert {
    /// When the webhook arrived, ms since the epoch.
    pub received_ms: u64,
    /// The Alertmanager receiver it came through.
    pub receiver: String,
    /// Alertmanager's group key.
    pub group_key: String,
    /// The group's status.
    pub status: AlertStatus,
    /// The labels every alert of the group has.
    pub common_labels: Labels,
    /// How many alerts the webhook carried.
    pub alerts: u32,
    /// Their fingerprints.
    pub fingerprints: Vec<String>,
    /// The route that matched, when one did but could not open the incident.
    pub route: Option<String>,
    /// Why no incident took it.
    pub reason: String,
    /// The agent that posted it (`agent:NAME`).
    pub by: String,
}

impl UnroutedAlert {
    /// The record of `hook`, arriving at `received_ms` from `by`.
    pub fn of(
        hook: &Webhook,
        received_ms: u64,
        by: &str,
        route: Option<&str>,
        reason: &str,
    ) -> Self {
        UnroutedAlert {
            received_ms,
            receiver: hook.receiver.clone(),
            group_key: hook.group_key.clone(),
            status: hook.status,
            common_labels: hook.common_labels.clone(),
            alerts: hook.alerts.len() as u32,
            fingerprints: hook.fingerprints(),
            route: route.map(str::to_string),
            reason: reason.to_string(),
            by: by.to_string(),
        }
    }

    /// The short hash of its group key, in its meta key.
    pub fn group_hash(group_key: &str) -> String {
        hex::encode(&Sha256::digest(group_key.as_bytes())[..6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str) -> String {
        format!(
            r#"{{"version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
                "commonLabels": {{"alertname": "X"}}, "unknownField": 1,
                "alerts": [{{"status": "firing", "labels": {{"alertname": "X"}}, "fingerprint": "f"}}]{extra}}}"#
        )
    }

    #[test]
    fn a_version_4_payload_parses_with_unknown_fields() {
        let hook = Webhook::parse(body("").as_bytes()).unwrap();
        assert_eq!(hook.status, AlertStatus::Firing);
        assert_eq!(hook.fingerprints(), ["f"]);
        assert_eq!(hook.describe(), "alert `X` firing: 1 firing, 0 resolved");
    }

    #[test]
    fn another_version_or_shape_is_refused_by_name() {
        let v3 = body("").replace("\"4\"", "\"3\"");
        assert!(matches!(
            Webhook::parse(v3.as_bytes()),
            Err(WebhookError::Version(v)) if v == "\"3\""
        ));
        let none = r#"{"status": "firing"}"#;
        assert!(matches!(
            Webhook::parse(none.as_bytes()),
            Err(WebhookError::Version(_))
        ));
        assert!(matches!(
            Webhook::parse(b"{not json"),
            Err(WebhookError::Malformed(_))
        ));
        let bad_status = body("").replace(
            "\"status\": \"firing\", \"receiver\"",
            "\"status\": \"on fire\", \"receiver\"",
        );
        assert!(matches!(
            Webhook::parse(bad_status.as_bytes()),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn each_limit_is_broken_and_named() {
        let many: Vec<String> = (0..=MAX_LABELS)
            .map(|i| format!("\"l{i}\": \"v\""))
            .collect();
        let labels = body("").replace(
            "\"commonLabels\": {\"alertname\": \"X\"}",
            &format!("\"commonLabels\": {{{}}}", many.join(",")),
        );
        let err = Webhook::parse(labels.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("commonLabels: 65 entries"), "{err}");
        let long = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        let value = body("").replace(
            "\"labels\": {\"alertname\": \"X\"}",
            &format!("\"labels\": {{\"a\": \"{long}\"}}"),
        );
        let err = Webhook::parse(value.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("alerts[0].labels.a: 1025 bytes"), "{err}");
        let no_alerts = body("").replace(
            "[{\"status\": \"firing\", \"labels\": {\"alertname\": \"X\"}, \"fingerprint\": \"f\"}]",
            "[]",
        );
        let err = Webhook::parse(no_alerts.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("alerts: 0 alerts"), "{err}");
        let control_name = body("").replace(
            "\"alertname\": \"X\"}, \"unknownField\"",
            "\"a\\nb\": \"X\"}, \"unknownField\"",
        );
        assert!(Webhook::parse(control_name.as_bytes()).is_err());
    }

    #[test]
    fn incident_ids_are_deterministic_valid_and_apart() {
        let a = incident_id("r", "g", 1);
        assert_eq!(a, incident_id("r", "g", 1));
        assert_ne!(a, incident_id("r", "h", 1));
        assert_ne!(incident_id("a", "bc", 1), incident_id("ab", "c", 1));
        let last = incident_id(&"r".repeat(200), &"g".repeat(4096), MAX_GENERATIONS);
        assert!(last.as_str().len() <= 64);
    }
}
