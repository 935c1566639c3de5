//! # runbox-store: the state plane API
//!
//! The engine sees the store through one narrow trait, [`Store`]: read a
//! record, scan an incident's records, read step KV, and
//! [`Store::commit`], the only way to write an incident. A commit is atomic
//! and conditional: it names the checkpoint version it was built on
//! ([`Expect`]), and the store checks that version *atomically with the
//! write*, per incident, rejecting a stale one with
//! [`StoreError::Conflict`] and writing nothing. Two writers on one incident
//! (two threads, two processes, later two hosts) can never both commit on
//! the same version; writers on different incidents never wait for each
//! other.
//!
//! ```
//! use runbox_core::ident::IncidentId;
//! use runbox_core::records::{Checkpoint, Status};
//! use runbox_store::{keys, Batch, Expect, MemoryStore, Store, StoreError, StoreExt};
//!
//! let store = MemoryStore::new();
//! let id: IncidentId = "INC-7".parse()?;
//! let first = Checkpoint::first("diagnose");
//! let mut batch = Batch::new(first.clone());
//! batch.put(keys::status(&id), &Status::Open);
//! store.commit(&id, Expect::Absent, batch)?;
//!
//! // A second writer that read version 0 too loses.
//! let mut next = first.clone();
//! next.version = 1;
//! store.commit(&id, Expect::Version(0), Batch::new(next.clone()))?;
//! let stale = store.commit(&id, Expect::Version(0), Batch::new(next));
//! assert!(matches!(stale, Err(StoreError::Conflict { .. })));
//! assert_eq!(store.read(&keys::checkpoint(&id))?.unwrap().version, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Backends: [`MemoryStore`] here (tests, benchmarks), RocksDB in
//! `runbox-store-rocksdb` (the default), etcd in `runbox-store-etcd` (for
//! runners on several hosts, which [`Store::claim`] incidents). Every
//! backend runs the [`conformance`] suite.
//!
//! ## Planes
//!
//! | plane | holds | written by |
//! |---|---|---|
//! | incident records | `incident:{id}:…` and `index:{id}`, laid out by [`keys`] (typed: a [`keys::Key<T>`] holds only a `T`) | [`Store::commit`] |
//! | step KV | per incident, keys relative to the incident | [`Store::commit`] (a step's staged writes) |
//! | meta | host settings (the mutation token's hash) | [`Store::put_meta`] |
//! | shared | state that spans incidents: shared step KV, rate-limit counts, brakes | [`Store::commit`] (with a step) or [`Store::commit_shared`] |
//!
//! Step KV is a plane of its own, so no key pattern, however broad, reaches
//! an incident record.
//!
//! ## The shared plane
//!
//! Each shared value carries a [`Versioned::version`]: the store's shared
//! revision when it was written, which only grows (a key deleted and
//! written again gets a new one). A commit names the version it read of
//! each shared key it depends on ([`Shared::expect`]), and the store checks
//! them atomically with the write, like the checkpoint: two incidents that
//! both read a restart count of 2 cannot both write 3.
//!
//! ```
//! use runbox_store::{MemoryStore, Shared, Store, StoreError};
//!
//! let store = MemoryStore::new();
//! let mut first = Shared::default();
//! first.expect("svc/api/restarts", None).put("svc/api/restarts", b"1".to_vec());
//! store.commit_shared(first.clone())?;
//! // A second writer that also read "absent" loses.
//! let stale = store.commit_shared(first);
//! assert!(matches!(stale, Err(StoreError::SharedConflict { .. })));
//! assert_eq!(store.shared_get("svc/api/restarts")?.unwrap().value, b"1");
//! # Ok::<(), StoreError>(())
//! ```

#![deny(missing_docs)]

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod copy;
pub mod keys;
mod memory;

use std::fmt;

use runbox_core::ident::IncidentId;
use runbox_core::records::Checkpoint;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keys::{Group, Key, Prefix};

