//! Escalations out: the data dir's `notify.toml`, which events reach which
//! sinks, and the outbox entry a commit writes for each.
//!
//! ```toml
//! [[sinks]]
//! name = "oncall-hook"
//! kind = "webhook"                 # webhook | slack | pagerduty
//! url = "https://hooks.example/runbox"
//! secret_file = "/etc/runbox/hook.key"   # or secret_env = "HOOK_KEY"
//! events = ["approval-required", "escalated", "in-doubt"]
//! runbooks = ["api-outage"]        # optional: only these runbooks' incidents
//! params = { service = "api" }     # optional: only incidents with these params
//! ```
//!
//! A notification is an outbox entry ([`OutboxEntry`]) written in the same
//! commit as the event that causes it, one per sink that wants the event
//! ([`Routing::sinks_for`]): a crash after the commit loses nothing, and a
//! refused commit enqueues nothing. Delivering it is `runbox-notify`'s job.
//!
//! Secrets (HMAC keys, PagerDuty routing keys, Slack webhook URLs) are never
//! written in the file: they come from a file (`*_file`) or an environment
//! variable (`*_env`) it names, and an inline secret is refused.
//!
//! ```
//! use runbox_core::event::EventKind;
//! use runbox_core::notify::{NotifyEvent, NotifyFile, Routing};
//!
//! let file: NotifyFile = toml::from_str(r#"
//! [[sinks]]
//! name = "hook"
//! kind = "webhook"
//! url = "http://127.0.0.1:9000/"
//! secret_env = "HOOK_KEY"
//! events = ["escalated"]
//! "#)?;
//! let routing = Routing::check(file, "notify.toml")?;
//! let event = NotifyEvent::of(EventKind::Escalated).unwrap();
//! let params = Default::default();
//! let to: Vec<_> = routing.sinks_for(event, "api-outage", &params).collect();
//! assert_eq!(to, ["hook"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::ident::{IdentKind, IncidentId};

/// The data dir's notifications file.
pub const NOTIFY_FILE: &str = "notify.toml";
/// The most sinks one file may declare.
pub const MAX_SINKS: usize = 64;
/// The default of a sink's `max_attempts`: with the default backoff (1s,
/// doubled per try, at most 5 minutes), about half an hour of retries
/// before the entry is parked.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
/// The most `max_attempts` takes.
pub const MAX_ATTEMPTS: u32 = 100;
/// The default of a sink's `max_in_flight`: deliveries to one sink at once.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;
/// The most `max_in_flight` takes.
pub const MAX_IN_FLIGHT: u32 = 64;
/// The default of a sink's `timeout`: a receiver that has not answered in
/// this time counts as a failed delivery (and is tried again).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The longest `timeout` a sink may set.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// The default of a sink's `backoff`: the wait before the first retry.
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// The longest `backoff` a sink may set.
pub const MAX_FIRST_BACKOFF_MS: u64 = 60_000;
/// PagerDuty's Events API v2 endpoint, a `pagerduty` sink's default `url`.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// What a sink is told about. Each is a timeline event kind, except
/// `alert-unrouted` (an alert that matched no route has no incident).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    /// A high-impact step waits for a human's signed approval.
    ApprovalRequired,
    /// The incident was handed to a human.
    Escalated,
    /// An attempt may have changed the world before a crash: a human settles it.
    InDoubt,
    /// A brake was engaged.
    BrakeEngaged,
    /// A full rate limit holds a mutating step.
    Limited,
    /// The incident is resolved.
    Resolved,
    /// A human took the incident over (PagerDuty: `acknowledge`).
    Takeover,
    /// An alert matched no route in `routes.toml`.
    AlertUnrouted,
}

