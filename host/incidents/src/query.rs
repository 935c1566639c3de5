//! Reading incidents: what `status`, `timeline`, `list`, `kv`, `export` and
//! `verify` need. No sandbox, no writes: [`Incidents`] works on a store
//! opened read-only.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use runbox_core::event::EventKind;
use runbox_core::ident::IncidentId;
use runbox_core::records::{
    Checkpoint, InFlight, IncidentMeta, Owner, Status, StepRecord, TimelineEvent,
};
use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::ToolRegistry;
use runbox_store::keys::{self, Group, Key, Prefix};
use runbox_store::{EncodedPage, Op, PAGE, Store, StoreError, StoreExt, Values};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ReadError, Result};

/// A summary line for `runbox list`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentSummary {
    /// Id.
    pub id: IncidentId,
    /// Status.
    pub status: Status,
    /// Owner.
    pub owner: Owner,
    /// The runbook.
    pub runbook: String,
    /// The next or current step.
    pub step: Option<String>,
}

/// Where an incident stands for its runner: [`Incidents::standing`].
#[derive(Debug, Clone)]
pub struct Standing {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The status.
    pub status: Status,
    /// Who owns it.
    pub owner: Owner,
    /// Bytes of attempts recorded for replay so far.
    pub recorded_bytes: u64,
}

impl Standing {
    /// The records it is read from, in the order [`Standing::decode`] takes.
    pub fn keys(id: &IncidentId) -> Group {
        Group::new()
            .with(&keys::checkpoint(id))
            .with(&keys::status(id))
            .with(&keys::owner(id))
            .with(&keys::recorded_bytes(id))
    }

    /// Decodes what the store read for [`Standing::keys`] (no checkpoint,
    /// status or owner: [`ReadError::UnknownIncident`]).
    pub fn decode(id: &IncidentId, read: Values) -> Result<Standing> {
        let Ok([checkpoint, status, owner, recorded]) = <[_; 4]>::try_from(read) else {
            let key = keys::checkpoint(id).to_string();
            let message = "the store answered four keys with another number of values";
            return Err(StoreError::io(Op::Read, Some(&key), message).into());
        };
        Ok(Standing {
            checkpoint: decode_required(id, &keys::checkpoint(id), checkpoint)?,
            status: decode_required(id, &keys::status(id), status)?,
            owner: decode_required(id, &keys::owner(id), owner)?,
            recorded_bytes: recorded
                .map(|b| keys::recorded_bytes(id).decode(&b))
                .transpose()?
                .unwrap_or(0),
        })
    }
}

/// What `runbox status` shows.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IncidentView {
    /// Id.
    pub id: IncidentId,
    /// Status.
    pub status: Status,
    /// Owner.
    pub owner: Owner,
    /// The runbook.
    pub runbook: String,
    /// Params.
    pub params: BTreeMap<String, String>,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The step waiting for approval, if any.
    pub pending_approval: Option<String>,
    /// An attempt in doubt, if any.
    pub in_doubt: Option<InFlight>,
    /// Why it stands where it stands: the last notable timeline message.
    pub why: Option<String>,
    /// The newest step record (its output or reason, logs and where the
    /// incident went next), without its recording.
    pub last_step: Option<StepRecord>,
    /// A dry run: its mutating tool calls were intercepted, never run.
    pub dry_run: bool,
    /// The scope of the brake it escalated under, until that is released.
    pub braked_by: Option<String>,
    /// The brakes engaged fleet-wide: a mutating step they cover escalates
    /// instead of running, until a human releases them.
    pub brakes: Vec<crate::fleet::EngagedBrake>,
    /// Notifications not delivered yet: waiting for a retry, or parked
    /// until `runbox notify retry`.
    pub undelivered: Vec<crate::Notification>,
    /// The alert group behind it, as its newest webhook left it (an
    /// incident an alert opened; none for others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<runbox_core::alert::AlertState>,
}

