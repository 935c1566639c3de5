//! The web console at `/ui`: live incidents, what a step will do, and
//! decisions signed with a passkey in the browser.
//!
//! It is another front-end over the one [`Service`]: it reads through the
//! same operations agents use (as a [`Caller::human`] with `read`), and a
//! decision made here is the statement the CLI would build, signed by a
//! WebAuthn assertion whose challenge is that statement's digest, handed
//! to the same `Humans::decide` with the same binding, expiry, nonce,
//! two-person and approver rules.
//!
//! | what | how it is held |
//! |---|---|
//! | who may read | a passkey sign-in: a session cookie (`HttpOnly; SameSite=Strict`, `Secure` unless on `http://localhost`), [`SESSION_TTL`] |
//! | what a session may do | read, and engage a brake (it only stops); never decide |
//! | a decision | a fresh assertion over that decision's statement, verified by the engine like an SSH signature, kept with it so `runbox verify` checks it again offline |
//! | a state-changing request | the console's exact `Origin`, and the session's CSRF token (`X-CSRF-Token`, or a form's `csrf` field) |
//! | agent tokens | never a console session; a console cookie is never an agent's credential (`/v1` and `/mcp` read bearer tokens only) |
//! | the pages | maud escapes every string; a CSP with no inline script or style, `frame-ancestors 'none'` |

mod assets;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use runbox_core::ident::Name;
use runbox_trust::passkey::{assertion_options, statement_challenge, verify_assertion};
use runbox_trust::{Action, Decision, PasskeyEntry, Statement};

use crate::agents::Caller;
use crate::error::{ErrorCode, ServiceError};
use crate::service::{BrakeArgs, BrakeStatementArgs, Service, StatementArgs};

pub use crate::changes::LOOK_EVERY;
pub use session::{CHALLENGE_TTL, Console, ENROLLMENT_TTL, MAX_PENDING, SESSION_TTL, Session};

/// The session cookie's name.
pub const COOKIE: &str = "runbox_console";

/// Every console page's Content-Security-Policy: scripts and styles from
/// the console's own files only, nothing inline, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; worker-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The postmortem page's policy: its own inline CSS, no script at all.
const POSTMORTEM_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'";

/// The console's routes, under `/ui`.
pub(crate) fn router(service: Arc<Service>) -> Router<Arc<Service>> {
    Router::new()
        .route("/ui", get(incidents_page))
        .route("/ui/incidents/{id}", get(incident_page))
        .route("/ui/incidents/{id}/postmortem", get(postmortem_page))
        .route("/ui/brakes", get(brakes_page).post(engage_brake))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/login/options", post(login_options))
        .route("/ui/logout", post(logout))
        .route("/ui/enroll", get(enroll_page).post(enroll))
        .route("/ui/enroll/options", post(enroll_options))
        .route("/ui/decisions/options", post(decision_options))
        .route("/ui/decisions", post(decide))
        .route("/ui/events", get(events))
        .route("/ui/assets/{version}/{name}", get(asset))
        .layer(middleware::from_fn_with_state(service, guarded))
}