impl NotifyEvent {
    /// Every event, in declaration order.
    pub const ALL: &'static [NotifyEvent] = &[
        NotifyEvent::ApprovalRequired,
        NotifyEvent::Escalated,
        NotifyEvent::InDoubt,
        NotifyEvent::BrakeEngaged,
        NotifyEvent::Limited,
        NotifyEvent::Resolved,
        NotifyEvent::Takeover,
        NotifyEvent::AlertUnrouted,
    ];

    /// The notification a timeline event of `kind` causes, if any.
    pub fn of(kind: EventKind) -> Option<NotifyEvent> {
        Some(match kind {
            EventKind::ApprovalRequired => NotifyEvent::ApprovalRequired,
            EventKind::Escalated => NotifyEvent::Escalated,
            EventKind::InDoubt => NotifyEvent::InDoubt,
            EventKind::BrakeEngaged => NotifyEvent::BrakeEngaged,
            EventKind::Limited => NotifyEvent::Limited,
            EventKind::Resolved => NotifyEvent::Resolved,
            EventKind::Takeover => NotifyEvent::Takeover,
            _ => return None,
        })
    }

    /// The name as written in `notify.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::ApprovalRequired => "approval-required",
            NotifyEvent::Escalated => "escalated",
            NotifyEvent::InDoubt => "in-doubt",
            NotifyEvent::BrakeEngaged => "brake-engaged",
            NotifyEvent::Limited => "limited",
            NotifyEvent::Resolved => "resolved",
            NotifyEvent::Takeover => "takeover",
            NotifyEvent::AlertUnrouted => "alert-unrouted",
        }
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a sink is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A JSON body signed with HMAC-SHA256 (`Runbox-Signature`).
    Webhook,
    /// A Slack incoming webhook (its URL is the secret).
    Slack,
    /// PagerDuty's Events API v2 (its routing key is the secret).
    Pagerduty,
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Pagerduty => "pagerduty",
        })
    }
}

/// `notify.toml`: where escalations go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// The sinks.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
}

/// One `[[sinks]]` entry as written (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The sink's name: letters, digits, `-`, `_`, `.`; unique in the file.
    pub name: String,
    /// How it is spoken to.
    pub kind: SinkKind,
    /// Where to send (`webhook`; `pagerduty`, default its Events API).
    /// A Slack webhook URL is a secret: `url_file` or `url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<String>,
    /// An environment variable holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// A file holding the secret: the HMAC key (`webhook`) or the routing
    /// key (`pagerduty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// An environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Refused: a secret is never written in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub secret: Option<String>,
    /// Refused: a routing key is never written in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub routing_key: Option<String>,
    /// The events the sink wants.
    pub events: Vec<NotifyEvent>,
    /// Only incidents of these runbooks (by name). Default: every runbook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runbooks: Vec<String>,
    /// Only incidents opened with these parameter values. Default: any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Tries before an entry is parked: 1..=100. Default: 12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Deliveries in flight to this sink at once: 1..=64. Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// How long a receiver has to answer (`10s`, `500ms`). Default: 10s, at most 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The wait before the first retry, doubled for each next one (up to
    /// 5 minutes): `1s`, `200ms`. Default: 1s; from 10ms to 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Where a sink's URL or secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Written in the file (a URL that is no secret).
    Inline(String),
    /// Read from this file.
    File(String),
    /// Read from this environment variable.
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Inline(_) => f.write_str("the file itself"),
            Source::File(path) => write!(f, "file {path}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A checked sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// Its name.
    pub name: String,
    /// How it is spoken to.
    pub kind: SinkKind,
    /// Where its URL comes from.
    pub url: Source,
    /// Where its secret comes from (none for `slack`).
    pub secret: Option<Source>,
    /// The events it wants.
    pub events: BTreeSet<NotifyEvent>,
    /// Only these runbooks' incidents (empty: all).
    pub runbooks: BTreeSet<String>,
    /// Only incidents with these params (empty: all).
    pub params: BTreeMap<String, String>,
    /// Tries before parking.
    pub max_attempts: u32,
    /// Deliveries in flight at once.
    pub max_in_flight: u32,
    /// How long a receiver has to answer, in ms.
    pub timeout_ms: u64,
    /// The wait before the first retry, in ms.
    pub backoff_ms: u64,
    /// Where it was declared: `notify.toml sinks[0] (hook)`.
    pub origin: String,
}

impl Sink {
    /// Whether the sink wants `event` of an incident of `runbook` opened
    /// with `params`.
    pub fn wants(
        &self,
        event: NotifyEvent,
        runbook: &str,
        params: &BTreeMap<String, String>,
    ) -> bool {
        self.events.contains(&event)
            && (self.runbooks.is_empty() || self.runbooks.contains(runbook))
            && self
                .params
                .iter()
                .all(|(k, v)| params.get(k).is_some_and(|p| p == v))
    }
}

/// A `notify.toml` that is not valid, naming the file, the entry and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct NotifyError {
    /// The file (and entry) it is in.
    pub origin: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The checked sinks of a data dir: which of them want an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    sinks: Vec<Sink>,
}

