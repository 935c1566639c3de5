//! # runbox-store-etcd: the state plane on etcd
//!
//! [`EtcdStore`] implements [`runbox_store::Store`] on an etcd cluster, so
//! an incident's state survives the machine running its recovery and
//! several runners can share the work. Every key lives under a prefix
//! (default `runbox/`), one letter per plane:
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}r/{key}` | incident records (`incident:{id}:…`, `index:{id}`) |
//! | `{prefix}k/{incident}/{key}` | step KV |
//! | `{prefix}m/{key}` | meta (the mutation token's hash, agents) |
//! | `{prefix}s/{key}` | the shared plane; a value's version is its etcd mod revision |
//! | `{prefix}o/{incident}` | the incident's owner: a runner's name, under its lease |
//! | `{prefix}c/{incident}` | the id of the incident's last commit |
//!
//! ## Commits and fences
//!
//! A commit is one etcd transaction. It compares the checkpoint's mod
//! revision (read just before, or remembered from this runner's own last
//! commit under its claim: a commit built on a version that moved is
//! [`StoreError::Conflict`]), the version of each shared value it read, and,
//! when this process holds the incident, the owner key's create revision:
//! the *fence*. A runner whose lease lapsed (it crashed, paused or was cut
//! off) has lost the owner key; whoever holds it now made it anew, with a
//! new create revision, so the lapsed runner's commits never land however
//! late it wakes ([`StoreError::Fenced`]). A commit whose answer is lost (a
//! timeout, a leader change) is settled by reading back the commit id it
//! wrote, never by guessing.
//!
//! Commits of different incidents that arrive while one is in flight are
//! sent together: one request whose nested transactions each keep their
//! own compares, so a refused one leaves the others alone (`group.rs`,
//! [`EtcdStore::group_stats`]).
//!
//! ## Within etcd's limits
//!
//! etcd takes at most 128 operations and about 1.5 MiB in one transaction
//! by default. A commit past either is refused before it is sent
//! ([`StoreError::TooLarge`], naming both), and reads are paged so no
//! answer nears the 4 MiB message cap.
//!
//! ## Its runtime
//!
//! The store has no runtime of its own: its client runs on the
//! multi-threaded tokio runtime it was connected on (the host's), which
//! must outlive it, and a call waits for its request without holding up
//! that runtime's other tasks, from a worker, a blocking thread or a
//! plain one (`runtime.rs`). Connecting elsewhere is refused
//! ([`RuntimeError`]), and a call after that runtime shut down fails naming
//! it.
//!
//! ```no_run
//! use runbox_store::{Store, StoreExt};
//! use runbox_store_etcd::{EtcdStore, Options};
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let _on_runtime = runtime.enter();
//! let store = EtcdStore::connect(&"etcd://10.0.0.1:2379,10.0.0.2:2379/runbox/".parse()?, Options::default())?;
//! let ids: Vec<_> = store.read_all(&runbox_store::keys::incidents())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod group;
mod lease;
mod runtime;
mod url;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use runbox_core::ident::IncidentId;
use runbox_core::sync::lock;
use runbox_store::keys::Group;
use runbox_store::{
    Batch, Claim, Expect, MetaSwap, Op, Page, Shared, Store, StoreError, Values, Versioned,
    check_expected, checkpoint_entry,
};

use group::{Answer, Cause, Groups, Pending, Sent};
use runtime::Host;

pub use group::GroupStats;
pub use lease::Lease;
pub use runtime::RuntimeError;
pub use url::{EtcdUrl, UrlError};

/// At most this many operations (and as many compares) in one transaction:
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// At most this many bytes of keys and values in one transaction, under
/// etcd's default `--max-request-bytes` (1.5 MiB) with room for framing.
pub const MAX_TXN_BYTES: usize = 1_500_000;
/// Records read per request: 32 records of the largest size stay under the
/// 4 MiB message cap... and most records are far smaller.
const READ_PAGE: usize = 32;
/// How often an operation is tried when a member does not answer, moving
/// to the next endpoint each time.
const TRIES: usize = 6;

/// How an [`EtcdStore`] behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runner's name, written in the owner key of each incident it
    /// holds. Default: `HOSTNAME-PID`.
    pub runner: String,
    /// The lease TTL of the runner's claims: how long after a runner stops
    /// renewing (a crash, a pause, a partition) another may take its
    /// incidents. Default: 10 s; etcd's minimum is 2 s.
    pub lease_ttl: Duration,
    /// Per-request timeout. Default: 5 s.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "runner".into());
        Options {
            runner: format!("{host}-{}", std::process::id()),
            lease_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The store on an etcd cluster.
pub struct EtcdStore {
    /// The runtime the client runs on: the one the store was connected on
    /// (`runtime.rs`).
    host: Host,
    /// The lease's renewals, stopped when the store drops.
    keeper: Mutex<Option<tokio::task::AbortHandle>>,
    conn: Arc<Conn>,
    prefix: String,
    options: Options,
    /// The runner's lease, granted on the first claim.
    lease: Mutex<Option<Arc<Lease>>>,
    /// Incidents this process claimed, with the fence (the owner key's
    /// create revision) its commits are compared on, and the checkpoint it
    /// last committed.
    claims: Mutex<HashMap<IncidentId, Held>>,
    /// Incident commits waiting to go to etcd together.
    groups: Groups,
}

/// One claimed incident.
struct Held {
    /// The owner key's create revision.
    fence: i64,
    /// The checkpoint this process last committed under this claim: its
    /// mod revision and bytes. The next commit compares on that revision
    /// instead of reading the checkpoint first (one round trip less per
    /// step); a commit from anywhere else moves the revision, so the
    /// compare fails and the commit reads the checkpoint to say why.
    checkpoint: Option<(i64, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.conn.endpoints)
            .field("prefix", &self.prefix)
            .field("runner", &self.options.runner)
            .finish()
    }
}

