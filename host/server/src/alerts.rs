//! Alerts in: an Alertmanager webhook (`POST /v1/alerts`, the `alert`
//! power) routed by the data dir's `routes.toml` to a runbook.
//!
//! - One alert group through one route is one incident, its id derived
//!   from the route's name and the group key
//!   ([`runbox_core::alert::incident_id`]): a webhook sent again finds the
//!   incident it opened and adds an `alert` event to it; a resolved group
//!   adds `alert-resolved` and never resolves the incident itself.
//! - A group that fires again after its incident is over (resolved or
//!   failed) opens the next generation, `ALERT-…-2`, and so on: a new
//!   outage gets a fresh run of its runbook, and the old incident's
//!   record stays as it was.
//! - A group no route takes, or whose route cannot open its incident (a
//!   label its params need is missing, a label value is no valid param, the
//!   runbook is gone), is answered 202 and recorded as an
//!   [`UnroutedAlert`] in the meta plane (`runbox alerts`): never dropped.
//! - `run = "auto"` starts the incident at once, one step at a time
//!   through [`Service::run_step`], acting as the posting agent with the
//!   `run` power: never the mutation token, so a mutating step waits for
//!   an agent with `mutate` (or a human), with a note saying so.

use std::sync::Arc;
use std::time::Duration;

use runbox_core::alert::{AlertStatus, MAX_GENERATIONS, UnroutedAlert, Webhook, incident_id};
use runbox_core::errors::one_line_of;
use runbox_core::fleet_config::ConfigKind;
use runbox_core::ident::IncidentId;
use runbox_core::route::{Route, Routes, RunMode};
use runbox_core::time::now_ms;
use runbox_engine::{EngineError, ReadError};
use runbox_store::StoreExt;
use runbox_store::keys;
use serde::Serialize;

use crate::agents::{Caller, Power};
use crate::error::{ErrorCode, ServiceError, engine_error_code};
use crate::service::Service;

/// The most steps one `run = "auto"` start runs before it leaves the
/// incident to agents: runbooks only go forward, so this bounds a runbook
/// whose steps keep retrying.
pub const MAX_AUTO_STEPS: usize = 1000;

/// How often an auto run looks again at a step that outlasted `run_step`'s
/// wait.
const AUTO_POLL: Duration = Duration::from_secs(1);

/// What a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertOutcome {
    /// A new incident (201).
    Opened,
    /// An `alert` event on the group's open incident (200).
    Fired,
    /// An `alert-resolved` event on it (200).
    Resolved,
    /// No incident took it; recorded for `runbox alerts` (202).
    Unrouted,
    /// Nothing to do: a resolved group with no open incident (200).
    Ignored,
}

impl AlertOutcome {
    /// The HTTP status of the answer.
    pub fn http_status(self) -> u16 {
        match self {
            AlertOutcome::Opened => 201,
            AlertOutcome::Fired | AlertOutcome::Resolved | AlertOutcome::Ignored => 200,
            AlertOutcome::Unrouted => 202,
        }
    }
}

/// The answer to a webhook.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AlertReceipt {
    /// What happened.
    pub outcome: AlertOutcome,
    /// The incident, when one took it.
    pub incident: Option<String>,
    /// The route that matched, if one did.
    pub route: Option<String>,
    /// In words.
    pub message: String,
}

impl AlertReceipt {
    fn new(
        outcome: AlertOutcome,
        id: Option<&IncidentId>,
        route: Option<&Route>,
        message: String,
    ) -> Self {
        AlertReceipt {
            outcome,
            incident: id.map(IncidentId::to_string),
            route: route.map(|r| r.name.clone()),
            message,
        }
    }
}

impl Service {
    /// Takes an Alertmanager webhook body (capped by the HTTP layer at
    /// [`runbox_core::alert::MAX_WEBHOOK_BYTES`]). A malformed body or
    /// another payload version is refused and changes nothing; a broken
    /// `routes.toml` is `unavailable` (503: Alertmanager sends it again
    /// once an admin fixed the file).
    pub async fn receive_alerts(
        self: &Arc<Self>,
        caller: &Caller,
        body: &[u8],
    ) -> Result<AlertReceipt, ServiceError> {
        caller.require(Power::Alert, "posting alerts")?;
        let hook = Webhook::parse(body).map_err(ServiceError::from)?;
        let routes = self.load_routes()?;
        let received = now_ms();
        let Some(route) = routes.route(&hook.common_labels) else {
            return self.unrouted(
                caller,
                &hook,
                received,
                None,
                "no route matches the group's common labels",
            );
        };
        match hook.status {
            AlertStatus::Firing => self.fire(caller, &hook, route, received).await,
            AlertStatus::Resolved => self.resolve(caller, &hook, route).await,
        }
    }