impl Routing {
    /// Reads and checks `path`; a missing file has no sinks.
    pub fn load(path: &Path) -> Result<Routing, NotifyError> {
        let origin = path.display().to_string();
        let bad = |field: &str, message: String| NotifyError {
            origin: origin.clone(),
            field: field.into(),
            message,
        };
        let text = match crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Routing::default()),
            Err(e) => return Err(bad("file", format!("cannot read it: {e}"))),
        };
        Routing::parse(&text, &origin)
    }

    /// Parses and checks notify-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Routing, NotifyError> {
        let file: NotifyFile = toml::from_str(text).map_err(|e| NotifyError {
            origin: origin.to_string(),
            field: "toml".into(),
            message: e.to_string(),
        })?;
        Routing::check(file, origin)
    }

    /// Checks a parsed file declared at `origin`.
    pub fn check(file: NotifyFile, origin: &str) -> Result<Routing, NotifyError> {
        if file.sinks.len() > MAX_SINKS {
            return Err(NotifyError {
                origin: origin.into(),
                field: "sinks".into(),
                message: format!("{} sinks, at most {MAX_SINKS}", file.sinks.len()),
            });
        }
        let mut names = BTreeSet::new();
        let mut sinks = Vec::with_capacity(file.sinks.len());
        for (i, spec) in file.sinks.into_iter().enumerate() {
            let sink = spec.check(origin, i)?;
            if !names.insert(sink.name.clone()) {
                return Err(NotifyError {
                    origin: sink.origin,
                    field: "name".into(),
                    message: "another sink has this name".into(),
                });
            }
            sinks.push(sink);
        }
        Ok(Routing { sinks })
    }

    /// The sinks.
    pub fn sinks(&self) -> &[Sink] {
        &self.sinks
    }

    /// The sink named `name`.
    pub fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Whether no sink wants anything.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// The names of the sinks that want `event` of an incident of
    /// `runbook` opened with `params`.
    pub fn sinks_for<'a>(
        &'a self,
        event: NotifyEvent,
        runbook: &'a str,
        params: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.sinks
            .iter()
            .filter(move |s| s.wants(event, runbook, params))
            .map(|s| s.name.as_str())
    }

    /// Whether any sink wants `event`, whatever the incident.
    pub fn any_wants(&self, event: NotifyEvent) -> bool {
        self.sinks.iter().any(|s| s.events.contains(&event))
    }
}

impl SinkSpec {
    /// Checks the entry at `index` of `origin`'s `sinks`.
    pub fn check(self, origin: &str, index: usize) -> Result<Sink, NotifyError> {
        let origin = format!("{origin} sinks[{index}] ({})", self.name);
        let bad = |field: &str, message: String| NotifyError {
            origin: origin.clone(),
            field: field.into(),
            message,
        };
        IdentKind::Tool
            .check(&self.name)
            .map_err(|e| bad("name", e.to_string()))?;
        self.refuse_inline_secrets(&bad)?;
        let url = self.url_source(&bad)?;
        let secret = self.secret_source(&bad)?;
        if self.events.is_empty() {
            return Err(bad(
                "events",
                "names no event: the sink would hear nothing".into(),
            ));
        }
        if self.kind == SinkKind::Pagerduty && self.events.contains(&NotifyEvent::AlertUnrouted) {
            return Err(bad(
                "events",
                "`alert-unrouted` has no incident to page about: send it to a webhook or Slack"
                    .into(),
            ));
        }
        for name in &self.runbooks {
            IdentKind::Tool
                .check(name)
                .map_err(|e| bad("runbooks", e.to_string()))?;
        }
        let max_attempts = bounded(
            &bad,
            "max_attempts",
            self.max_attempts,
            DEFAULT_MAX_ATTEMPTS,
            MAX_ATTEMPTS,
        )?;
        let max_in_flight = bounded(
            &bad,
            "max_in_flight",
            self.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT,
            MAX_IN_FLIGHT,
        )?;
        let timeout_ms = duration(
            &bad,
            "timeout",
            self.timeout.as_deref(),
            DEFAULT_TIMEOUT_MS,
            1..=MAX_TIMEOUT_MS,
        )?;
        let backoff_ms = duration(
            &bad,
            "backoff",
            self.backoff.as_deref(),
            DEFAULT_BACKOFF_MS,
            10..=MAX_FIRST_BACKOFF_MS,
        )?;
        Ok(Sink {
            name: self.name,
            kind: self.kind,
            url,
            secret,
            events: self.events.into_iter().collect(),
            runbooks: self.runbooks.into_iter().collect(),
            params: self.params,
            max_attempts,
            max_in_flight,
            timeout_ms,
            backoff_ms,
            origin,
        })
    }