/// A client on one endpoint at a time, moving on when it stops answering:
/// etcd's client keeps sending to a dead member.
struct Conn {
    endpoints: Vec<String>,
    options: ConnectOptions,
    current: tokio::sync::Mutex<(usize, Option<Client>)>,
}

impl Conn {
    async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut current = self.current.lock().await;
        if let Some(c) = &current.1 {
            return Ok(c.clone());
        }
        let endpoint = self.endpoints[current.0 % self.endpoints.len()].clone();
        let client = Client::connect([endpoint], Some(self.options.clone())).await?;
        current.1 = Some(client.clone());
        Ok(client)
    }

    /// Drops the client so the next call connects to the next endpoint.
    async fn next(&self) {
        let mut current = self.current.lock().await;
        current.0 += 1;
        current.1 = None;
    }
}

/// Tries `make` up to [`TRIES`] times, moving to the next member while
/// members do not answer. After an answer is lost, `landed` may settle
/// that the call took effect anyway (`Some`), so it is not sent again.
async fn retry<T, F, Fut, L, LFut>(
    conn: Arc<Conn>,
    make: F,
    landed: L,
) -> Result<T, etcd_client::Error>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
    L: Fn(Arc<Conn>) -> LFut,
    LFut: Future<Output = Option<T>>,
{
    let mut last = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
        }
        let client = match conn.client().await {
            Ok(c) => c,
            Err(e) => {
                conn.next().await;
                last = Some(e);
                continue;
            }
        };
        match make(client).await {
            Ok(v) => return Ok(v),
            Err(e) if unavailable(&e) => {
                conn.next().await;
                if let Some(v) = landed(conn.clone()).await {
                    return Ok(v);
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one try"))
}

/// Whether an error may mean the member is gone (try the next one) rather
/// than a refusal.
fn unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => {
            // `Cancelled` is what a member's connection closing mid-call
            // looks like.
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ) || s.message().contains("leader changed")
                || s.message().contains("no leader")
        }
        _ => false,
    }
}