pub use memory::MemoryStore;

/// A boxed error cause, kept so callers can inspect it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a commit expects of the incident's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The incident does not exist yet (opening it).
    Absent,
    /// The checkpoint is at this version.
    Version(u64),
}

impl Expect {
    /// The version the new checkpoint must carry.
    pub fn next_version(self) -> u64 {
        match self {
            Expect::Absent => 0,
            Expect::Version(v) => v + 1,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => f.write_str("no incident"),
            Expect::Version(v) => write!(f, "checkpoint version {v}"),
        }
    }
}

/// Which operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A point read.
    Read,
    /// A range read.
    Scan,
    /// A write.
    Write,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Scan => "scan",
            Op::Write => "write",
        })
    }
}

/// Errors from a store. A failed commit wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "data dir {dir} is in use by another runbox process; one process at a time per data dir"
    )]
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// The store could not be opened.
    #[error("cannot open the store in {dir}: {source}")]
    Open {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A read or write failed.
    #[error("store {op} failed{}: {source}", key.as_ref().map(|k| format!(" for `{k}`")).unwrap_or_default())]
    Io {
        /// Which operation.
        op: Op,
        /// The key or prefix, when there is one.
        key: Option<String>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A stored record does not decode.
    #[error("record `{key}` is corrupt: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint moved since the commit's writer read it.
    #[error(
        "incident `{incident}` changed underneath ({expected} expected, found {}); retry",
        found.map(|v| format!("checkpoint version {v}")).unwrap_or_else(|| "no incident".into())
    )]
    Conflict {
        /// The incident.
        incident: IncidentId,
        /// What the commit expected.
        expected: Expect,
        /// The version found (`None`: no incident).
        found: Option<u64>,
    },
    /// A shared-plane value moved since the commit's writer read it.
    #[error(
        "shared key `{key}` changed underneath (version {} expected, found {}); retry",
        expected.map(|v| v.to_string()).unwrap_or_else(|| "absent".into()),
        found.map(|v| v.to_string()).unwrap_or_else(|| "absent".into())
    )]
    SharedConflict {
        /// The shared key.
        key: String,
        /// The version the commit expected (`None`: absent).
        expected: Option<u64>,
        /// The version found (`None`: absent).
        found: Option<u64>,
    },
    /// This process no longer holds the incident: another runner took it
    /// (its lease on the incident lapsed). Nothing was written, and nothing
    /// this process writes to the incident will ever land.
    #[error("incident `{incident}` is not this runner's any more: {message}")]
    Fenced {
        /// The incident.
        incident: IncidentId,
        /// What happened.
        message: String,
    },
    /// A commit larger than the backend takes in one atomic write.
    #[error("refused commit to incident `{incident}`: {message}")]
    TooLarge {
        /// The incident (`-` for the shared plane alone).
        incident: String,
        /// What is too large, and the limit.
        message: String,
    },
    /// A meta-plane value is not what a [`MetaSwap`] expected: another
    /// writer changed it first. Nothing was written.
    #[error("meta key `{key}` changed underneath; retry")]
    MetaConflict {
        /// The key whose value differed.
        key: String,
    },
    /// A batch that breaks the commit rules (a key of another incident, a
    /// checkpoint version that does not follow the expected one).
    #[error("refused commit to incident `{incident}`: {message}")]
    BadBatch {
        /// The incident.
        incident: IncidentId,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// An I/O error with its cause.
    pub fn io(op: Op, key: Option<&str>, source: impl Into<BoxError>) -> Self {
        StoreError::Io {
            op,
            key: key.map(str::to_string),
            source: source.into(),
        }
    }
}

/// A conditional write to the meta plane: every `expect`ed key holds the
/// value given (`None`: absent) when the `puts` land, atomically, or nothing
/// is written ([`StoreError::MetaConflict`]). Rotating the mutation token
/// spends its signed statement's nonce and replaces the hash this way, so two
/// rotations racing with one statement cannot both succeed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaSwap {
    expect: Vec<(String, Option<Vec<u8>>)>,
    puts: Vec<(String, Vec<u8>)>,
}