    fn refuse_inline_secrets(
        &self,
        bad: &impl Fn(&str, String) -> NotifyError,
    ) -> Result<(), NotifyError> {
        let what = match self.kind {
            SinkKind::Pagerduty => "routing key",
            _ => "secret",
        };
        for (field, value) in [("secret", &self.secret), ("routing_key", &self.routing_key)] {
            if value.is_some() {
                return Err(bad(
                    field,
                    format!(
                        "an inline {what} is refused: name a file (`secret_file`) or an environment variable (`secret_env`) that holds it"
                    ),
                ));
            }
        }
        if self.kind == SinkKind::Slack && self.url.is_some() {
            return Err(bad(
                "url",
                "a Slack webhook URL is a secret: name a file (`url_file`) or an environment variable (`url_env`) that holds it".into(),
            ));
        }
        Ok(())
    }

    fn url_source(
        &self,
        bad: &impl Fn(&str, String) -> NotifyError,
    ) -> Result<Source, NotifyError> {
        let given = one_of(
            bad,
            "url/url_file/url_env",
            [
                self.url.clone().map(Source::Inline),
                self.url_file.clone().map(Source::File),
                self.url_env.clone().map(Source::Env),
            ],
        )?;
        match (given, self.kind) {
            (Some(Source::Inline(url)), _) => {
                check_url(&url).map_err(|m| bad("url", m))?;
                Ok(Source::Inline(url))
            }
            (Some(source), _) => Ok(source),
            (None, SinkKind::Pagerduty) => Ok(Source::Inline(PAGERDUTY_EVENTS_URL.into())),
            (None, _) => Err(bad(
                "url",
                format!("a {} sink needs `url`, `url_file` or `url_env`", self.kind),
            )),
        }
    }

    fn secret_source(
        &self,
        bad: &impl Fn(&str, String) -> NotifyError,
    ) -> Result<Option<Source>, NotifyError> {
        let given = one_of(
            bad,
            "secret_file/secret_env",
            [
                self.secret_file.clone().map(Source::File),
                self.secret_env.clone().map(Source::Env),
            ],
        )?;
        match (self.kind, given) {
            (SinkKind::Slack, Some(_)) => Err(bad(
                "secret_file/secret_env",
                "a slack sink has no secret besides its URL (`url_file`, `url_env`)".into(),
            )),
            (SinkKind::Slack, None) => Ok(None),
            (SinkKind::Webhook, None) => Err(bad(
                "secret_file/secret_env",
                "a webhook sink signs every body: name the HMAC key's file or environment variable"
                    .into(),
            )),
            (SinkKind::Pagerduty, None) => Err(bad(
                "secret_file/secret_env",
                "a pagerduty sink needs its routing key's file or environment variable".into(),
            )),
            (_, given) => Ok(given),
        }
    }
}

fn one_of<const N: usize>(
    bad: &impl Fn(&str, String) -> NotifyError,
    fields: &str,
    given: [Option<Source>; N],
) -> Result<Option<Source>, NotifyError> {
    let mut given = given.into_iter().flatten();
    let first = given.next();
    if given.next().is_some() {
        return Err(bad(fields, "give one of them, not several".into()));
    }
    if let Some(Source::File(path) | Source::Env(path)) = &first
        && path.trim().is_empty()
    {
        return Err(bad(fields, "is empty".into()));
    }
    Ok(first)
}

fn duration(
    bad: &impl Fn(&str, String) -> NotifyError,
    field: &str,
    text: Option<&str>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, NotifyError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| bad(field, format!("{text:?}: {e} (write `10s`, `500ms`)")))?;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if !range.contains(&ms) {
        return Err(bad(
            field,
            format!(
                "{text:?}: from {}ms to {}s",
                range.start(),
                range.end() / 1000
            ),
        ));
    }
    Ok(ms)
}

fn bounded(
    bad: &impl Fn(&str, String) -> NotifyError,
    field: &str,
    value: Option<u32>,
    default: u32,
    max: u32,
) -> Result<u32, NotifyError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(bad(field, format!("{n}: from 1 to {max}"))),
    }
}