impl EtcdStore {
    /// Connects to the cluster at `url`, on the multi-threaded tokio
    /// runtime of the calling context, which must outlive the store: its
    /// client runs there, and its calls wait for it from any thread
    /// (`runtime.rs`). Fails with [`StoreError::Open`] when no endpoint
    /// answers, or outside such a runtime ([`RuntimeError`]).
    pub fn connect(url: &EtcdUrl, options: Options) -> Result<Self, StoreError> {
        let host = Host::current().map_err(|e| open_error(url, e))?;
        let connect = ConnectOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(2), options.timeout);
        let conn = Arc::new(Conn {
            endpoints: url.endpoints.clone(),
            options: connect,
            current: tokio::sync::Mutex::new((0, None)),
        });
        let store = EtcdStore {
            host,
            keeper: Mutex::new(None),
            conn,
            prefix: url.prefix.clone(),
            options,
            lease: Mutex::new(None),
            claims: Mutex::new(HashMap::new()),
            groups: Groups::new(),
        };
        // Fail now, naming the cluster, rather than at the first read.
        store
            .get_raw(&store.key('m', "ping"))
            .map_err(|e| open_error(url, e))?;
        Ok(store)
    }

    fn key(&self, plane: char, key: &str) -> String {
        format!("{}{plane}/{key}", self.prefix)
    }

    fn kv_key(&self, incident: &IncidentId, key: &str) -> String {
        self.key('k', &format!("{incident}/{key}"))
    }

    /// Runs `make`'s future on the store's runtime and waits for it,
    /// retrying on the next endpoint while members do not answer.
    fn run<T, F, Fut>(&self, what: Op, key: &str, make: F) -> Result<T, StoreError>
    where
        T: Send,
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let task = retry(self.conn.clone(), make, |_| std::future::ready(None));
        self.wait(what, key, task)
    }

    /// Waits for `task` on the store's runtime (`runtime.rs`), from any
    /// thread, and says which call on which key failed.
    fn wait<T: Send, E: Send + Into<runbox_store::BoxError>>(
        &self,
        what: Op,
        key: &str,
        task: impl Future<Output = Result<T, E>> + Send,
    ) -> Result<T, StoreError> {
        self.host
            .wait(task)
            .map_err(|e| StoreError::io(what, Some(key), e))?
            .map_err(|e| StoreError::io(what, Some(key), e))
    }

    fn get_raw(&self, key: &str) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let k = key.to_string();
        self.run(Op::Read, key, move |mut c| {
            let k = k.clone();
            async move { Ok(c.get(k, None).await?.take_kvs().into_iter().next()) }
        })
    }

    /// Up to `limit` entries with keys in `[from, to)`, ascending (or
    /// descending from `to`), paged under the message cap.
    fn range(
        &self,
        from: String,
        to: String,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let mut out: Vec<etcd_client::KeyValue> = Vec::new();
        let (mut from, mut to) = (from, to);
        while out.len() < limit && from < to {
            let want = (limit - out.len()).min(READ_PAGE);
            let (f, t) = (from.clone(), to.clone());
            let page = self.run(Op::Scan, &from, move |mut c| {
                let mut opts = GetOptions::new()
                    .with_range(t.clone())
                    .with_limit(want as i64);
                if descending {
                    opts = opts.with_sort(SortTarget::Key, SortOrder::Descend);
                }
                let f = f.clone();
                async move { Ok(c.get(f, Some(opts)).await?.take_kvs()) }
            })?;
            let done = page.len() < want;
            if let Some(last) = page.last() {
                let last = String::from_utf8_lossy(last.key()).into_owned();
                if descending {
                    to = last;
                } else {
                    from = format!("{last}\0");
                }
            }
            out.extend(page);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Entries under `plane`'s `prefix` after `after`, keys relative to the plane.
    fn scan_plane(
        &self,
        plane: char,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, etcd_client::KeyValue)>, StoreError> {
        let base = self.key(plane, "");
        let full = format!("{base}{prefix}");
        let from = match after {
            Some(a) if a >= prefix => format!("{base}{a}\0"),
            _ => full.clone(),
        };
        let to = prefix_end(&full);
        Ok(self
            .range(from, to, limit, false)?
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
                (key, kv)
            })
            .collect())
    }

    /// The lease claims are held under, granted on first use and renewed
    /// in the background; a lapsed one is replaced.
    fn lease(&self) -> Result<Arc<Lease>, StoreError> {
        let mut held = lock(&self.lease);
        if let Some(lease) = held.as_ref().filter(|l| l.alive()) {
            return Ok(lease.clone());
        }
        let ttl = self.options.lease_ttl.as_secs().max(2) as i64;
        let conn = self.conn.clone();
        let lease = Arc::new(self.wait(Op::Write, "lease", Lease::grant(conn, ttl))?);
        let renewals = self.host.spawn(lease.clone().keep_alive(self.conn.clone()));
        let replaced = lock(&self.keeper).replace(renewals);
        if let Some(lapsed) = replaced {
            lapsed.abort();
        }
        *held = Some(lease.clone());
        Ok(lease)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<IncidentId, Held>> {
        lock(&self.claims)
    }

    fn fence(&self, incident: &IncidentId) -> Option<i64> {
        self.held().get(incident).map(|h| h.fence)
    }

    /// The checkpoint this process last committed to `incident` under the
    /// claim `fence`, if it still holds that claim.
    fn last_checkpoint(&self, incident: &IncidentId, fence: i64) -> Option<(i64, Vec<u8>)> {
        let held = self.held();
        let h = held.get(incident).filter(|h| h.fence == fence)?;
        h.checkpoint.clone()
    }

    /// Remembers (or, `None`, forgets) the checkpoint last committed to
    /// `incident` under the claim `fence`.
    fn remember_checkpoint(
        &self,
        incident: &IncidentId,
        fence: i64,
        checkpoint: Option<(i64, Vec<u8>)>,
    ) {
        if let Some(h) = self.held().get_mut(incident).filter(|h| h.fence == fence) {
            h.checkpoint = checkpoint;
        }
    }

    /// Sends `txn`, which is not an incident's commit (those go through
    /// [`EtcdStore::send_commit`]) and has no commit id to settle a lost
    /// answer with: it is sent again. Where the first landed, the compares
    /// of the second refuse it and the caller hears a conflict and reads
    /// again; a restore's puts have none and land twice alike.
    fn send_txn(&self, txn: Txn, key: &str) -> Result<Sent, StoreError> {
        let send = move |mut client: Client| {
            let txn = txn.clone();
            async move {
                let answer = client.txn(txn).await?;
                Ok(plain_answer(&answer))
            }
        };
        let task = retry(self.conn.clone(), send, |_| std::future::ready(None));
        self.wait(Op::Write, key, task)
    }

    /// Adds `shared`'s compares and writes to `compares`/`ops`.
    fn shared_ops(&self, shared: &Shared, compares: &mut Vec<Compare>, ops: &mut Ops) {
        for (key, version) in shared.expectations() {
            let k = self.key('s', key);
            compares.push(match version {
                None => Compare::version(k, CompareOp::Equal, 0),
                Some(v) => Compare::mod_revision(k, CompareOp::Equal, *v as i64),
            });
        }
        for (key, value) in shared.writes() {
            ops.set(self.key('s', key), value.clone());
        }
    }

    /// Which of `shared`'s expectations no longer holds, as the error.
    fn shared_conflict(&self, shared: &Shared) -> Result<Option<StoreError>, StoreError> {
        for (key, expected) in shared.expectations() {
            let found = self.shared_get(key)?.map(|v| v.version);
            if found != *expected {
                return Ok(Some(StoreError::SharedConflict {
                    key: key.clone(),
                    expected: *expected,
                    found,
                }));
            }
        }
        Ok(None)
    }
}