impl MetaSwap {
    /// An empty swap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to hold `value` (`None`: to be absent).
    pub fn expect(mut self, key: &str, value: Option<&[u8]>) -> Self {
        self.expect
            .push((key.to_string(), value.map(<[u8]>::to_vec)));
        self
    }

    /// Writes `value` under `key`.
    pub fn put(mut self, key: &str, value: &[u8]) -> Self {
        self.puts.push((key.to_string(), value.to_vec()));
        self
    }

    /// The expectations, in order.
    pub fn expectations(&self) -> &[(String, Option<Vec<u8>>)] {
        &self.expect
    }

    /// The writes, in order.
    pub fn puts(&self) -> &[(String, Vec<u8>)] {
        &self.puts
    }

    /// The first expectation `read` does not meet, as the error to return.
    pub fn check(
        &self,
        mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<(), StoreError> {
        for (key, want) in &self.expect {
            if read(key)? != *want {
                return Err(StoreError::MetaConflict { key: key.clone() });
            }
        }
        Ok(())
    }
}

/// A shared-plane value and its version (see [the shared plane](crate#the-shared-plane)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes.
    pub value: Vec<u8>,
    /// The store's shared revision when it was written; never reused.
    pub version: u64,
}

/// The longest shared key: 1 KiB.
pub const MAX_SHARED_KEY_BYTES: usize = 1024;

/// What one commit expects of the shared plane and writes to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    expect: Vec<(String, Option<u64>)>,
    writes: Vec<(String, Option<Vec<u8>>)>,
}

impl Shared {
    /// The commit lands only if `key` is still at `version` (`None`:
    /// absent). Naming a key twice keeps the first expectation.
    pub fn expect(&mut self, key: impl Into<String>, version: Option<u64>) -> &mut Self {
        let key = key.into();
        if !self.expect.iter().any(|(k, _)| *k == key) {
            self.expect.push((key, version));
        }
        self
    }

    /// Puts `value` at `key`; a later write of the same key wins.
    pub fn put(&mut self, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.writes.push((key.into(), Some(value)));
        self
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl Into<String>) -> &mut Self {
        self.writes.push((key.into(), None));
        self
    }

    /// Puts (`Some`) or deletes (`None`) `key`.
    pub fn write(&mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> &mut Self {
        self.writes.push((key.into(), value));
        self
    }

    /// The expectations, as (key, version).
    pub fn expectations(&self) -> &[(String, Option<u64>)] {
        &self.expect
    }

    /// The writes, in order.
    pub fn writes(&self) -> &[(String, Option<Vec<u8>>)] {
        &self.writes
    }

    /// Whether the commit touches the shared plane at all.
    pub fn is_empty(&self) -> bool {
        self.expect.is_empty() && self.writes.is_empty()
    }

    /// Checks every key's form: 1..=[`MAX_SHARED_KEY_BYTES`] bytes, no NUL.
    pub fn validate(&self) -> Result<(), StoreError> {
        let keys = self.expect.iter().map(|(k, _)| k);
        for key in keys.chain(self.writes.iter().map(|(k, _)| k)) {
            if key.is_empty() || key.len() > MAX_SHARED_KEY_BYTES || key.contains('\0') {
                return Err(StoreError::io(
                    Op::Write,
                    Some(key),
                    format!("a shared key is 1..={MAX_SHARED_KEY_BYTES} bytes without NUL"),
                ));
            }
        }
        Ok(())
    }

    /// Checks every expectation against `stored` (a key's current
    /// version), the one way every backend must.
    pub fn check(
        &self,
        mut stored: impl FnMut(&str) -> Result<Option<u64>, StoreError>,
    ) -> Result<(), StoreError> {
        for (key, expected) in &self.expect {
            let found = stored(key)?;
            if found != *expected {
                return Err(StoreError::SharedConflict {
                    key: key.clone(),
                    expected: *expected,
                    found,
                });
            }
        }
        Ok(())
    }
}

/// Records to write to one incident, each put under its typed key: what
/// an engine gathers for a commit before its checkpoint is known, and what
/// a [`Batch`] carries. Each is encoded as JSON when it is put.
#[derive(Debug, Clone, Default)]
pub struct Records {
    entries: Vec<(String, Vec<u8>)>,
}

impl Records {
    /// Puts `value` under its typed key (a later put of the same key wins).
    pub fn put<T: Serialize>(&mut self, key: Key<T>, value: &T) -> &mut Self {
        let bytes = serde_json::to_vec(value).expect("records always serialize");
        self.entries.push((key.into_string(), bytes));
        self
    }