/// The headers every console answer carries, and the `Origin` check of
/// every state-changing request.
async fn guarded(State(s): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::POST && !same_origin(&s, &req) {
        ServiceError::forbidden(
            "a cross-site request: the console takes changes from its own pages only",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser
    // sends `Origin: null` with a form's POST, which the check above
    // could not tell from a cross-site one.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Whether a request's `Origin` is the console's own (set by `serve`).
fn same_origin(s: &Service, req: &Request) -> bool {
    let Ok(party) = s.console().party() else {
        return false;
    };
    let expected = party.origin().origin().ascii_serialization();
    req.headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o == expected)
}

/// The session a request's cookie names, with its id.
fn session_of(s: &Service, headers: &HeaderMap) -> Option<(String, Session)> {
    let cookies = headers.get_all(header::COOKIE);
    let id = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())?;
    let session = s.console().session(&id)?;
    Some((id, session))
}

/// The session, or a 401 for script requests.
fn signed_in(s: &Service, headers: &HeaderMap) -> Result<Session, ServiceError> {
    session_of(s, headers)
        .map(|(_, session)| session)
        .ok_or_else(|| {
            ServiceError::new(
                ErrorCode::Unauthorized,
                "not signed in to the console (or the session ended): sign in at /ui/login",
            )
        })
}

/// The session of a state-changing request whose CSRF token (`X-CSRF-Token`
/// or the form's `csrf`) is the session's.
fn checked(
    s: &Service,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<Session, ServiceError> {
    let session = signed_in(s, headers)?;
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(form_token)
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
        return Err(ServiceError::forbidden(
            "the request's CSRF token is missing or not this session's: reload the page",
        ));
    }
    Ok(session)
}

/// An HTML page's answer: the page, a redirect to sign in, or the error
/// as a page.
fn html_page(result: Result<String, ServiceError>) -> Response {
    match result {
        Ok(body) => Html(body).into_response(),
        Err(e) if e.code == ErrorCode::Unauthorized => Redirect::to("/ui/login").into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let main = maud::html! { h1 { "Cannot show this" } p { (e.message) } };
            (status, Html(pages::page("Error", None, "none", main, None))).into_response()
        }
    }
}

/// Query of the incident list.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
}

async fn incidents_page(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let ListQuery { q, status } = q.map(|Query(q)| q).unwrap_or_default();
    html_page((|| {
        let session = signed_in(&s, &headers)?;
        let caller = Caller::human(session.human.clone());
        let status = pages::StatusFilter::parse(&status).ok_or_else(|| {
            ServiceError::bad_request(format!(
                "status `{}` is none of the list's choices (any, active, or an incident status)",
                runbox_core::inert::shown(&status, 40)
            ))
        })?;
        let needle = q.to_lowercase();
        let mut rows = Vec::new();
        for summary in s.list_incidents(&caller)? {
            if !status.shows(summary.status) {
                continue;
            }
            let detail = s.get_incident(&caller, summary.id.as_str())?;
            let waiting = pages::waiting_on(&detail);
            let hay = format!(
                "{} {} {} {} {waiting}",
                summary.id, summary.runbook, summary.status, summary.owner
            )
            .to_lowercase();
            if hay.contains(&needle) {
                rows.push((summary, waiting));
            }
        }
        let main = pages::incidents(&rows);
        let filter = Some(pages::filter(&q, status));
        Ok(pages::page(
            "Incidents",
            Some(&session),
            "all",
            main,
            filter,
        ))
    })())
}

/// Query of an incident page: `after`, the last event a live page shows
/// (it then gets the timeline from there on; see [`pages::incident`]).
#[derive(Debug, Deserialize)]
struct IncidentQuery {
    after: Option<u64>,
}

async fn incident_page(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    html_page((|| {
        let session = signed_in(&s, &headers)?;
        let caller = Caller::human(session.human.clone());
        let after = q
            .map_err(|e| ServiceError::bad_request(format!("the incident page's query: {e}")))?
            .0
            .after;
        let main = incident_main(&s, &caller, &id, after)?;
        Ok(pages::page(&id, Some(&session), &id, main, None))
    })())
}

/// What an incident page shows, with its timeline after event `after` (all
/// of it when `None`): for a page, and for the parts live pages append.
fn incident_main(
    s: &Service,
    caller: &Caller,
    id: &str,
    after: Option<u64>,
) -> Result<maud::Markup, ServiceError> {
    let detail = s.get_incident(caller, id)?;
    let facts = match &detail.approval {
        Some(a) => Some(step_facts(s, id, &a.step)?),
        None => None,
    };
    let brakes = s.brakes(caller)?;
    let incidents = s.engine().incidents();
    let timeline = match after {
        None => pages::Timeline::Whole(incidents.timeline(id)?),
        Some(after) => pages::Timeline::After {
            after,
            events: incidents
                .events_after(id, Some(after))?
                .collect::<Result<_, _>>()?,
        },
    };
    Ok(pages::incident(&detail, facts.as_ref(), &brakes, &timeline))
}