impl EtcdStore {
    /// The commit itself: one transaction compared on the checkpoint's mod
    /// revision, the fence when there is one, and the shared versions read;
    /// then what `read_back` reads right after it.
    fn commit_fenced(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: &Batch,
        fence: Option<i64>,
        read_back: &Group,
    ) -> Result<Values, StoreError> {
        let (cp_key, cp_bytes) = checkpoint_entry(incident, batch);
        let cp_full = self.key('r', &cp_key);
        let stored = match fence.and_then(|f| self.last_checkpoint(incident, f)) {
            Some(ours) => Some(ours),
            None => self
                .get_raw(&cp_full)?
                .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
        };
        let stored_bytes = stored.as_ref().map(|(_, bytes)| bytes.as_slice());
        check_expected(incident, expected, &cp_key, stored_bytes)?;
        let stored = stored.map(|(revision, _)| revision);
        let checkpoint = (cp_full, cp_bytes.clone());
        let (pending, writes) =
            self.commit_txn(incident, batch, checkpoint, fence, stored, read_back)?;
        let (id_key, id) = pending.id_key.clone();
        let read_along = pending.ops.len() > writes;
        let mut sent = self.send_commit(pending, &cp_key)?;
        // A commit whose answer was lost and that was sent again finds
        // itself in the way and is refused: its id says it landed.
        if matches!(sent, Sent::Refused) && self.landed(&id_key, &id)? {
            sent = Sent::Applied(None);
        }
        if let Some(fence) = fence {
            // Every key a transaction writes gets its revision.
            let ours = match &sent {
                Sent::Applied(Some(answer)) => answer.revision.map(|r| (r, cp_bytes)),
                _ => None,
            };
            self.remember_checkpoint(incident, fence, ours);
        }
        match sent {
            Sent::Applied(Some(answer)) if read_along => {
                got_values(answer.ops, writes, read_back.keys().len(), &cp_key)
            }
            Sent::Applied(_) => self.get_many(read_back),
            Sent::Refused => {
                Err(self.why_refused(incident, expected, batch, &cp_key, fence, stored)?)
            }
        }
    }

    /// The transaction of one commit writing `checkpoint` (its full key
    /// and bytes), and how many writes it makes; the gets of `read_back`
    /// ride after the writes (which they see) while they fit in one
    /// transaction.
    fn commit_txn(
        &self,
        incident: &IncidentId,
        batch: &Batch,
        (cp_full, cp_bytes): (String, Vec<u8>),
        fence: Option<i64>,
        stored: Option<i64>,
        read_back: &Group,
    ) -> Result<(Pending, usize), StoreError> {
        let mut compares = vec![match stored {
            None => Compare::version(cp_full.clone(), CompareOp::Equal, 0),
            Some(revision) => Compare::mod_revision(cp_full.clone(), CompareOp::Equal, revision),
        }];
        if let Some(fence) = fence {
            let owner = self.key('o', incident.as_str());
            compares.push(Compare::create_revision(owner, CompareOp::Equal, fence));
        }
        let mut ops = Ops::default();
        for (k, v) in batch.records().iter() {
            ops.set(self.key('r', k), Some(v.to_vec()));
        }
        for (k, v) in batch.kv_writes() {
            ops.set(self.kv_key(incident, k), v.clone());
        }
        self.shared_ops(batch.shared(), &mut compares, &mut ops);
        ops.set(cp_full, Some(cp_bytes));
        let id = commit_id();
        let id_key = self.key('c', incident.as_str());
        ops.set(id_key.clone(), Some(id.clone().into_bytes()));
        check_size(incident.as_str(), compares.len(), &ops)?;
        let writes = ops.order.len();
        let mut pending = Pending {
            writes: ops.order.iter().cloned().collect::<BTreeSet<_>>(),
            bytes: ops.bytes(),
            ops: ops.into_ops(),
            compares,
            id_key: (id_key, id),
        };
        if writes + read_back.keys().len() <= MAX_TXN_OPS {
            let gets = read_back
                .keys()
                .iter()
                .map(|k| TxnOp::get(self.key('r', k), None));
            pending.ops.extend(gets);
        }
        Ok((pending, writes))
    }