/// Checks a URL written in `notify.toml` or read from a sink's file:
/// `http` or `https`, with a host, no credentials, no whitespace.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL of at most 2048 characters with no whitespace".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{url:?} carries credentials: put secrets in a file"
        ));
    }
    Ok(())
}

/// One notification waiting in the outbox: written in the commit of the
/// event it is about, under `incident:{id}:outbox:{seq}:{sink}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutboxEntry {
    /// The incident.
    pub incident: String,
    /// The timeline event's sequence number.
    pub seq: u64,
    /// The sink it goes to.
    pub sink: String,
    /// What it tells.
    pub event: NotifyEvent,
    /// When it was committed (ms since epoch).
    pub at_ms: u64,
    /// For `alert-unrouted`, which has no incident (`incident` is empty):
    /// the meta-plane key of the [`crate::alert::UnroutedAlert`] it tells of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrouted: Option<String>,
}

impl OutboxEntry {
    /// The notification to `sink` of the unrouted alert group recorded at
    /// `key` (received at `received_ms`).
    pub fn unrouted(key: &str, received_ms: u64, sink: &str) -> OutboxEntry {
        OutboxEntry {
            incident: String::new(),
            seq: received_ms,
            sink: sink.to_string(),
            event: NotifyEvent::AlertUnrouted,
            at_ms: received_ms,
            unrouted: Some(key.to_string()),
        }
    }

    /// The entry's id, the same on every delivery of it: the receivers'
    /// `Idempotency-Key`.
    pub fn id(&self) -> String {
        match &self.unrouted {
            Some(key) => format!("{key}:{}", self.sink),
            None => entry_id(&self.incident, self.seq, &self.sink),
        }
    }

    /// The incident, as an id.
    pub fn incident_id(&self) -> Option<IncidentId> {
        IncidentId::new(self.incident.as_str()).ok()
    }
}

/// The id of the entry for event `seq` of `incident` to `sink`.
pub fn entry_id(incident: &str, seq: u64, sink: &str) -> String {
    format!("{incident}:{seq}:{sink}")
}

/// The meta-plane key of an entry's [`Delivery`].
pub fn delivery_key(entry_id: &str) -> String {
    format!("delivery:{entry_id}")
}

/// Where a delivery stands, kept beside the incident (the meta plane):
/// delivering never moves the incident's checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Delivery {
    /// Tries so far.
    pub attempts: u32,
    /// Delivered, waiting, or parked.
    pub state: DeliveryState,
    /// Not tried again before this (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at_ms: Option<u64>,
    /// When a receiver took it (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    /// What the last failed try got: `HTTP 500`, `timed out after 10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The runner sending it now, so that of the runners sharing a store
    /// one sends it at a time (see [`Delivery::claimed_by_other`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Until when the claim holds (ms since epoch): a runner that stopped
    /// mid-send leaves it to the others after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_until_ms: Option<u64>,
}

impl Delivery {
    /// Whether a runner other than `runner` claimed it and its claim still
    /// holds at `now_ms`: until when, if so.
    pub fn claimed_by_other(&self, runner: &str, now_ms: u64) -> Option<u64> {
        let until = self.claimed_until_ms.filter(|&until| until > now_ms)?;
        (self.claimed_by.as_deref() != Some(runner)).then_some(until)
    }
}