    /// The routes as they stand now: the file's, or on a shared store the
    /// fleet's routes document.
    fn load_routes(&self) -> Result<Routes, ServiceError> {
        let incidents = self.engine().incidents();
        if incidents.config_in_store() {
            let text = incidents.config_text(ConfigKind::Routes)?;
            return Ok(runbox_incidents::config::routes_of(&text)?);
        }
        match &self.config.routes {
            Some(path) => Routes::load(path).map_err(ServiceError::from),
            None => Ok(Routes::default()),
        }
    }

    /// Checks `routes.toml` whole, each route's runbook among the served
    /// ones: `serve` refuses to start on a broken file.
    pub fn check_routes(&self) -> Result<usize, ServiceError> {
        let routes = self.load_routes()?;
        for route in routes.iter() {
            self.resolve_runbook(&route.runbook).map_err(|e| {
                ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("{}: runbook: {}", route.origin, e.message),
                )
            })?;
        }
        Ok(routes.iter().count())
    }

    /// A firing group: the open incident of its newest generation gets an
    /// `alert` event; none open, the next generation is opened.
    async fn fire(
        self: &Arc<Self>,
        caller: &Caller,
        hook: &Webhook,
        route: &Route,
        received: u64,
    ) -> Result<AlertReceipt, ServiceError> {
        let params = match route.params(&hook.common_labels) {
            Ok(params) => params,
            Err(e) => return self.unrouted(caller, hook, received, Some(route), &e.to_string()),
        };
        let path = match self.resolve_runbook(&route.runbook) {
            Ok(path) => path,
            Err(e) => {
                let why = format!("{}: runbook: {}", route.origin, e.message);
                return self.unrouted(caller, hook, received, Some(route), &why);
            }
        };
        let mut generation = 1;
        while generation <= MAX_GENERATIONS {
            let id = incident_id(&route.name, &hook.group_key, generation);
            match self.engine().incidents().status_of(&id) {
                Ok(status) if status.is_terminal() => generation += 1,
                Ok(_) => match self.record(caller, &id, hook, route).await {
                    Ok(()) => {
                        let said = format!("{id}: alert event added");
                        return Ok(AlertReceipt::new(
                            AlertOutcome::Fired,
                            Some(&id),
                            Some(route),
                            said,
                        ));
                    }
                    // It ended since it was read: the next generation.
                    Err(EngineError::Refused { .. }) => generation += 1,
                    Err(e) => return Err(e.into()),
                },
                Err(ReadError::UnknownIncident(_)) => {
                    let opened = self.engine().opener().open_for_alert(
                        id.as_str(),
                        &path,
                        &params,
                        &caller.actor(),
                        (hook, &route.name),
                    );
                    match opened {
                        Ok(_) => return self.opened(caller, &id, route).await,
                        // Another webhook of the group opened it first:
                        // this one is its next firing (read it again).
                        Err(EngineError::Exists(_)) => {}
                        Err(e) if is_about_the_route(&e) => {
                            let why =
                                format!("{}: opening {id}: {}", route.origin, one_line_of(&e));
                            return self.unrouted(caller, hook, received, Some(route), &why);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let why =
            format!("the group opened {MAX_GENERATIONS} incidents through this route already");
        self.unrouted(caller, hook, received, Some(route), &why)
    }

    /// A new incident (its first webhook's event in its opening commit),
    /// and the auto run.
    async fn opened(
        self: &Arc<Self>,
        caller: &Caller,
        id: &IncidentId,
        route: &Route,
    ) -> Result<AlertReceipt, ServiceError> {
        let mut said = format!("{id} opened with runbook `{}`", route.runbook);
        if route.run == RunMode::Auto {
            self.auto_run(caller, id.clone());
            said.push_str("; running");
        }
        Ok(AlertReceipt::new(
            AlertOutcome::Opened,
            Some(id),
            Some(route),
            said,
        ))
    }

    /// A resolved group: `alert-resolved` on its newest incident, if that
    /// is still open; a resolved group never opens one.
    async fn resolve(
        self: &Arc<Self>,
        caller: &Caller,
        hook: &Webhook,
        route: &Route,
    ) -> Result<AlertReceipt, ServiceError> {
        let mut newest = None;
        for generation in 1..=MAX_GENERATIONS {
            let id = incident_id(&route.name, &hook.group_key, generation);
            match self.engine().incidents().status_of(&id) {
                Ok(status) => newest = Some((id, status)),
                Err(ReadError::UnknownIncident(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let ignored =
            |id: Option<&IncidentId>, said: String| -> Result<AlertReceipt, ServiceError> {
                Ok(AlertReceipt::new(
                    AlertOutcome::Ignored,
                    id,
                    Some(route),
                    said,
                ))
            };
        match newest {
            None => ignored(
                None,
                "no incident of this group: a resolved group opens none".into(),
            ),
            Some((id, status)) if status.is_terminal() => {
                ignored(Some(&id), format!("{id} is {status} already"))
            }
            Some((id, _)) => match self.record(caller, &id, hook, route).await {
                Ok(()) => {
                    let said =
                        format!("{id}: alert-resolved event added (the incident stays open)");
                    Ok(AlertReceipt::new(
                        AlertOutcome::Resolved,
                        Some(&id),
                        Some(route),
                        said,
                    ))
                }
                Err(EngineError::Refused { message, .. }) => ignored(Some(&id), message),
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn record(
        &self,
        caller: &Caller,
        id: &IncidentId,
        hook: &Webhook,
        route: &Route,
    ) -> Result<(), EngineError> {
        self.engine()
            .opener()
            .alert_event(id.as_str(), &caller.actor(), hook, &route.name)
            .await
            .map(drop)
    }

    /// Records a group no incident took (one meta-plane write) and answers 202.
    fn unrouted(
        &self,
        caller: &Caller,
        hook: &Webhook,
        received: u64,
        route: Option<&Route>,
        why: &str,
    ) -> Result<AlertReceipt, ServiceError> {
        let record = UnroutedAlert::of(
            hook,
            received,
            &caller.actor(),
            route.map(|r| r.name.as_str()),
            why,
        );
        let key = keys::alert_unrouted(received, &hook.group_key);
        // Create, never overwrite: the key is this webhook's own.
        self.engine()
            .incidents()
            .store()
            .meta_create_record(&key, &record)?;
        if let Some(notifier) = self.notifier() {
            notifier.unrouted_recorded(&key.to_string(), received);
        }
        let said = format!("unrouted: {why} (recorded; `runbox alerts` lists it)");
        Ok(AlertReceipt::new(AlertOutcome::Unrouted, None, route, said))
    }

    /// Starts running `id` in the background as `caller` with the `run`
    /// power (see the module's docs).
    fn auto_run(self: &Arc<Self>, caller: &Caller, id: IncidentId) {
        let runner = Caller::agent(caller.name.clone(), Power::Run);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run_until_stopped(&runner, id.as_str()).await });
    }

    /// Runs one step after another until the incident stops, waits, or
    /// holds a step `caller` may not run (said in a note).
    async fn run_until_stopped(self: &Arc<Self>, caller: &Caller, id: &str) {
        let mut stepped = 0;
        while stepped < MAX_AUTO_STEPS {
            match self.run_step(caller, id).await {
                Ok(report) if report.state == "stepped" => stepped += 1,
                Ok(report) if report.state == "running" => tokio::time::sleep(AUTO_POLL).await,
                Ok(_) => return,
                Err(e) => {
                    let note = format!("the route's auto run stopped: {}", e.message);
                    if let Err(e) = self.engine().runs().note(id, &caller.actor(), &note).await {
                        tracing::warn!(incident = id, "auto run: cannot add its note: {e}");
                    }
                    return;
                }
            }
        }
    }
}

/// Whether opening failed for something about the route, its params or
/// its runbook (the group is recorded as unrouted, with why), rather than
/// the store (the webhook is refused, and Alertmanager sends it again).
fn is_about_the_route(e: &EngineError) -> bool {
    matches!(
        engine_error_code(e),
        ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::NotFound
    )
}