/// The part of incident `c.id`'s page that changed, rendered once for
/// every stream that sends it (`None` when it cannot be: the pages then
/// fetch themselves).
async fn part(s: &Arc<Service>, caller: &Caller, c: &crate::changes::Changed) -> Option<Arc<str>> {
    let after = c.after?;
    let render = || {
        let (s, caller, id) = (s.clone(), caller.clone(), c.id.clone());
        async move {
            let rendered = tokio::task::spawn_blocking(move || {
                let main = incident_main(&s, &caller, &id, Some(after)).ok()?;
                Some(pages::live_part(&id, main))
            });
            rendered.await.ok().flatten().map(Arc::from)
        }
    };
    c.part.get_or_init(render).await.clone()
}

/// What step `step` of incident `id` will do, in plain words: what an
/// approver reads before signing.
fn step_facts(s: &Service, id: &str, step: &str) -> Result<pages::StepFacts, ServiceError> {
    let incidents = s.engine().incidents();
    let meta = incidents.incident_meta(id)?;
    let (rb, tools) = incidents.runbook(&meta)?;
    let spec = rb.step(step).ok_or_else(|| {
        ServiceError::new(
            ErrorCode::NotFound,
            format!("no step `{step}` in the runbook"),
        )
    })?;
    let tool_line = spec
        .grants
        .tools
        .iter()
        .map(|t| match tools.get(t) {
            Some(spec) => format!("{t} ({})", spec.mode),
            None => format!("{t} (not declared)"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = vec![
        (
            "Action".to_string(),
            spec.action.clone().unwrap_or_else(|| spec.id.clone()),
        ),
        ("Impact".into(), spec.impact.to_string()),
        (
            "Tools".into(),
            if tool_line.is_empty() {
                "none".into()
            } else {
                tool_line
            },
        ),
        (
            "KV writes".into(),
            if spec.grants.kv_write.is_empty() {
                "none".into()
            } else {
                spec.grants.kv_write.join(", ")
            },
        ),
        (
            "Limits".into(),
            format!(
                "{} ms, {} MiB",
                spec.limits.timeout_ms, spec.limits.memory_mib
            ),
        ),
        (
            "Approvals".into(),
            format!(
                "{} of {}",
                spec.approvals.max(1),
                if spec.approvers.is_empty() {
                    "any registered human".to_string()
                } else {
                    spec.approvers.join(", ")
                }
            ),
        ),
        (
            "Module sha256".into(),
            meta.modules
                .get(step)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
        ),
    ];
    if spec.cooldown_ms > 0 {
        lines.push((
            "Cooldown".into(),
            format!("{} ms after the last destructive step", spec.cooldown_ms),
        ));
    }
    Ok(pages::StepFacts { lines })
}

async fn postmortem_page(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let page = (|| {
        let session = signed_in(&s, &headers)?;
        s.get_incident(&Caller::human(session.human), &id)?;
        let p = runbox_report::postmortem(s.engine().incidents(), &id, false)
            .map_err(|e| ServiceError::bad_request(runbox_core::errors::one_line_of(&e)))?;
        Ok(runbox_report::html(&p))
    })();
    let mut response = html_page(page);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POSTMORTEM_CSP),
    );
    response
}

async fn brakes_page(State(s): State<Arc<Service>>, headers: HeaderMap) -> Response {
    html_page((|| {
        let session = signed_in(&s, &headers)?;
        let brakes = s.brakes(&Caller::human(session.human.clone()))?;
        let counts = s
            .engine()
            .incidents()
            .limit_counts()?
            .into_iter()
            .map(|(key, uses)| (key, uses.uses.len()))
            .collect::<Vec<_>>();
        let main = pages::brakes(&brakes, &counts);
        let form = Some(pages::engage_form(&session.csrf));
        Ok(pages::page("Brakes", Some(&session), "all", main, form))
    })())
}

/// The brake form.
#[derive(Debug, Deserialize)]
struct BrakeForm {
    csrf: String,
    scope: String,
    reason: String,
}

async fn engage_brake(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    form: Result<Form<BrakeForm>, FormRejection>,
) -> Response {
    let done = (|| {
        let Form(form) = form.map_err(|e| ServiceError::bad_request(e.body_text()))?;
        let session = checked(&s, &headers, Some(&form.csrf))?;
        let args = BrakeArgs {
            scope: form.scope,
            reason: form.reason,
        };
        s.engage_brake(&Caller::human(session.human), &args)
    })();
    match done {
        Ok(_) => Redirect::to("/ui/brakes").into_response(),
        Err(e) => html_page(Err(e)),
    }
}

async fn login_page(State(s): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let session = session_of(&s, &headers).map(|(_, s)| s);
    html_page(Ok(pages::page(
        "Sign in",
        session.as_ref(),
        "none",
        pages::login(),
        None,
    )))
}

async fn enroll_page() -> Response {
    html_page(Ok(pages::page(
        "Enroll",
        None,
        "none",
        pages::enroll(),
        None,
    )))
}

/// A JSON body, or a 400.
fn json<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ServiceError> {
    crate::http::body(b)
}

/// What the browser gets to start a sign-in.
#[derive(Debug, Serialize)]
struct LoginOffer {
    challenge: String,
    options: serde_json::Value,
}

async fn login_options(State(s): State<Arc<Service>>) -> Result<Json<LoginOffer>, ServiceError> {
    let party = s.console().party()?;
    let challenge = s.console().login_challenge()?;
    Ok(Json(LoginOffer {
        challenge: hex::encode(&challenge),
        options: assertion_options(&challenge, party.rp_id(), &[]),
    }))
}

/// A sign-in's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginAnswer {
    challenge: String,
    assertion: String,
}