    /// Whether the commit id at `id_key` is `id`: the commit that wrote it
    /// landed.
    fn landed(&self, id_key: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get_raw(id_key)?
            .is_some_and(|kv| kv.value() == id.as_bytes()))
    }

    /// Which compare of a refused commit failed, as the error.
    fn why_refused(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: &Batch,
        cp_key: &str,
        fence: Option<i64>,
        stored: Option<i64>,
    ) -> Result<StoreError, StoreError> {
        let now = self.get_raw(&self.key('r', cp_key))?;
        let now_bytes = now.as_ref().map(etcd_client::KeyValue::value);
        if let Err(e) = check_expected(incident, expected, cp_key, now_bytes) {
            return Ok(e);
        }
        if now.map(|kv| kv.mod_revision()) != stored {
            return Ok(StoreError::Conflict {
                incident: incident.clone(),
                expected,
                found: None,
            });
        }
        if let Some(e) = self.fenced(incident, fence) {
            return Ok(e);
        }
        Ok(self.shared_conflict(batch.shared())?.unwrap_or_else(|| {
            StoreError::io(
                Op::Write,
                Some(cp_key),
                "the commit's compare failed, yet every compared key reads as expected: retry",
            )
        }))
    }

    /// How many incident commits this store sent in how many etcd
    /// requests: commits of different incidents that arrive while one is
    /// in flight go together ([`GroupStats`]).
    pub fn group_stats(&self) -> GroupStats {
        self.groups.stats()
    }

    /// Sends one incident's commit, in a group with the commits of other
    /// incidents that arrive meanwhile ([`group`]).
    fn send_commit(&self, pending: Pending, key: &str) -> Result<Sent, StoreError> {
        // A commit may wait for another caller's group to come back.
        runbox_store::blocking::in_place(|| self.groups.send(pending, |group| self.flush(group)))
            .map_err(|cause| StoreError::io(Op::Write, Some(key), cause))
    }

    /// Sends one group: alone, a commit is a plain transaction; together,
    /// each is a nested transaction of one. A lost answer is settled by
    /// reading the commits' ids back: the group is one transaction, so if
    /// any id landed the group was applied, and a commit whose id did not
    /// land was refused.
    fn flush(&self, group: Vec<Pending>) -> Result<Vec<Sent>, Cause> {
        let ids: Vec<(String, String)> = group.iter().map(|p| p.id_key.clone()).collect();
        let alone = group.len() == 1;
        let txn = group_txn(group);
        let send = move |mut client: Client| {
            let txn = txn.clone();
            async move {
                let answer = client.txn(txn).await?;
                Ok(match alone {
                    true => vec![plain_answer(&answer)],
                    false => group_answers(&answer),
                })
            }
        };
        let landed = move |conn: Arc<Conn>| {
            let ids = ids.clone();
            async move { ids_landed(&conn, &ids).await }
        };
        match self.host.wait(retry(self.conn.clone(), send, landed)) {
            Ok(answer) => answer.map_err(|e| Arc::new(e) as Cause),
            Err(e) => Err(Arc::new(e) as Cause),
        }
    }

    /// [`StoreError::Fenced`] when this process held `incident` under
    /// `fence` and no longer does.
    fn fenced(&self, incident: &IncidentId, fence: Option<i64>) -> Option<StoreError> {
        let fence = fence?;
        let owner = self.key('o', incident.as_str());
        let held = self.get_raw(&owner).ok()?;
        if held.as_ref().map(etcd_client::KeyValue::create_revision) == Some(fence) {
            return None;
        }
        runbox_telemetry::fenced();
        Some(StoreError::Fenced {
            incident: incident.clone(),
            message: format!(
                "runner `{}` lost its claim (its lease lapsed); {} holds it now",
                self.options.runner,
                held.map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_else(|| "no runner".into())
            ),
        })
    }
}

/// A transaction's writes, one per key (etcd refuses a key twice), in order.
#[derive(Default)]
struct Ops {
    order: Vec<String>,
    values: BTreeMap<String, Option<Vec<u8>>>,
}

impl Ops {
    fn set(&mut self, key: String, value: Option<Vec<u8>>) {
        if self.values.insert(key.clone(), value).is_none() {
            self.order.push(key);
        }
    }

    fn bytes(&self) -> usize {
        self.values
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum()
    }

    fn into_ops(self) -> Vec<TxnOp> {
        let mut values = self.values;
        self.order
            .into_iter()
            .map(|k| match values.remove(&k).flatten() {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            })
            .collect()
    }
}

fn check_size(incident: &str, compares: usize, ops: &Ops) -> Result<(), StoreError> {
    let count = ops.order.len();
    let bytes = ops.bytes();
    if count > MAX_TXN_OPS || compares > MAX_TXN_OPS || bytes > MAX_TXN_BYTES {
        return Err(StoreError::TooLarge {
            incident: incident.to_string(),
            message: format!(
                "{count} writes and {compares} compares of {bytes} bytes; one etcd transaction takes at most {MAX_TXN_OPS} of each and {MAX_TXN_BYTES} bytes"
            ),
        });
    }
    Ok(())
}