/// Where a delivery stands.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not delivered yet; tried again at `next_at_ms`.
    #[default]
    Pending,
    /// A receiver took it (2xx).
    Delivered,
    /// Out of tries: waits for `runbox notify retry`.
    Parked,
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Parked => "parked",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Routing, NotifyError> {
        Routing::check(
            toml::from_str(text).map_err(|e| NotifyError {
                origin: "t".into(),
                field: "toml".into(),
                message: e.to_string(),
            })?,
            "notify.toml",
        )
    }

    const HOOK: &str = "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"K\"\nevents = [\"escalated\"]\n";

    #[test]
    fn a_claim_bars_other_runners_until_it_lapses_and_never_its_own() {
        let claimed = Delivery {
            claimed_by: Some("east".into()),
            claimed_until_ms: Some(2_000),
            ..Delivery::default()
        };
        assert_eq!(claimed.claimed_by_other("west", 1_000), Some(2_000));
        assert_eq!(claimed.claimed_by_other("east", 1_000), None);
        assert_eq!(claimed.claimed_by_other("west", 2_000), None);
        assert_eq!(Delivery::default().claimed_by_other("west", 0), None);
    }

    #[test]
    fn an_inline_secret_is_refused_naming_the_entry_and_field() {
        let err = check(&HOOK.replace("secret_env = \"K\"", "secret = \"hunter2\"")).unwrap_err();
        assert_eq!(err.origin, "notify.toml sinks[0] (hook)");
        assert_eq!(err.field, "secret");
        assert!(err.message.contains("inline secret is refused"), "{err}");
        let slack = "[[sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nevents = [\"escalated\"]\n";
        assert_eq!(check(slack).unwrap_err().field, "url");
        let pd = "[[sinks]]\nname = \"p\"\nkind = \"pagerduty\"\nrouting_key = \"R\"\nevents = [\"escalated\"]\n";
        assert_eq!(check(pd).unwrap_err().field, "routing_key");
    }

    #[test]
    fn a_webhook_without_a_key_and_a_sink_without_events_are_refused() {
        let err = check(&HOOK.replace("secret_env = \"K\"\n", "")).unwrap_err();
        assert_eq!(err.field, "secret_file/secret_env");
        let err = check(&HOOK.replace("[\"escalated\"]", "[]")).unwrap_err();
        assert_eq!(err.field, "events");
        let err = check(&HOOK.replace("escalated", "paged")).unwrap_err();
        assert!(err.message.contains("paged"), "{err}");
    }

    #[test]
    fn every_limit_is_checked() {
        assert_eq!(
            check(&format!("{HOOK}max_attempts = 0\n"))
                .unwrap_err()
                .field,
            "max_attempts"
        );
        assert_eq!(
            check(&format!("{HOOK}max_attempts = 101\n"))
                .unwrap_err()
                .field,
            "max_attempts"
        );
        assert_eq!(
            check(&format!("{HOOK}max_in_flight = 65\n"))
                .unwrap_err()
                .field,
            "max_in_flight"
        );
        assert_eq!(
            check(&format!("{HOOK}timeout = \"3m\"\n"))
                .unwrap_err()
                .field,
            "timeout"
        );
        assert_eq!(
            check(&format!("{HOOK}backoff = \"1ms\"\n"))
                .unwrap_err()
                .field,
            "backoff"
        );
        assert_eq!(
            check(&format!("{HOOK}backoff = \"2m\"\n"))
                .unwrap_err()
                .field,
            "backoff"
        );
        let file: String = (0..=MAX_SINKS)
            .map(|i| HOOK.replace("\"hook\"", &format!("\"h{i}\"")))
            .collect();
        assert_eq!(check(&file).unwrap_err().field, "sinks");
        assert_eq!(check(&format!("{HOOK}{HOOK}")).unwrap_err().field, "name");
    }

    #[test]
    fn urls_are_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://events.pagerduty.com/v2/enqueue").is_ok());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("http:///x").is_err());
        assert!(check_url("http://user:pw@x/").is_err());
        assert!(check_url("http://x/a b").is_err());
        assert_eq!(
            check(&HOOK.replace("http://127.0.0.1:1/", "file:///etc/passwd"))
                .unwrap_err()
                .field,
            "url"
        );
    }

    #[test]
    fn filters_pick_runbooks_and_params() {
        let routing = check(&format!(
            "{HOOK}runbooks = [\"api-outage\"]\nparams = {{ service = \"api\" }}\n"
        ))
        .unwrap();
        let api = BTreeMap::from([("service".to_string(), "api".to_string())]);
        let db = BTreeMap::from([("service".to_string(), "db".to_string())]);
        let esc = NotifyEvent::Escalated;
        assert_eq!(routing.sinks_for(esc, "api-outage", &api).count(), 1);
        assert_eq!(routing.sinks_for(esc, "api-outage", &db).count(), 0);
        assert_eq!(routing.sinks_for(esc, "disk", &api).count(), 0);
        assert_eq!(
            routing
                .sinks_for(NotifyEvent::Resolved, "api-outage", &api)
                .count(),
            0
        );
    }

    #[test]
    fn every_event_kind_that_notifies_is_named() {
        for kind in EventKind::ALL {
            if let Some(event) = NotifyEvent::of(*kind) {
                assert_eq!(event.as_str(), kind.as_str());
            }
        }
    }
}