/// Signed in.
#[derive(Debug, Serialize)]
struct SignedIn {
    human: String,
}

async fn login(
    State(s): State<Arc<Service>>,
    b: Result<Json<LoginAnswer>, JsonRejection>,
) -> Result<Response, ServiceError> {
    let answer = json(b)?;
    let challenge = hex::decode(&answer.challenge)
        .map_err(|_| ServiceError::bad_request("the challenge is not hex"))?;
    if !s.console().spend_login(&challenge) {
        return Err(ServiceError::forbidden(
            "this sign-in challenge is unknown, used or expired: start again",
        ));
    }
    let signers = s.signers()?;
    let all: Vec<&PasskeyEntry> = signers.passkeys().entries().iter().collect();
    let entry = verify_assertion(&all, &challenge, &answer.assertion)
        .map_err(|e| ServiceError::forbidden(e.to_string()))?;
    let human = Name::new(&entry.name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    let (id, _) = s.console().sign_in(human)?;
    let cookie = session_cookie(&s, &id, session::SESSION_TTL.as_secs())?;
    let mut response = Json(SignedIn {
        human: entry.name.clone(),
    })
    .into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// The session cookie: `Secure` unless the console is on
/// `http://localhost` (browsers keep Secure cookies over https only).
fn session_cookie(s: &Service, id: &str, max_age: u64) -> Result<HeaderValue, ServiceError> {
    let secure = s.console().party()?.origin().scheme() == "https";
    let value = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).map_err(|e| ServiceError::bad_request(e.to_string()))
}

/// The sign-out form.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let token = form.ok().map(|Form(f)| f.csrf);
    if let Err(e) = checked(&s, &headers, token.as_deref()) {
        return html_page(Err(e));
    }
    if let Some((id, _)) = session_of(&s, &headers) {
        s.console().sign_out(&id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    if let Ok(cookie) = session_cookie(&s, "", 0) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// An enrollment link's secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollAsk {
    token: String,
}

/// What the browser gets to make a passkey.
#[derive(Debug, Serialize)]
struct EnrollOffer {
    human: String,
    options: serde_json::Value,
}

async fn enroll_options(
    State(s): State<Arc<Service>>,
    b: Result<Json<EnrollAsk>, JsonRejection>,
) -> Result<Json<EnrollOffer>, ServiceError> {
    let ask = json(b)?;
    let party = s.console().party()?;
    s.adopt_enrollment(&ask.token)?;
    let signers = s.signers()?;
    s.console().with_enrollment(&ask.token, |e| {
        let existing: Vec<&PasskeyEntry> = signers.passkeys().of(e.human.as_str()).collect();
        let user_id = signers.passkeys().user_id_of(e.human.as_str());
        let reg = party
            .start_registration(e.human.as_str(), user_id, &existing)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
        e.registration = Some((reg.state, user_id));
        Ok(Json(EnrollOffer {
            human: e.human.to_string(),
            options: reg.options,
        }))
    })
}

/// An enrollment's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollAnswer {
    token: String,
    credential: String,
}

/// Enrolled.
#[derive(Debug, Serialize)]
struct Enrolled {
    human: String,
    label: String,
    credential: String,
    /// What must happen before it counts, if anything (on a shared store:
    /// a human's signed change lists it).
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

async fn enroll(
    State(s): State<Arc<Service>>,
    b: Result<Json<EnrollAnswer>, JsonRejection>,
) -> Result<Json<Enrolled>, ServiceError> {
    let answer = json(b)?;
    let party = s.console().party()?.clone();
    // Spent whatever comes of it: a link is used once.
    let link = s
        .console()
        .spend_enrollment(&answer.token)
        .filter(|e| e.expires > std::time::Instant::now());
    let Some(session::Enrollment {
        human,
        label,
        registration: Some((state, user_id)),
        ..
    }) = link
    else {
        return Err(ServiceError::forbidden(
            "this enrollment link is unknown, used or expired: ask for a new one (`runbox human add NAME --passkey`)",
        ));
    };
    let passkey = party
        .finish_registration(&answer.credential, &state)
        .map_err(|e| ServiceError::forbidden(e.to_string()))?;
    let entry = PasskeyEntry {
        name: human.to_string(),
        label: label.clone(),
        user_id,
        rp_id: party.rp_id().to_string(),
        origin: party.origin().clone(),
        added_ms: runbox_core::time::now_ms(),
        passkey,
    };
    let credential = entry.fingerprint();
    let next = s.add_passkey(entry)?;
    Ok(Json(Enrolled {
        human: human.to_string(),
        label,
        credential,
        next,
    }))
}

/// A decision the human is about to sign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionAsk {
    action: Action,
    #[serde(default)]
    incident: Option<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    outcome: Option<runbox_core::attempt::Outcome>,
    #[serde(default)]
    scope: Option<String>,
}

/// The statement to sign, what it says in plain words, and the options of
/// the assertion over its digest.
#[derive(Debug, Serialize)]
struct DecisionOffer {
    statement: String,
    summary: Vec<(String, String)>,
    options: serde_json::Value,
}

async fn decision_options(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Json<DecisionAsk>, JsonRejection>,
) -> Result<Json<DecisionOffer>, ServiceError> {
    let session = checked(&s, &headers, None)?;
    let ask = json(b)?;
    let caller = Caller::human(session.human.clone());
    let signer = session.human.to_string();
    let statement = if ask.action == Action::ReleaseBrake {
        let scope = ask
            .scope
            .ok_or_else(|| ServiceError::bad_request("release-brake needs a scope"))?;
        s.brake_statement(
            &caller,
            &BrakeStatementArgs {
                scope,
                signer: signer.clone(),
                ttl_s: None,
            },
        )?
    } else {
        let id = ask.incident.ok_or_else(|| {
            ServiceError::bad_request(format!("`{}` needs an incident", ask.action))
        })?;
        let args = StatementArgs {
            action: ask.action,
            signer: signer.clone(),
            step: ask.step,
            outcome: ask.outcome,
            ttl_s: None,
        };
        s.statement(&caller, &id, &args)?
    };
    let signers = s.signers()?;
    let mine: Vec<&PasskeyEntry> = signers.passkeys().of(&signer).collect();
    if mine.is_empty() {
        return Err(ServiceError::forbidden(format!(
            "human:{signer} holds no passkey"
        )));
    }
    let party = s.console().party()?;
    let options = assertion_options(&statement_challenge(&statement), party.rp_id(), &mine);
    let parsed =
        Statement::parse(&statement).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    Ok(Json(DecisionOffer {
        summary: summary(&parsed),
        statement,
        options,
    }))
}

/// A statement in plain words: every field it binds.
fn summary(s: &Statement) -> Vec<(String, String)> {
    let mut out = vec![
        ("Decision".to_string(), s.action.to_string()),
        ("By".into(), format!("human:{}", s.signer)),
    ];
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push((k.to_string(), v));
        }
    };
    add("Incident", s.incident.clone());
    add("Step", s.step.clone());
    add("Attempt", s.attempt.map(|a| a.to_string()));
    add("Outcome", s.outcome.clone());
    add("Brake", s.scope.clone());
    add("Module sha256", s.module_sha256.clone());
    add("Input, grants and tools (sha256)", s.subject_sha256.clone());
    add("While", s.state.as_ref().map(ToString::to_string));
    add("Deployment", s.audience.clone());
    add(
        "Expires",
        Some(runbox_core::time::format_ms(s.expires_at_ms)),
    );
    out
}