/// The values of a transaction's answers to `writes` writes followed by
/// `wanted` gets of one key each (`key` names them in errors).
fn got_values(
    answers: Vec<TxnOpResponse>,
    writes: usize,
    wanted: usize,
    key: &str,
) -> Result<Values, StoreError> {
    let got = answers.len();
    let odd = || {
        let message = format!(
            "etcd answered {writes} writes and {wanted} gets with {got} answers, or a get with another answer"
        );
        StoreError::io(Op::Read, Some(key), message)
    };
    if answers.len() != writes + wanted {
        return Err(odd());
    }
    answers
        .into_iter()
        .skip(writes)
        .map(|answer| match answer {
            TxnOpResponse::Get(mut got) => Ok(got
                .take_kvs()
                .into_iter()
                .next()
                .map(|kv| kv.value().to_vec())),
            _ => Err(odd()),
        })
        .collect()
}

/// One transaction for a group of commits.
fn group_txn(group: Vec<Pending>) -> Txn {
    let nested = |p: Pending| Txn::new().when(p.compares).and_then(p.ops);
    match <[Pending; 1]>::try_from(group) {
        Ok([alone]) => nested(alone),
        Err(group) => Txn::new().and_then(
            group
                .into_iter()
                .map(|p| TxnOp::txn(nested(p)))
                .collect::<Vec<_>>(),
        ),
    }
}

/// What a plain transaction did.
fn plain_answer(answer: &etcd_client::TxnResponse) -> Sent {
    match answer.succeeded() {
        true => Sent::Applied(Some(Answer {
            revision: answer.header().map(etcd_client::ResponseHeader::revision),
            ops: answer.op_responses(),
        })),
        false => Sent::Refused,
    }
}

/// What each nested transaction of a group did; every one has the
/// group's revision. An answer that is not a transaction is left out, so
/// the count no longer matches and the whole group is an error.
fn group_answers(answer: &etcd_client::TxnResponse) -> Vec<Sent> {
    let revision = answer.header().map(etcd_client::ResponseHeader::revision);
    answer
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Txn(nested) if nested.succeeded() => Some(Sent::Applied(Some(Answer {
                revision,
                ops: nested.op_responses(),
            }))),
            TxnOpResponse::Txn(_) => Some(Sent::Refused),
            _ => None,
        })
        .collect()
}

/// After a lost answer: `None` when no commit id of the group landed
/// (send it again), else what each commit did.
async fn ids_landed(conn: &Conn, ids: &[(String, String)]) -> Option<Vec<Sent>> {
    let gets: Vec<TxnOp> = ids
        .iter()
        .map(|(k, _)| TxnOp::get(k.clone(), None))
        .collect();
    let answer = conn
        .client()
        .await
        .ok()?
        .txn(Txn::new().and_then(gets))
        .await
        .ok()?;
    let found = got_values(answer.op_responses(), 0, ids.len(), "commit id").ok()?;
    let ours: Vec<bool> = found
        .iter()
        .zip(ids)
        .map(|(value, (_, id))| value.as_deref() == Some(id.as_bytes()))
        .collect();
    ours.contains(&true).then(|| {
        ours.into_iter()
            .map(|landed| match landed {
                true => Sent::Applied(None),
                false => Sent::Refused,
            })
            .collect()
    })
}

fn open_error(url: &EtcdUrl, e: impl Into<runbox_store::BoxError>) -> StoreError {
    StoreError::Open {
        dir: std::path::PathBuf::from(url.to_string()),
        source: e.into(),
    }
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return String::from_utf8_lossy(&end).into_owned();
        }
    }
    "\0".into()
}