/// The step an incident runs next, as its runbook declares it: what an
/// agent needs to know before asking to run it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct NextStep {
    /// The step id.
    pub step: String,
    /// Its attempt number.
    pub attempt: u32,
    /// Its action.
    pub action: String,
    /// Whether it may call a mutating tool (needs the mutation token).
    pub mutates: bool,
    /// Whether it may write step KV.
    pub writes_kv: bool,
    /// Whether a human must approve each attempt.
    pub high_impact: bool,
    /// Who may approve (`human:NAME`); empty: any registered human.
    pub approvers: Vec<String>,
    /// How many distinct humans must approve.
    pub approvals: u32,
    /// Earliest start of the attempt (retry backoff), ms since the epoch.
    pub not_before_ms: Option<u64>,
    /// When the cooldown after the last destructive step lets this
    /// (mutating) step run, ms since the epoch.
    pub cooldown_until_ms: Option<u64>,
}

/// The incidents of one store, read-only.
#[derive(Clone)]
pub struct Incidents {
    store: Arc<dyn Store>,
    /// Where the humans who may decide are listed.
    signers: SignersAt,
}

/// Where the humans who may decide are listed.
#[derive(Clone, Debug)]
enum SignersAt {
    /// Nowhere: every decision is refused.
    Nowhere,
    /// An allowed_signers file (and the passkeys beside it).
    File(PathBuf),
    /// The fleet's signers document in the store ([`crate::config`]).
    Store,
}