/// A signed decision from the browser.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionAnswer {
    statement: String,
    assertion: String,
}

/// What came of it.
#[derive(Debug, Serialize)]
struct Decided {
    done: String,
}

async fn decide(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Json<DecisionAnswer>, JsonRejection>,
) -> Result<Json<Decided>, ServiceError> {
    let session = checked(&s, &headers, None)?;
    let answer = json(b)?;
    let statement = Statement::parse(&answer.statement)
        .map_err(|e| ServiceError::bad_request(e.to_string()))?;
    if statement.signer != session.human.as_str() {
        return Err(ServiceError::forbidden(format!(
            "the statement is human:{}'s; this session is human:{}'s",
            statement.signer, session.human
        )));
    }
    let caller = Caller::human(session.human.clone());
    let decision = Decision {
        statement: answer.statement,
        signature: answer.assertion,
    };
    let done = if statement.action == Action::ReleaseBrake {
        let released = s.release_brake(&caller, &decision)?;
        format!(
            "released {} (by human:{})",
            released.scope, statement.signer
        )
    } else {
        let id = statement.incident.clone().unwrap_or_default();
        s.decide(&caller, &id, &decision)?.done
    };
    Ok(Json(Decided { done }))
}

/// Server-sent `changed` events while the session lasts: the incidents
/// that changed, each with the part of its page that changed when the
/// server can render it (`[{"id": ID, "part": HTML}]`; the id `*` means
/// anything may have changed).
async fn events(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ServiceError> {
    let (id, _) = session_of(&s, &headers).ok_or_else(|| {
        ServiceError::new(ErrorCode::Unauthorized, "not signed in to the console")
    })?;
    let listener = s.changes();
    let stream = futures_util::stream::unfold((listener, s, id), |(mut l, s, id)| async move {
        let changes = l.receiver.recv().await;
        let session = s.console().session(&id)?;
        let caller = Caller::human(session.human);
        let mut wire = Vec::new();
        match changes {
            Ok(crate::changes::Changes::Incidents(changed)) => {
                for c in changed.iter() {
                    let part = part(&s, &caller, c).await;
                    wire.push(crate::changes::WireChange {
                        id: c.id.clone(),
                        part,
                    });
                }
            }
            // A console that fell behind cannot know what it missed.
            Ok(crate::changes::Changes::Everything)
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                wire.push(crate::changes::WireChange::everything());
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
        let event = Event::default()
            .event("changed")
            .json_data(&wire)
            .unwrap_or_default();
        Some((Ok::<_, std::convert::Infallible>(event), (l, s, id)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    match assets::find(&version, &name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => ServiceError::new(ErrorCode::NotFound, "no such asset").into_response(),
    }
}