    /// The value last put under `key`, decoded (`None`: not put).
    pub fn get<T: DeserializeOwned>(&self, key: &Key<T>) -> Option<Result<T, StoreError>> {
        let (_, bytes) = self.entries.iter().rev().find(|(k, _)| k == key.as_str())?;
        Some(key.decode(bytes))
    }

    /// Whether something was put under `key`.
    pub fn contains<T>(&self, key: &Key<T>) -> bool {
        self.entries.iter().any(|(k, _)| k == key.as_str())
    }

    /// Moves every record of `other` after these.
    pub fn append(&mut self, other: Records) -> &mut Self {
        self.entries.extend(other.entries);
        self
    }

    /// How many puts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was put.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The puts in order, as (key, JSON bytes): what a backend writes.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// The writes of one commit to one incident: records, step KV writes, the
/// new checkpoint (always written, and the store's fence), and what it
/// expects of and writes to the shared plane.
#[derive(Debug, Clone)]
pub struct Batch {
    checkpoint: Checkpoint,
    records: Records,
    kv: Vec<(String, Option<Vec<u8>>)>,
    shared: Shared,
}

impl Batch {
    /// A batch that moves the checkpoint to `checkpoint`. Its version must
    /// be [`Expect::next_version`] of the commit's expectation.
    pub fn new(checkpoint: Checkpoint) -> Self {
        Batch {
            checkpoint,
            records: Records::default(),
            kv: Vec::new(),
            shared: Shared::default(),
        }
    }

    /// What the commit expects of and writes to the shared plane, checked
    /// and written atomically with the incident.
    pub fn shared_mut(&mut self) -> &mut Shared {
        &mut self.shared
    }

    /// See [`Batch::shared_mut`].
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Puts an incident record (JSON) under its typed key: the key must
    /// belong to the incident committed to ([`keys`]); the
    /// checkpoint key is the batch's own. A record of another type than its
    /// key names does not compile:
    ///
    /// ```compile_fail
    /// use runbox_core::{ident::IncidentId, records::{Checkpoint, Status}};
    /// use runbox_store::keys;
    /// let id = IncidentId::new("INC-1").unwrap();
    /// let mut batch = runbox_store::Batch::new(Checkpoint::first("s"));
    /// batch.put(keys::status(&id), &Checkpoint::first("s")); // a status key holds a Status
    /// ```
    ///
    /// ```
    /// # use runbox_core::{ident::IncidentId, records::{Checkpoint, Status}};
    /// # use runbox_store::keys;
    /// # let id = IncidentId::new("INC-1").unwrap();
    /// # let mut batch = runbox_store::Batch::new(Checkpoint::first("s"));
    /// batch.put(keys::status(&id), &Status::Open);
    /// ```
    pub fn put<T: Serialize>(&mut self, key: Key<T>, value: &T) -> &mut Self {
        self.records.put(key, value);
        self
    }

    /// Puts every record of `records` (see [`Batch::put`]).
    pub fn put_all(&mut self, records: Records) -> &mut Self {
        self.records.append(records);
        self
    }