/// 128 random bits in hex: what a commit writes to its incident's commit-id
/// key, to tell later whether a commit whose answer was lost landed.
fn commit_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness the id is all zeros: a lost answer then reads as
    // not landed, and the retry's compare settles it.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_raw(&self.key('r', key))?
            .map(|kv| kv.value().to_vec()))
    }

    /// One read-only transaction of up to [`MAX_TXN_OPS`] gets: one round
    /// trip, every key as of one revision.
    fn get_many(&self, keys: &Group) -> Result<Values, StoreError> {
        let keys = keys.keys();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(self.key('r', k), None))
                .collect();
            let first = chunk.first().map_or("", String::as_str);
            let answers = self.run(Op::Read, first, move |mut c| {
                let txn = Txn::new().and_then(gets.clone());
                async move { Ok(c.txn(txn).await?.op_responses()) }
            })?;
            out.extend(got_values(answers, 0, chunk.len(), first)?);
        }
        Ok(out)
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        Ok(self
            .scan_plane('r', prefix, after, limit)?
            .into_iter()
            .map(|(k, kv)| (k, kv.value().to_vec()))
            .collect())
    }

    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let base = self.key('r', "");
        let full = format!("{base}{prefix}");
        let to = match before {
            Some(b) => format!("{base}{b}"),
            None => prefix_end(&full),
        };
        Ok(self
            .range(full, to, limit, true)?
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
                (key, kv.value().to_vec())
            })
            .collect())
    }

    fn kv_get(&self, incident: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_raw(&self.kv_key(incident, key))?
            .map(|kv| kv.value().to_vec()))
    }

    fn kv_scan(&self, incident: &IncidentId) -> Result<Page, StoreError> {
        let prefix = format!("{incident}/");
        Ok(self
            .scan_plane('k', &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(k, kv)| (k[prefix.len()..].to_string(), kv.value().to_vec()))
            .collect())
    }

    fn commit(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError> {
        self.commit_and_read(incident, expected, batch, &Group::new())
            .map(drop)
    }

    fn commit_and_read(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
        read_back: &Group,
    ) -> Result<Values, StoreError> {
        batch.validate(incident, expected)?;
        let fence = self.fence(incident);
        self.commit_fenced(incident, expected, &batch, fence, read_back)
            .map_err(|e| match e {
                // A runner that lost its claim hears that first: whatever
                // else moved, it moved because another runner took over.
                StoreError::Conflict { .. } | StoreError::SharedConflict { .. } => {
                    self.fenced(incident, fence).unwrap_or(e)
                }
                e => e,
            })
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_raw(&self.key('m', key))?
            .map(|kv| kv.value().to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (k, v) = (self.key('m', key), value.to_vec());
        self.run(Op::Write, key, move |mut c| {
            let (k, v) = (k.clone(), v.clone());
            async move { c.put(k, v, None).await.map(|_| ()) }
        })
    }

    /// One transaction: put if the key was never created, and read back
    /// what stands, so runners racing to make the same value agree.
    fn meta_create(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (k, v) = (self.key('m', key), value.to_vec());
        self.run(Op::Write, key, move |mut c| {
            let (k, v) = (k.clone(), v.clone());
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(k.clone(), v.clone(), None)])
                    .or_else([TxnOp::get(k, None)]);
                let answer = c.txn(txn).await?;
                if answer.succeeded() {
                    return Ok(v);
                }
                let stored = answer.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                });
                Ok(stored.unwrap_or(v))
            }
        })
    }

    /// One transaction comparing every expected value (absent: never
    /// created) and putting the new ones. A lost answer retried after the
    /// first try landed reads as a conflict: the caller starts over, and
    /// nothing is written twice.
    fn meta_swap(&self, swap: &MetaSwap) -> Result<(), StoreError> {
        let compares: Vec<Compare> = swap
            .expectations()
            .iter()
            .map(|(key, want)| {
                let k = self.key('m', key);
                match want {
                    None => Compare::create_revision(k, CompareOp::Equal, 0),
                    Some(v) => Compare::value(k, CompareOp::Equal, v.clone()),
                }
            })
            .collect();
        let puts: Vec<(String, Vec<u8>)> = swap
            .puts()
            .iter()
            .map(|(key, value)| (self.key('m', key), value.clone()))
            .collect();
        let first = swap.puts().first().map_or("-", |(k, _)| k.as_str());
        let landed = self.run(Op::Write, first, move |mut c| {
            let txn = Txn::new().when(compares.clone()).and_then(
                puts.iter()
                    .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
                    .collect::<Vec<_>>(),
            );
            async move { Ok(c.txn(txn).await?.succeeded()) }
        })?;
        if landed {
            return Ok(());
        }
        swap.check(|key| self.meta_get(key))?;
        let key = swap.expectations().first().map_or("-", |(k, _)| k.as_str());
        Err(StoreError::MetaConflict { key: key.into() })
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get_raw(&self.key('s', key))?.map(|kv| Versioned {
            value: kv.value().to_vec(),
            version: kv.mod_revision() as u64,
        }))
    }

    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self
            .scan_plane('s', prefix, after, limit)?
            .into_iter()
            .map(|(k, kv)| {
                let version = kv.mod_revision() as u64;
                (
                    k,
                    Versioned {
                        value: kv.value().to_vec(),
                        version,
                    },
                )
            })
            .collect())
    }

    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError> {
        shared.validate()?;
        if shared.writes().is_empty() {
            return match self.shared_conflict(&shared)? {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let mut compares = Vec::new();
        let mut ops = Ops::default();
        self.shared_ops(&shared, &mut compares, &mut ops);
        check_size("-", compares.len(), &ops)?;
        let txn = Txn::new().when(compares).and_then(ops.into_ops());
        if let Sent::Applied(_) = self.send_txn(txn, "shared")? {
            return Ok(());
        }
        Err(self.shared_conflict(&shared)?.unwrap_or_else(|| {
            StoreError::io(Op::Write, Some("shared"), "a shared compare failed: retry")
        }))
    }

    fn meta_scan(&self) -> Result<Page, StoreError> {
        Ok(self
            .scan_plane('m', "", None, usize::MAX)?
            .into_iter()
            .map(|(k, kv)| (k, kv.value().to_vec()))
            .collect())
    }

    fn restore(&self, incident: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError> {
        runbox_store::check_restore(incident, &records)?;
        let cp_key = runbox_store::checkpoint_key(incident);
        let cp_full = self.key('r', &cp_key);
        if self.get_raw(&cp_full)?.is_some() {
            return Err(StoreError::Conflict {
                incident: incident.clone(),
                expected: Expect::Absent,
                found: None,
            });
        }
        let mut writes: Vec<(String, Vec<u8>)> = kv
            .into_iter()
            .map(|(k, v)| (self.kv_key(incident, &k), v))
            .collect();
        writes.extend(
            runbox_store::restore_order(incident, records)
                .into_iter()
                .map(|(k, v)| (self.key('r', &k), v)),
        );
        // In transactions within etcd's limits, checkpoint and index last.
        let mut chunk = Ops::default();
        for (k, v) in writes {
            if chunk.order.len() + 1 > MAX_TXN_OPS / 2
                || chunk.bytes() + k.len() + v.len() > MAX_TXN_BYTES / 2
            {
                let full = std::mem::take(&mut chunk);
                self.send_txn(Txn::new().and_then(full.into_ops()), &cp_key)?;
            }
            chunk.set(k, Some(v));
        }
        if !chunk.order.is_empty() {
            self.send_txn(Txn::new().and_then(chunk.into_ops()), &cp_key)?;
        }
        Ok(())
    }

    fn runner(&self) -> &str {
        &self.options.runner
    }

    fn lease_held(&self) -> Result<(), String> {
        let held = self.held().len();
        let lease = lock(&self.lease).clone();
        match lease {
            _ if held == 0 => Ok(()),
            Some(lease) if lease.alive() => Ok(()),
            _ => Err(format!(
                "runner `{}` holds {held} claim(s) and its lease is not renewed: another runner may take them",
                self.options.runner
            )),
        }
    }

    fn claim(&self, incident: &IncidentId) -> Result<Claim, StoreError> {
        let lease = self.lease()?;
        let owner = self.key('o', incident.as_str());
        let (k, runner, id) = (owner.clone(), self.options.runner.clone(), lease.id());
        let held = self.run(Op::Write, &owner, move |mut c| {
            let (k, runner) = (k.clone(), runner.clone());
            async move {
                let txn = Txn::new()
                    .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        k.clone(),
                        runner,
                        Some(etcd_client::PutOptions::new().with_lease(id)),
                    )]);
                c.txn(txn).await?;
                Ok(c.get(k, None).await?.take_kvs().into_iter().next())
            }
        })?;
        let mut claims = self.held();
        runbox_telemetry::claim(held.as_ref().is_some_and(|kv| kv.lease() == id));
        match held {
            Some(kv) if kv.lease() == id => {
                let held = Held {
                    fence: kv.create_revision(),
                    checkpoint: None,
                };
                claims.insert(incident.clone(), held);
                Ok(Claim::Ours)
            }
            Some(kv) => Ok(Claim::Theirs {
                runner: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            // Its holder's lease lapsed between the two: try again later.
            None => Ok(Claim::Theirs {
                runner: "nobody (released just now)".into(),
            }),
        }
    }

    fn check_claim(&self, incident: &IncidentId) -> Result<(), StoreError> {
        let Some(fence) = self.fence(incident) else {
            return Ok(());
        };
        let lease = lock(&self.lease).clone();
        let lapsed = |why: &str| {
            runbox_telemetry::fenced();
            StoreError::Fenced {
                incident: incident.clone(),
                message: format!(
                    "runner `{}` {why}; it stops before acting",
                    self.options.runner
                ),
            }
        };
        let Some(lease) = lease else {
            return Err(lapsed("holds no lease"));
        };
        if lease.alive() {
            return Ok(());
        }
        // Not renewed in time (a leader change, a slow member): renew now,
        // and go on only if etcd still has this runner's claim.
        let conn = self.conn.clone();
        let renewer = lease.clone();
        let renewed = self.host.wait(async move {
            for _ in 0..3 {
                match renewer.renew(&conn).await {
                    Ok(alive) => return alive,
                    Err(_) => conn.next().await,
                }
            }
            false
        });
        if renewed != Ok(true) {
            return Err(lapsed("could not renew its lease in time"));
        }
        match self.fenced(incident, Some(fence)) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn release(&self, incident: &IncidentId) -> Result<(), StoreError> {
        let Some(Held { fence, .. }) = self.held().remove(incident) else {
            return Ok(());
        };
        let owner = self.key('o', incident.as_str());
        let k = owner.clone();
        self.run(Op::Write, &owner, move |mut c| {
            let k = k.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(k.clone(), CompareOp::Equal, fence)])
                    .and_then([TxnOp::delete(k, None)]);
                c.txn(txn).await.map(|_| ())
            }
        })
    }
}

impl Drop for EtcdStore {
    /// Gives the claims up and revokes the lease, so other runners need not
    /// wait out its TTL after a clean exit.
    fn drop(&mut self) {
        let ids: Vec<IncidentId> = self.held().keys().cloned().collect();
        for id in ids {
            let _ = self.release(&id);
        }
        let lease = lock(&self.lease).take();
        if let Some(renewals) = lock(&self.keeper).take() {
            renewals.abort();
        }
        if let Some(lease) = lease {
            let conn = self.conn.clone();
            // A runtime already gone took the connections with it: the
            // lease then lapses at its TTL.
            let _ = self.host.wait(async move { lease.revoke(&conn).await });
        }
    }
}