impl Incidents {
    /// Queries over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Incidents {
            store,
            signers: SignersAt::Nowhere,
        }
    }

    /// The allowed_signers file (git's format) listing the humans whose
    /// signed decisions count, read afresh for each decision and check.
    /// Default: none, so every human decision is refused and `verify`
    /// reports every signature as unverifiable.
    pub fn with_allowed_signers(mut self, path: impl Into<PathBuf>) -> Self {
        self.signers = SignersAt::File(path.into());
        self
    }

    /// The humans are the fleet's signers document in the store (a store
    /// several runners share), read afresh for each decision and check.
    pub fn with_config_in_store(mut self) -> Self {
        self.signers = SignersAt::Store;
        self
    }

    /// Whether the fleet's configuration is read from the store.
    pub fn config_in_store(&self) -> bool {
        matches!(self.signers, SignersAt::Store)
    }

    /// The allowed_signers file this reads, if any.
    pub fn signers_path(&self) -> Option<&std::path::Path> {
        match &self.signers {
            SignersAt::File(path) => Some(path),
            SignersAt::Nowhere | SignersAt::Store => None,
        }
    }

    /// The humans who may decide, read afresh: one removed stops counting
    /// at once.
    pub fn signers(&self) -> Result<runbox_trust::AllowedSigners> {
        Ok(self.signers_fenced()?.0)
    }

    /// [`Incidents::signers`], and, when they are the store's documents,
    /// the versions read: a commit acting on a decision they verified
    /// carries them, so it lands only while they are unchanged.
    pub fn signers_fenced(
        &self,
    ) -> Result<(runbox_trust::AllowedSigners, Vec<crate::config::Fence>)> {
        match &self.signers {
            SignersAt::File(path) => Ok((
                runbox_trust::AllowedSigners::read_with_passkeys(path)?,
                Vec::new(),
            )),
            SignersAt::Store => crate::config::registry(&*self.store),
            SignersAt::Nowhere => Ok((runbox_trust::AllowedSigners::default(), Vec::new())),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A record every incident has; its absence means no such incident.
    pub fn required<T: DeserializeOwned>(&self, id: &IncidentId, key: &Key<T>) -> Result<T> {
        let read = self.store.read(key)?;
        read.ok_or_else(|| ReadError::UnknownIncident(id.to_string()))
    }

    /// The incident's meta record (no such incident: [`ReadError::UnknownIncident`]).
    pub fn meta(&self, id: &IncidentId) -> Result<IncidentMeta> {
        self.required(id, &keys::meta(id))
    }

    /// The incident's checkpoint record (no such incident: [`ReadError::UnknownIncident`]).
    pub fn checkpoint(&self, id: &IncidentId) -> Result<Checkpoint> {
        self.required(id, &keys::checkpoint(id))
    }

    /// What the run loop decides the next step on, in one read (one etcd
    /// request, not four): the checkpoint, status, owner and the bytes
    /// recorded so far (no such incident: [`ReadError::UnknownIncident`]).
    pub fn standing(&self, id: &IncidentId) -> Result<Standing> {
        Standing::decode(id, self.store.get_many(&Standing::keys(id))?)
    }

    /// The incident's status record (no such incident: [`ReadError::UnknownIncident`]).
    pub fn status_of(&self, id: &IncidentId) -> Result<Status> {
        self.required(id, &keys::status(id))
    }

    /// The incident's owner record (no such incident: [`ReadError::UnknownIncident`]).
    pub fn owner_of(&self, id: &IncidentId) -> Result<Owner> {
        self.required(id, &keys::owner(id))
    }

    /// The runbook as it was opened, and its tool registry.
    pub fn runbook(&self, meta: &IncidentMeta) -> Result<(LoadedRunbook, Arc<ToolRegistry>)> {
        let base = PathBuf::from(&meta.base_dir);
        let rb = LoadedRunbook::parse(
            &meta.runbook_text,
            Path::new(&meta.runbook_path),
            base.clone(),
        )?;
        let tools = match (&meta.tools_text, rb.tools_path()) {
            (Some(text), Some(path)) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or(base);
                ToolRegistry::from_toml(text, &path, dir)?.with_recorded(meta.tools_sha256.clone())
            }
            _ => ToolRegistry::empty(),
        };
        Ok((rb, Arc::new(tools)))
    }

    /// The timeline, in order.
    pub fn timeline(&self, id: &str) -> Result<Vec<TimelineEvent>> {
        let id = parse_id(id)?;
        self.meta(&id)?;
        Ok(self
            .store
            .read_all(&keys::timeline(&id))?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// The timeline, in order, read a page at a time: memory stays bounded
    /// however long the incident is (exports of millions of events).
    pub fn events(&self, id: &str) -> Result<Events> {
        self.events_after(id, None)
    }

    /// The timeline after sequence number `after` (all of it when `None`).
    pub fn events_after(&self, id: &str, after: Option<u64>) -> Result<Events> {
        Ok(Events(self.timeline_pages(id, after)?))
    }

    /// The timeline's pages after `after`, of an incident that exists.
    fn timeline_pages(&self, id: &str, after: Option<u64>) -> Result<Paged<TimelineEvent>> {
        let id = parse_id(id)?;
        self.meta(&id)?;
        let mut paged = Paged::new(self.store.clone(), keys::timeline(&id), PAGE);
        paged.after = after.map(|seq| keys::event(&id, seq));
        Ok(paged)
    }

    /// The incident's status.
    pub fn status(&self, id: &str) -> Result<Status> {
        self.status_of(&parse_id(id)?)
    }

    /// The incident's checkpoint version: it changes with every commit.
    pub fn version_of(&self, id: &str) -> Result<u64> {
        Ok(self.checkpoint(&parse_id(id)?)?.version)
    }

    /// The timeline as stored, a page of (key, JSON) at a time: for
    /// exports that decode events borrowing from the page.
    pub fn event_pages(&self, id: &str) -> Result<EventPages> {
        Ok(EventPages(self.timeline_pages(id, None)?))
    }

    /// The records of one step, attempt by attempt, read a few at a time
    /// (a record may carry a large recording).
    pub fn attempts(&self, id: &str, step: &str) -> Result<Attempts> {
        let id = parse_id(id)?;
        Ok(Attempts(Paged::new(
            self.store.clone(),
            keys::step_attempts(&id, step),
            ATTEMPTS_PAGE,
        )))
    }

    /// The step the incident runs next, if any (none once it is over).
    pub fn next_step(&self, id: &str) -> Result<Option<NextStep>> {
        let id = parse_id(id)?;
        let meta = self.meta(&id)?;
        let cp = self.checkpoint(&id)?;
        let Some(step_id) = cp.step.clone() else {
            return Ok(None);
        };
        let (rb, tools) = self.runbook(&meta)?;
        let Some(step) = rb.step(&step_id) else {
            return Ok(None);
        };
        let mutates = tools.modes(&step.grants).mutate;
        let cooldown_until_ms = match mutates && step.cooldown_ms > 0 {
            true => self
                .store
                .read(&keys::last_destructive(&id))?
                .map(|last| last.cooldown_until(step.cooldown_ms)),
            false => None,
        };
        Ok(Some(NextStep {
            cooldown_until_ms,
            attempt: cp.attempt,
            action: step.action.clone().unwrap_or_else(|| step.id.clone()),
            mutates,
            writes_kv: !step.grants.kv_write.is_empty(),
            high_impact: step.impact == runbox_core::runbook::Impact::High,
            approvers: step
                .approvers
                .iter()
                .map(|a| format!("human:{a}"))
                .collect(),
            approvals: step.approvals.max(1),
            not_before_ms: cp.not_before_ms,
            step: step_id,
        }))
    }

    /// What was fixed when the incident was opened: runbook, params, modules.
    pub fn incident_meta(&self, id: &str) -> Result<IncidentMeta> {
        self.meta(&parse_id(id)?)
    }

    /// One attempt's step record, if it was committed.
    pub fn step_record(&self, id: &str, step: &str, attempt: u32) -> Result<Option<StepRecord>> {
        let id = parse_id(id)?;
        Ok(self.store.read(&keys::step(&id, step, attempt))?)
    }

    /// The newest event of a kind that `wanted` accepts among the last
    /// [`LOOKBACK`] events, read backwards a page at a time: its cost
    /// follows how far back it is, never the incident's length.
    pub fn last_event(
        &self,
        id: &IncidentId,
        wanted: impl Fn(EventKind) -> bool,
    ) -> Result<Option<TimelineEvent>> {
        let prefix = keys::timeline(id);
        let mut before: Option<Key<TimelineEvent>> = None;
        // The event wanted is nearly always among the newest few: pages
        // start small and double, so a long timeline costs no more than a
        // short one (a first page of 1,024 made `status` 60x slower at
        // 100,000 events).
        let (mut size, mut seen) = (8, 0);
        while seen < LOOKBACK {
            let size_now = size.min(LOOKBACK - seen);
            let page = self.store.read_back(&prefix, before.as_ref(), size_now)?;
            let read = page.len();
            if let Some(found) = page.iter().find(|(_, event)| wanted(event.kind)) {
                return Ok(Some(found.1.clone()));
            }
            if read < size_now {
                return Ok(None);
            }
            seen += read;
            before = page.into_iter().last().map(|(k, _)| k);
            size = (size * 2).min(PAGE);
        }
        Ok(None)
    }

    /// Every step record, in the order the attempts started.
    pub fn step_records(&self, id: &str) -> Result<Vec<StepRecord>> {
        let id = parse_id(id)?;
        self.meta(&id)?;
        let mut records: Vec<StepRecord> = self
            .store
            .read_all(&keys::steps(&id))?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        // Steps of one incident never overlap, so the order their records
        // were first committed in is the order they started: clocks tie
        // when two steps run within one millisecond.
        let mut committed: HashMap<(String, u32), u64> = HashMap::new();
        for event in self.events(id.as_str())? {
            let event = event?;
            if let (true, Some(step), Some(attempt)) =
                (event.kind.commits_record(), event.step, event.attempt)
            {
                committed.entry((step, attempt)).or_insert(event.seq);
            }
        }
        records.sort_by_cached_key(|r| {
            let seq = committed.get(&(r.step.clone(), r.attempt));
            (seq.copied().unwrap_or(u64::MAX), r.started_at_ms, r.attempt)
        });
        Ok(records)
    }

    /// The committed step KV of an incident.
    pub fn kv(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let id = parse_id(id)?;
        self.meta(&id)?;
        Ok(self.store.kv_scan(&id)?)
    }

    /// Every incident id.
    pub fn ids(&self) -> Result<Vec<IncidentId>> {
        Ok(self
            .store
            .read_all(&keys::incidents())?
            .into_iter()
            .map(|(_, id)| id)
            .collect())
    }

    /// All incidents.
    pub fn list(&self) -> Result<Vec<IncidentSummary>> {
        self.ids()?
            .into_iter()
            .map(|id| {
                let m = self.meta(&id)?;
                Ok(IncidentSummary {
                    status: self.status_of(&id)?,
                    owner: self.owner_of(&id)?,
                    step: self.checkpoint(&id)?.step,
                    runbook: m.runbook_name,
                    id,
                })
            })
            .collect()
    }

    /// What `runbox status` shows.
    pub fn view(&self, id: &str) -> Result<IncidentView> {
        let id = parse_id(id)?;
        let meta = self.meta(&id)?;
        let checkpoint = self.checkpoint(&id)?;
        let status = self.status_of(&id)?;
        // Data dirs of 0.1 have no `why` record: look back for it.
        let why = match self.store.read(&keys::why(&id))? {
            Some(recorded) => recorded,
            None => self
                .last_event(&id, EventKind::explains_status)?
                .map(|e| e.message),
        };
        let last_step = match self.last_event(&id, EventKind::commits_record)? {
            Some(TimelineEvent {
                step: Some(step),
                attempt: Some(attempt),
                ..
            }) => self
                .store
                .read(&keys::step(&id, &step, attempt))?
                .map(|r| StepRecord {
                    recording: None,
                    ..r
                }),
            _ => None,
        };
        Ok(IncidentView {
            dry_run: self.store.exists(&keys::dry_run(&id))?,
            braked_by: self.store.read(&keys::braked(&id))?.flatten(),
            brakes: self.brakes()?,
            undelivered: self
                .notifications(&id)?
                .into_iter()
                .filter(crate::Notification::is_owed)
                .collect(),
            alert: self.store.read(&keys::alert(&id))?,
            last_step,
            status,
            owner: self.owner_of(&id)?,
            runbook: meta.runbook_name,
            params: meta.params,
            pending_approval: (status == Status::AwaitingApproval)
                .then(|| checkpoint.step.clone())
                .flatten(),
            in_doubt: checkpoint.in_flight.clone(),
            checkpoint,
            why,
            id,
        })
    }
}

/// Records under one prefix, decoded one at a time from pages of `size`.
struct Paged<T> {
    store: Arc<dyn Store>,
    prefix: Prefix<T>,
    size: usize,
    after: Option<Key<T>>,
    page: std::vec::IntoIter<(Key<T>, Vec<u8>)>,
    done: bool,
}

impl<T: DeserializeOwned> Paged<T> {
    fn new(store: Arc<dyn Store>, prefix: Prefix<T>, size: usize) -> Self {
        Paged {
            store,
            prefix,
            size,
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    /// The next page, empty at the end.
    fn next_page(&mut self) -> Result<EncodedPage<T>> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = self
            .store
            .read_page_encoded(&self.prefix, self.after.as_ref(), self.size);
        let page = page.inspect_err(|_| self.done = true)?;
        self.done = page.len() < self.size;
        self.after = page.last().map(|(k, _)| k.clone());
        Ok(page)
    }

    /// The next record, decoded, from the current page or the next.
    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some((key, bytes)) = self.page.next() {
                return Some(key.decode(&bytes).map_err(ReadError::from));
            }
            match self.next_page() {
                Ok(page) if page.is_empty() => return None,
                Ok(page) => self.page = page.into_iter(),
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

/// The timeline of one incident, a page ([`PAGE`] events) at a time
/// ([`Incidents::events`]).
pub struct Events(Paged<TimelineEvent>);

impl Iterator for Events {
    type Item = Result<TimelineEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

/// The timeline as stored, page by page ([`Incidents::event_pages`]).
pub struct EventPages(Paged<TimelineEvent>);

impl Iterator for EventPages {
    type Item = Result<EncodedPage<TimelineEvent>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.0.next_page() {
            Ok(page) if page.is_empty() => None,
            other => Some(other),
        }
    }
}

/// The records of one step in attempt order ([`Incidents::attempts`]).
pub struct Attempts(Paged<StepRecord>);

impl Iterator for Attempts {
    type Item = Result<StepRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

/// Step records per page of [`Incidents::attempts`]: few, since each may
/// carry a recording of what its attempt saw.
const ATTEMPTS_PAGE: usize = 32;

/// How many of the newest events `run` looks through for the reason an
/// incident stopped (and `status` for its "why" on a data dir written before
/// the `why` record existed): the event wanted is committed with the status
/// it explains, so it is among the newest.
pub const LOOKBACK: usize = 4096;

/// Validates an incident id handed in from outside.
pub fn parse_id(id: &str) -> Result<IncidentId> {
    IncidentId::new(id).map_err(|source| ReadError::InvalidName {
        what: "incident id",
        source,
    })
}

/// A record of incident `id` read under `key`, decoded; none: the incident
/// is unknown.
fn decode_required<T: DeserializeOwned>(
    id: &IncidentId,
    key: &Key<T>,
    bytes: Option<Vec<u8>>,
) -> Result<T> {
    let bytes = bytes.ok_or_else(|| ReadError::UnknownIncident(id.to_string()))?;
    Ok(key.decode(&bytes)?)
}