    /// Puts `json` under `key` as it is, whatever it holds: for tests and
    /// benchmarks that write a corrupt, odd-sized or foreign record on
    /// purpose.
    #[cfg(any(test, feature = "test-util"))]
    pub fn put_unchecked<T>(&mut self, key: Key<T>, json: Vec<u8>) -> &mut Self {
        self.records.entries.push((key.into_string(), json));
        self
    }

    /// Puts (`Some`) or deletes (`None`) a step KV key of the incident.
    pub fn kv(&mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> &mut Self {
        self.kv.push((key.into(), value));
        self
    }

    /// The new checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The step KV writes.
    pub fn kv_writes(&self) -> &[(String, Option<Vec<u8>>)] {
        &self.kv
    }

    /// Checks the batch against the commit rules, so every backend refuses
    /// the same batches: every record key is the incident's own, and the
    /// checkpoint's version follows `expected`. Backends call this before
    /// writing.
    pub fn validate(&self, incident: &IncidentId, expected: Expect) -> Result<(), StoreError> {
        let bad = |message: String| StoreError::BadBatch {
            incident: incident.clone(),
            message,
        };
        if self.checkpoint.version != expected.next_version() {
            return Err(bad(format!(
                "the new checkpoint has version {}, but a commit on {expected} writes version {}",
                self.checkpoint.version,
                expected.next_version()
            )));
        }
        let prefix = keys::prefix(incident);
        let index = keys::index(incident);
        let checkpoint = keys::checkpoint(incident);
        for (key, _) in self.records.iter() {
            if key == checkpoint.as_str() {
                return Err(bad("the checkpoint is written by the batch itself".into()));
            }
            if !key.starts_with(&prefix) && key != index.as_str() {
                return Err(bad(format!("key `{key}` belongs to another incident")));
            }
        }
        self.shared.validate()
    }
}

/// Checks what [`Store::restore`] is handed: every record is the
/// incident's own, and its checkpoint is among them.
pub fn check_restore(incident: &IncidentId, records: &Page) -> Result<(), StoreError> {
    let bad = |message: String| StoreError::BadBatch {
        incident: incident.clone(),
        message,
    };
    let prefix = keys::prefix(incident);
    let index = keys::index(incident);
    if let Some((key, _)) = records
        .iter()
        .find(|(k, _)| !k.starts_with(&prefix) && k != index.as_str())
    {
        return Err(bad(format!("key `{key}` belongs to another incident")));
    }
    let cp = keys::checkpoint(incident);
    match records.iter().find(|(k, _)| k == cp.as_str()) {
        Some((key, bytes)) => decode_version(key, bytes).map(|_| ()),
        None => Err(bad("no checkpoint among the records".into())),
    }
}

/// Puts an incident's checkpoint and index last, for [`Store::restore`]:
/// until they are written the incident is neither listed nor found.
pub fn restore_order(incident: &IncidentId, mut records: Page) -> Page {
    let last = [
        keys::checkpoint(incident).into_string(),
        keys::index(incident).into_string(),
    ];
    records.sort_by_key(|(k, _)| last.iter().position(|l| l == k));
    records
}

/// The key of an incident's checkpoint, the one record a backend checks a
/// commit's [`Expect`] against.
pub fn checkpoint_key(incident: &IncidentId) -> String {
    keys::checkpoint(incident).into_string()
}

/// The one key and value a commit writes for its checkpoint.
pub fn checkpoint_entry(incident: &IncidentId, batch: &Batch) -> (String, Vec<u8>) {
    let bytes = serde_json::to_vec(&batch.checkpoint).expect("a checkpoint always serializes");
    (keys::checkpoint(incident).into_string(), bytes)
}

/// Checks what a commit expects against the stored checkpoint (`None`: no
/// incident), in the one way every backend must. `key` names the record in
/// errors.
pub fn check_expected(
    incident: &IncidentId,
    expected: Expect,
    key: &str,
    stored: Option<&[u8]>,
) -> Result<(), StoreError> {
    let found = stored.map(|b| decode_version(key, b)).transpose()?;
    let matches = match expected {
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if matches {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            incident: incident.clone(),
            expected,
            found,
        })
    }
}

/// The version stored in an encoded checkpoint.
pub fn decode_version(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    decode::<Checkpoint>(key, bytes).map(|cp| cp.version)
}

/// Decodes a JSON record, naming its key when it is corrupt.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// A page of (key, value) pairs in key order.
pub type Page = Vec<(String, Vec<u8>)>;

/// A page of records as stored (JSON), each under its typed key, in key
/// order ([`StoreExt::read_page_encoded`]).
pub type EncodedPage<T> = Vec<(Key<T>, Vec<u8>)>;

/// What [`Store::get_many`] reads: each key's value (`None` where it has
/// none), in the order asked.
pub type Values = Vec<Option<Vec<u8>>>;

/// The state plane. Implementations are shared between threads; every
/// method is safe to call concurrently.
pub trait Store: Send + Sync + 'static {
    /// Reads an incident-plane record by key.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Several incident-plane records at once, in the order of `keys`: what
    /// [`Store::get`] reads for each, as of one moment where the backend
    /// can (one etcd request, not one per key). The run loop reads a
    /// step's standing this way. Default: [`Store::get`] for each in turn.
    fn get_many(&self, keys: &Group) -> Result<Values, StoreError> {
        keys.keys().iter().map(|k| self.get(k)).collect()
    }

