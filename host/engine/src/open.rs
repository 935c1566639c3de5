//! Opening an incident: the runbook validated whole (every module exists,
//! matches its pin, loads and imports nothing its grants do not cover;
//! params never move a grant into another plane), its step KV seeded, all
//! in the incident's first commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use runbox_core::attempt::ErrorCategory;
use runbox_core::attempt::StepError;
use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, IncidentMeta, Owner, Status};
use runbox_core::runbook::{LoadedRunbook, RunbookError, StepSpec};
use runbox_core::time::now_ms;
use runbox_core::tools::{ToolError, ToolRegistry};
use runbox_sandbox::{Capabilities, PrepareError, PreparedStep};
use runbox_store::keys;
use runbox_store::{StoreError, StoreExt};
use tracing::info;

use crate::change::{self, Base, Change};
use crate::{Engine, EngineError, Result};

/// Refuses a step whose KV grants this incident's parameters would move
/// into a plane the grants do not name (`{ns}:svc/**` with `ns=shared`):
/// such a step would reach state shared across incidents that its
/// runbook's reviewer never saw granted.
fn check_planes(
    rb: &LoadedRunbook,
    step: &StepSpec,
    params: &BTreeMap<String, String>,
) -> Result<()> {
    let input_params = runbox_core::policy::params_from_input(&rb.step_input(step, params));
    for (field, patterns) in [
        ("grants.kv_read", &step.grants.kv_read),
        ("grants.kv_write", &step.grants.kv_write),
    ] {
        // Other pattern errors stop the step when it runs, as before.
        if let Err(e @ runbox_core::policy::PolicyError::ParamPlane { .. }) =
            runbox_core::policy::KeyPatterns::compile(patterns, &input_params)
        {
            return Err(RunbookError::Step {
                path: rb.path.clone(),
                step: step.id.clone(),
                field: field.to_string(),
                message: e.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

impl Engine {
    /// [`Opener::open`], with `more` adding to the opening commit (given
    /// the change and the actor): what must exist from the first moment
    /// the incident does, as an alert-opened incident's alert state.
    pub(crate) fn open_and(
        &self,
        id: &str,
        runbook_path: &Path,
        params: &BTreeMap<String, String>,
        actor: &str,
        kv: &BTreeMap<String, Vec<u8>>,
        more: impl FnOnce(&mut Change, &str),
    ) -> Result<IncidentMeta> {
        let id = runbox_incidents::parse_id(id)?;
        check_seed(&id, kv)?;
        // Opening is unsigned: an agent's act, never a human's.
        let actor = Owner::unsigned(actor).map_err(|message| EngineError::Refused {
            id: id.to_string(),
            message: format!("cannot open as {actor:?}: {message}"),
        })?;
        let actor = actor.to_string();
        let actor = actor.as_str();
        if self.store.exists(&keys::meta(&id))? {
            return Err(EngineError::Exists(id.to_string()));
        }
        let rb = LoadedRunbook::load(runbook_path)?;
        let params = rb.resolve_params(params)?;
        let tools_text = match rb.tools_path() {
            Some(path) => Some(
                runbox_core::files::read_capped(&path, runbox_core::files::MAX_USER_FILE_BYTES)
                    .map_err(|source| ToolError::Read { path, source })?,
            ),
            None => None,
        };
        let runbook_text =
            runbox_core::files::read_capped(runbook_path, runbox_core::files::MAX_USER_FILE_BYTES)
                .map_err(|source| RunbookError::Read {
                    path: runbook_path.to_path_buf(),
                    source,
                })?;
        let mut meta = IncidentMeta {
            id: id.to_string(),
            runbook_name: rb.runbook.runbook.name.clone(),
            runbook_path: runbook_path.display().to_string(),
            runbook_text,
            base_dir: rb.base_dir.display().to_string(),
            tools_text,
            params,
            modules: BTreeMap::new(),
            opened_at_ms: now_ms(),
            opened_by: actor.to_string(),
            signed_decisions: true,
            tools_sha256: BTreeMap::new(),
            seeded_kv: kv.keys().cloned().collect(),
        };
        let (rb, tools) = self.incidents.runbook(&meta)?;
        // Validate against grants alone: token and mode are run-time matters.
        let caps = Capabilities {
            allow_mutate: true,
            read_only: false,
        };
        for step in &rb.runbook.steps {
            check_planes(&rb, step, &meta.params)?;
            let prepared = self.step_module(&rb, step, &tools, None, caps)?;
            meta.modules
                .insert(step.id.clone(), prepared.sha256().to_string());
            // Tools are pinned like modules: each call is checked against
            // what they were now.
            for tool in &step.grants.tools {
                tools.check(tool)?;
                meta.tools_sha256.insert(tool.clone(), tools.digests(tool));
            }
        }
        let first = rb.runbook.steps[0].id.clone();
        let mut change = Change {
            status: Some(Status::Open),
            owner: Some(Owner::default_agent()),
            ..Change::default()
        };
        change.event(
            actor,
            EventKind::Opened,
            None,
            format!(
                "opened with runbook `{}` ({}), params {:?}{}; first step `{first}`",
                meta.runbook_name,
                runbox_core::text::count(rb.runbook.steps.len() as u64, "step"),
                meta.params,
                seeded_text(&meta.seeded_kv),
            ),
        );
        change.record(keys::meta(&id), &meta);
        change.record(keys::index(&id), &id);
        change.kv = kv
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        more(&mut change, actor);
        change::commit(
            &*self.store,
            &self.outbox,
            &id,
            Base::New(Checkpoint::first(&first)),
            change,
        )
        .map_err(|e| match e {
            StoreError::Conflict { .. } => EngineError::Exists(id.to_string()),
            e => e.into(),
        })?;
        info!(incident = %id, runbook = %meta.runbook_name, "incident opened");
        Ok(meta)
    }

    /// The most keys `open_with_kv` seeds.
    pub const MAX_SEED_KEYS: usize = runbox_core::case::MAX_SEED_KEYS;

    /// Reads a step's module, checks its pin and (if given) the hash recorded
    /// at open, and prepares it for `caps`: it must load and import nothing
    /// its grants (under `caps`) do not cover.
    pub(crate) fn step_module(
        &self,
        rb: &LoadedRunbook,
        step: &StepSpec,
        tools: &Arc<ToolRegistry>,
        recorded: Option<&str>,
        caps: Capabilities,
    ) -> Result<PreparedStep> {
        let path = rb.module_path(step);
        // Hashed once per change of the file: the same digest checks the
        // pins and keys the sandbox's caches.
        let (bytes, digest) = self.modules.read(&path)?;
        let sha = hex::encode(digest);
        let mismatch = |expected: &str, what: &str, fix: &str| EngineError::StepModule {
            step: step.id.clone(),
            error: StepError::new(
                ErrorCategory::InvalidModule,
                format!(
                    "{} has sha256 {sha}, but {what} is {expected}: refusing to run it; {fix}",
                    path.display()
                ),
            ),
        };
        if let Some(pin) = &step.sha256
            && !pin.eq_ignore_ascii_case(&sha)
        {
            return Err(mismatch(
                pin,
                "the runbook's pin",
                "put the reviewed module back, or review this one and `runbox pin` the runbook",
            ));
        }
        if let Some(expected) = recorded
            && expected != sha
        {
            return Err(mismatch(
                expected,
                "the hash recorded when the incident was opened",
                "put the module that was opened back (an incident runs only what it was opened with), or settle this incident and open a new one with the new module",
            ));
        }
        self.sandbox
            .prepare_digested(
                &step.id,
                &bytes,
                digest,
                &step.policy(),
                tools.clone(),
                caps,
            )
            .map_err(|e| match e {
                PrepareError::Host(e) => EngineError::Sandbox(e),
                PrepareError::Module(error) => EngineError::StepModule {
                    step: step.id.clone(),
                    error,
                },
            })
    }
}

/// The write paths that open incidents: by hand or by an agent
/// ([`Opener::open`], [`Opener::open_with_kv`]), or from an alert
/// ([`Opener::open_for_alert`], [`Opener::alert_event`]). From
/// [`Engine::opener`].
#[derive(Clone, Copy)]
pub struct Opener<'a> {
    pub(crate) engine: &'a Engine,
}

impl Engine {
    /// Opening incidents ([`Opener`]).
    pub fn opener(&self) -> Opener<'_> {
        Opener { engine: self }
    }
}

impl Opener<'_> {
    /// Opens an incident: validates the runbook fully (every module exists,
    /// matches its pin, loads, and imports nothing its grants do not cover)
    /// and records it with the sha256 of every module.
    pub fn open(
        &self,
        id: &str,
        runbook_path: &Path,
        params: &BTreeMap<String, String>,
        actor: &str,
    ) -> Result<IncidentMeta> {
        self.open_with_kv(id, runbook_path, params, actor, &BTreeMap::new())
    }

    /// [`Opener::open`] with the incident's step KV seeded in the opening
    /// commit (`runbox open --kv seed.json`): a restart budget, a lock, any
    /// value a first step reads. At most [`Engine::MAX_SEED_KEYS`] keys,
    /// each within the default key and value size limits.
    pub fn open_with_kv(
        &self,
        id: &str,
        runbook_path: &Path,
        params: &BTreeMap<String, String>,
        actor: &str,
        kv: &BTreeMap<String, Vec<u8>>,
    ) -> Result<IncidentMeta> {
        self.engine
            .open_and(id, runbook_path, params, actor, kv, |_, _| {})
    }
}

/// A KV seed within the default key and value limits.
/// What the `opened` event says of a KV seed: nothing without one, else its
/// keys (the first [`SEED_KEYS_SHOWN`] of them; `runbox kv` shows them all).
fn seeded_text(keys: &[String]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = keys
        .iter()
        .take(SEED_KEYS_SHOWN)
        .map(String::as_str)
        .collect();
    let more = match keys.len().saturating_sub(SEED_KEYS_SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "; KV seeded with {} {shown:?}{more}",
        runbox_core::text::count(keys.len() as u64, "key")
    )
}

/// How many seeded keys the `opened` event names.
const SEED_KEYS_SHOWN: usize = 20;

fn check_seed(id: &IncidentId, kv: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    use runbox_core::policy::Limits;
    let refuse = |message: String| EngineError::Refused {
        id: id.to_string(),
        message: format!("KV seed: {message}"),
    };
    if kv.len() > Engine::MAX_SEED_KEYS {
        return Err(refuse(format!(
            "{} keys, at most {}",
            kv.len(),
            Engine::MAX_SEED_KEYS
        )));
    }
    for (key, value) in kv {
        if key.starts_with(runbox_core::limits::SHARED_KEY) {
            return Err(refuse(format!(
                "key {key:?} is in the shared namespace, which spans incidents: an incident's seed cannot write it"
            )));
        }
        if key.is_empty() || key.len() > Limits::DEFAULT_KV_KEY_BYTES as usize || key.contains('\0')
        {
            return Err(refuse(format!(
                "key {key:?} must be 1..={} bytes without NUL",
                Limits::DEFAULT_KV_KEY_BYTES
            )));
        }
        if value.len() > Limits::DEFAULT_KV_VALUE_BYTES as usize {
            return Err(refuse(format!(
                "value of `{key}` is {} bytes, more than {}",
                value.len(),
                Limits::DEFAULT_KV_VALUE_BYTES
            )));
        }
    }
    Ok(())
}