    /// Up to `limit` incident-plane records whose keys start with `prefix`
    /// and sort after `after` (from the first when `None`), in key order.
    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError>;

    /// Up to `limit` records under `prefix` that sort before `before` (from
    /// the last when `None`), in reverse key order.
    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// A step KV value of an incident.
    fn kv_get(&self, incident: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// All step KV entries of an incident, keys relative to the incident.
    fn kv_scan(&self, incident: &IncidentId) -> Result<Page, StoreError>;

    /// Commits `batch` to `incident` if its checkpoint is as `expected`:
    /// records, step KV writes and the new checkpoint, atomically and
    /// durably, or nothing. A moved checkpoint is [`StoreError::Conflict`].
    fn commit(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError>;

    /// [`Store::commit`], then what [`Store::get_many`] reads for
    /// `read_back` as of right after it, the commit's own writes included
    /// (etcd: in the commit's transaction, one round trip for both). The
    /// run loop reads the next step's standing this way. Default: the
    /// commit, then `get_many`.
    fn commit_and_read(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
        read_back: &Group,
    ) -> Result<Values, StoreError> {
        self.commit(incident, expected, batch)?;
        self.get_many(read_back)
    }

    /// A value from the meta plane.
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a meta-plane value (host settings, not incident state), durably.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Writes `value` under `key` unless the key has a value already, and
    /// returns the value that stands: the first writer's, whoever asks. The
    /// deployment's identity is made this way once per store. Default (a
    /// store one process writes at a time): read, then write if absent.
    fn meta_create(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        if let Some(existing) = self.meta_get(key)? {
            return Ok(existing);
        }
        self.put_meta(key, value)?;
        Ok(value.to_vec())
    }

    /// Applies `swap` if every value it expects stands, atomically and
    /// durably; otherwise writes nothing and returns
    /// [`StoreError::MetaConflict`] naming the first key that differed.
    fn meta_swap(&self, swap: &MetaSwap) -> Result<(), StoreError>;

    /// A shared-plane value with its version.
    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Up to `limit` shared values whose keys start with `prefix` and sort
    /// after `after`, in key order.
    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Commits shared-plane writes alone (a brake engaged or released), if
    /// every expectation holds: atomically and durably, or nothing
    /// ([`StoreError::SharedConflict`]).
    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError>;

    /// Every meta-plane entry, in key order (`runbox store copy`).
    fn meta_scan(&self) -> Result<Page, StoreError>;

    /// Writes an incident copied from another store as it is: its records
    /// (the checkpoint among them) and step KV, if the incident does not
    /// exist here (`runbox store copy`; not for running incidents). The
    /// checkpoint and index are written last, so an incident copied half
    /// way is not listed. Default: none of it is fenced.
    fn restore(&self, incident: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError>;

    /// The name this process goes by among the store's writers: the
    /// runner's name on a store several runners share (etcd), which it
    /// keeps across a restart; `local` on a store one process opens at a
    /// time, where whatever a writer left is its predecessor's.
    fn runner(&self) -> &str {
        "local"
    }

    /// Whether this process can go on writing the incidents it claimed:
    /// on a store several runners share, the lease its claims are held
    /// under must be alive while it holds any (`/readyz`). Default (a store
    /// one process opens at a time): yes.
    fn lease_held(&self) -> Result<(), String> {
        Ok(())
    }

    /// Claims `incident` for this process, to run its steps. On a store
    /// shared by several runners (etcd) at most one holds an incident at a
    /// time, through a lease it keeps renewing, and every commit this
    /// process makes to a claimed incident is fenced on the claim. Default
    /// (a store one process opens at a time): always this process's.
    fn claim(&self, incident: &IncidentId) -> Result<Claim, StoreError> {
        let _ = incident;
        Ok(Claim::Ours)
    }

    /// Whether this process still holds `incident` (its lease renewed in
    /// time): checked before every mutating tool call. Default: yes.
    fn check_claim(&self, incident: &IncidentId) -> Result<(), StoreError> {
        let _ = incident;
        Ok(())
    }

    /// Gives `incident` up, for another runner to take. Default: nothing.
    fn release(&self, incident: &IncidentId) -> Result<(), StoreError> {
        let _ = incident;
        Ok(())
    }
}

/// Who holds an incident, after [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process: it may run the incident's steps.
    Ours,
    /// Another runner, by name.
    Theirs {
        /// The runner.
        runner: String,
    },
}

/// Page size of the `*_all` helpers.
pub const PAGE: usize = 1024;

/// Typed reads over any [`Store`]: a record by its [`Key`], the records
/// under a [`Prefix`], each decoded as the type its key names.
pub trait StoreExt: Store {
    /// Reads the record under a typed key.
    fn read<T: DeserializeOwned>(&self, key: &Key<T>) -> Result<Option<T>, StoreError> {
        self.get(key.as_str())?.map(|b| key.decode(&b)).transpose()
    }

    /// Whether a record is stored under `key` (it is not decoded).
    fn exists<T>(&self, key: &Key<T>) -> Result<bool, StoreError> {
        Ok(self.get(key.as_str())?.is_some())
    }

    /// Every record under `prefix`, decoded, in key order (paged reads).
    fn read_all<T: DeserializeOwned>(
        &self,
        prefix: &Prefix<T>,
    ) -> Result<Vec<(Key<T>, T)>, StoreError> {
        typed(prefix, self.scan_all(prefix.as_str())?)
    }

    /// Up to `limit` records under `prefix` after `after` (from the first
    /// when `None`), decoded, in key order.
    fn read_page<T: DeserializeOwned>(
        &self,
        prefix: &Prefix<T>,
        after: Option<&Key<T>>,
        limit: usize,
    ) -> Result<Vec<(Key<T>, T)>, StoreError> {
        let page = self.read_page_encoded(prefix, after, limit)?;
        page.into_iter()
            .map(|(key, bytes)| key.decode(&bytes).map(|record| (key, record)))
            .collect()
    }

    /// [`StoreExt::read_page`] without decoding: each record as stored
    /// (JSON) under its typed key, for a reader that decodes borrowing
    /// from the bytes.
    fn read_page_encoded<T>(
        &self,
        prefix: &Prefix<T>,
        after: Option<&Key<T>>,
        limit: usize,
    ) -> Result<EncodedPage<T>, StoreError> {
        let page = self.scan(prefix.as_str(), after.map(Key::as_str), limit)?;
        retyped(prefix, page)
    }

    /// Up to `limit` records under `prefix` before `before` (from the last
    /// when `None`), decoded, newest key first.
    fn read_back<T: DeserializeOwned>(
        &self,
        prefix: &Prefix<T>,
        before: Option<&Key<T>>,
        limit: usize,
    ) -> Result<Vec<(Key<T>, T)>, StoreError> {
        let page = self.scan_back(prefix.as_str(), before.map(Key::as_str), limit)?;
        typed(prefix, page)
    }

    /// The last record under `prefix`, decoded.
    fn read_last<T: DeserializeOwned>(
        &self,
        prefix: &Prefix<T>,
    ) -> Result<Option<(Key<T>, T)>, StoreError> {
        Ok(self.read_back(prefix, None, 1)?.pop())
    }

    /// Reads the meta-plane record under a typed key.
    fn meta_read<T: DeserializeOwned>(&self, key: &Key<T>) -> Result<Option<T>, StoreError> {
        self.meta_get(key.as_str())?
            .map(|b| key.decode(&b))
            .transpose()
    }

    /// Every meta-plane record under `prefix`, decoded, in key order.
    fn meta_read_all<T: DeserializeOwned>(
        &self,
        prefix: &Prefix<T>,
    ) -> Result<Vec<(Key<T>, T)>, StoreError> {
        let mut page = self.meta_scan()?;
        page.retain(|(k, _)| k.starts_with(prefix.as_str()));
        typed(prefix, page)
    }

    /// Writes a meta-plane record under its typed key unless the key holds
    /// one already ([`Store::meta_create`]: the first writer's stands).
    fn meta_create_record<T: Serialize>(&self, key: &Key<T>, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("records always serialize");
        self.meta_create(key.as_str(), &bytes).map(|_| ())
    }

    /// Every incident-plane record under `prefix`, in key order (paged reads).
    fn scan_all(&self, prefix: &str) -> Result<Page, StoreError> {
        let mut out: Page = Vec::new();
        loop {
            let after = out.last().map(|(k, _)| k.clone());
            let page = self.scan(prefix, after.as_deref(), PAGE)?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// Every shared value under `prefix`, in key order (paged reads).
    fn shared_scan_all(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut out: Vec<(String, Versioned)> = Vec::new();
        loop {
            let after = out.last().map(|(k, _)| k.clone());
            let page = self.shared_scan(prefix, after.as_deref(), PAGE)?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// The checkpoint version of an incident, `None` when it does not exist.
    fn version(&self, incident: &IncidentId) -> Result<Option<u64>, StoreError> {
        Ok(self.read(&keys::checkpoint(incident))?.map(|cp| cp.version))
    }
}

/// A page scanned under `prefix`, each key typed again and its record
/// decoded.
fn typed<T: DeserializeOwned>(
    prefix: &Prefix<T>,
    page: Page,
) -> Result<Vec<(Key<T>, T)>, StoreError> {
    retyped(prefix, page)?
        .into_iter()
        .map(|(key, bytes)| key.decode(&bytes).map(|record| (key, record)))
        .collect()
}

/// A page scanned under `prefix`, each key typed again: a key outside the
/// prefix is a backend's bug, reported as one.
fn retyped<T>(prefix: &Prefix<T>, page: Page) -> Result<EncodedPage<T>, StoreError> {
    page.into_iter()
        .map(|(k, bytes)| match prefix.key(k) {
            Some(key) => Ok((key, bytes)),
            None => Err(StoreError::io(
                Op::Scan,
                Some(prefix.as_str()),
                format!("a scan under `{prefix}` returned a key outside it"),
            )),
        })
        .collect()
}

impl<S: Store + ?Sized> StoreExt for S {}
