//! The conformance suite: what every [`Store`] backend must do, as plain
//! functions a backend's tests call, one `#[test]` each through
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! runbox_store::conformance_tests!(runbox_store::conformance::Fixture::new(MyStore::new()));
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use crate::keys::{self, Group};
use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, Status};

use crate::{Batch, Expect, Shared, Store, StoreError, StoreExt};

/// A store under test and whatever must live as long as it (a temp dir).
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    _guard: Box<dyn Any>,
}

impl Fixture {
    /// A fixture with nothing to keep alive.
    pub fn new(store: impl Store) -> Self {
        Self::with_guard(store, ())
    }

    /// A fixture that keeps `guard` until the test ends.
    pub fn with_guard(store: impl Store, guard: impl Any) -> Self {
        Fixture {
            store: Arc::new(store),
            _guard: Box::new(guard),
        }
    }
}

/// Generates one `#[test]` per conformance check; `$make` builds a fresh
/// [`Fixture`] for each. The checks come from the one list
/// ([`CHECKS`] is made from it too), so no backend can skip one.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__with_conformance_checks!(tests $make);
    };
}

/// The one list of checks, handed to [`__conformance_expand!`]: every
/// backend's tests and [`CHECKS`] are made from it.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_checks {
    ($($how:tt)*) => {
        $crate::__conformance_expand! { $($how)* ;
            stale_version_conflicts_and_writes_nothing,
            opening_twice_conflicts,
            records_kv_and_checkpoint_commit_together,
            bad_batches_are_refused_and_write_nothing,
            scans_page_and_stop_at_their_prefix,
            kv_is_per_incident_and_deletes,
            meta_round_trips,
            get_many_reads_what_get_reads_in_order,
            commit_and_read_reads_after_its_own_writes,
            concurrent_incidents_all_commit,
            one_incident_one_winner_per_version,
            a_refused_commit_leaves_concurrent_ones_alone,
            shared_expectations_fence_commits_across_incidents,
            shared_versions_grow_and_are_never_reused,
            shared_scan_pages_by_prefix,
            shared_counter_has_one_winner_per_count,
            restore_copies_an_incident_once,
            meta_swaps_are_conditional_and_atomic,
        }
    };
}

/// Expands the list: one `#[test]` per check, or the [`CHECKS`] table.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_expand {
    (tests $make:expr ; $($check:ident,)*) => {
        $(
            #[test]
            fn $check() {
                let fixture: $crate::conformance::Fixture = $make;
                $crate::conformance::$check(&*fixture.store);
            }
        )*
    };
    (table ; $($check:ident,)*) => {
        /// Every check, by name, for a backend that runs them in one test
        /// (one server for all): the same list as
        /// [`conformance_tests!`](crate::conformance_tests).
        pub const CHECKS: &[(&str, Check)] = &[$((stringify!($check), $check as Check),)*];
    };
}

/// One conformance check.
pub type Check = fn(&dyn Store);

crate::__with_conformance_checks!(table);

fn id(name: &str) -> IncidentId {
    IncidentId::new(name).expect("test ids are valid")
}

fn checkpoint(version: u64) -> Checkpoint {
    Checkpoint {
        version,
        ..Checkpoint::first("s")
    }
}

/// Opens `incident` (version 0) with a status record.
pub fn open(store: &dyn Store, incident: &IncidentId) {
    let mut batch = Batch::new(checkpoint(0));
    batch
        .put(keys::status(incident), &Status::Open)
        .put(keys::index(incident), incident);
    store
        .commit(incident, Expect::Absent, batch)
        .expect("opening a new incident commits");
}

/// Moves `incident` from `version` to `version + 1`, with one KV write.
fn advance(store: &dyn Store, incident: &IncidentId, version: u64) -> Result<(), StoreError> {
    let mut batch = Batch::new(checkpoint(version + 1));
    batch.kv(format!("v{}", version + 1), Some(b"x".to_vec()));
    store.commit(incident, Expect::Version(version), batch)
}

/// A commit on a stale version fails with the conflict error and writes nothing.
pub fn stale_version_conflicts_and_writes_nothing(store: &dyn Store) {
    let a = id("A");
    open(store, &a);
    advance(store, &a, 0).unwrap();
    let mut stale = Batch::new(checkpoint(1));
    stale
        .put(keys::status(&a), &Status::Failed)
        .kv("stale", Some(b"1".to_vec()));
    let err = store.commit(&a, Expect::Version(0), stale).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Expect::Version(0),
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("changed underneath"), "{err}");
    assert_eq!(store.version(&a).unwrap(), Some(1));
    assert_eq!(store.read(&keys::status(&a)).unwrap(), Some(Status::Open));
    assert_eq!(store.kv_get(&a, "stale").unwrap(), None);
}

/// Opening an incident that exists conflicts; expecting a version of one
/// that does not exist conflicts too.
pub fn opening_twice_conflicts(store: &dyn Store) {
    let a = id("A");
    open(store, &a);
    let again = store.commit(&a, Expect::Absent, Batch::new(checkpoint(0)));
    assert!(
        matches!(again, Err(StoreError::Conflict { found: Some(0), .. })),
        "{again:?}"
    );
    let ghost = advance(store, &id("ghost"), 0);
    assert!(
        matches!(ghost, Err(StoreError::Conflict { found: None, .. })),
        "{ghost:?}"
    );
    assert_eq!(store.version(&id("ghost")).unwrap(), None);
}

/// Records, KV writes and the checkpoint land together; the planes stay
/// apart (a KV key named like a record stays in KV).
pub fn records_kv_and_checkpoint_commit_together(store: &dyn Store) {
    let a = id("A");
    open(store, &a);
    let mut batch = Batch::new(checkpoint(1));
    batch
        .put(keys::status(&a), &Status::Resolved)
        .kv(keys::status(&a).into_string(), Some(b"forged".to_vec()));
    store.commit(&a, Expect::Version(0), batch).unwrap();
    assert_eq!(
        store.read(&keys::status(&a)).unwrap(),
        Some(Status::Resolved)
    );
    assert_eq!(
        store
            .kv_get(&a, keys::status(&a).as_str())
            .unwrap()
            .as_deref(),
        Some(&b"forged"[..])
    );
    let cp: Checkpoint = store.read(&keys::checkpoint(&a)).unwrap().unwrap();
    assert_eq!(cp, checkpoint(1));
}

/// A batch writing another incident's key, its own checkpoint key, or a
/// checkpoint version that does not follow is refused whole.
pub fn bad_batches_are_refused_and_write_nothing(store: &dyn Store) {
    let (a, b) = (id("A"), id("B"));
    open(store, &a);
    let mut foreign = Batch::new(checkpoint(1));
    foreign
        .kv("k", Some(b"1".to_vec()))
        .put(keys::status(&b), &Status::Open);
    let err = store.commit(&a, Expect::Version(0), foreign).unwrap_err();
    assert!(matches!(err, StoreError::BadBatch { .. }), "{err}");
    let mut own_cp = Batch::new(checkpoint(1));
    own_cp.put(keys::checkpoint(&a), &checkpoint(7));
    let err = store.commit(&a, Expect::Version(0), own_cp).unwrap_err();
    assert!(matches!(err, StoreError::BadBatch { .. }), "{err}");
    let skip = store.commit(&a, Expect::Version(0), Batch::new(checkpoint(5)));
    assert!(matches!(skip, Err(StoreError::BadBatch { .. })), "{skip:?}");
    assert_eq!(store.version(&a).unwrap(), Some(0));
    assert_eq!(store.kv_get(&a, "k").unwrap(), None);
    assert_eq!(store.get(keys::status(&b).as_str()).unwrap(), None);
}

/// Scans page in key order, stop at the prefix, and run backwards.
pub fn scans_page_and_stop_at_their_prefix(store: &dyn Store) {
    let (a, a1) = (id("A"), id("A1"));
    open(store, &a);
    open(store, &a1);
    let mut batch = Batch::new(checkpoint(1));
    for seq in 0..5u64 {
        // Scanning cares for keys only: the values are bare sequence numbers.
        batch.put_unchecked(keys::event(&a, seq), seq.to_string().into_bytes());
    }
    store.commit(&a, Expect::Version(0), batch).unwrap();
    let mut other = Batch::new(checkpoint(1));
    other.put_unchecked(keys::event(&a1, 0), b"99".to_vec());
    store.commit(&a1, Expect::Version(0), other).unwrap();

    let timeline = keys::timeline(&a);
    let prefix = timeline.as_str();
    let first = store.scan(prefix, None, 2).unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.scan(prefix, Some(&first[1].0), 100).unwrap();
    let all: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    assert_eq!(all, [0, 1, 2, 3, 4], "another incident's events never show");
    let back = store.scan_back(prefix, None, 2).unwrap();
    assert_eq!(back[0].0, keys::event(&a, 4).as_str());
    assert_eq!(back[1].0, keys::event(&a, 3).as_str());
    let before = store.scan_back(prefix, Some(&back[1].0), 10).unwrap();
    assert_eq!(before.len(), 3);
    let last = store.scan_back(keys::timeline(&a1).as_str(), None, 1);
    assert_eq!(last.unwrap()[0].1, b"99");
    assert_eq!(store.scan_all(prefix).unwrap().len(), 5);
    let ids: Vec<IncidentId> = (store.read_all(&keys::incidents()).unwrap())
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids, [a, a1]);
}

/// Step KV is per incident, and a `None` write deletes.
pub fn kv_is_per_incident_and_deletes(store: &dyn Store) {
    let (a, b) = (id("A"), id("B"));
    open(store, &a);
    open(store, &b);
    advance(store, &a, 0).unwrap();
    assert_eq!(store.kv_get(&a, "v1").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(store.kv_get(&b, "v1").unwrap(), None);
    let mut delete = Batch::new(checkpoint(2));
    delete.kv("v1", None).kv("w", Some(b"2".to_vec()));
    store.commit(&a, Expect::Version(1), delete).unwrap();
    let kv: BTreeMap<String, Vec<u8>> = store.kv_scan(&a).unwrap().into_iter().collect();
    assert_eq!(kv, BTreeMap::from([("w".to_string(), b"2".to_vec())]));
    assert!(store.kv_scan(&b).unwrap().is_empty());
}

/// A meta swap lands whole when its expectations stand, writes nothing when
/// one does not, and of swaps racing on one expectation exactly one wins.
pub fn meta_swaps_are_conditional_and_atomic(store: &dyn Store) {
    use crate::MetaSwap;
    let first = MetaSwap::new()
        .expect("hash", None)
        .put("hash", b"h1")
        .put("nonce:a", b"used");
    store.meta_swap(&first).unwrap();
    assert_eq!(store.meta_get("hash").unwrap().as_deref(), Some(&b"h1"[..]));
    let again = store.meta_swap(&first).unwrap_err();
    assert!(
        matches!(&again, StoreError::MetaConflict { key } if key == "hash"),
        "{again}"
    );
    let stale = MetaSwap::new()
        .expect("hash", Some(b"h1"))
        .expect("nonce:a", None)
        .put("hash", b"h2");
    assert!(matches!(
        store.meta_swap(&stale),
        Err(StoreError::MetaConflict { key }) if key == "nonce:a"
    ));
    assert_eq!(store.meta_get("hash").unwrap().as_deref(), Some(&b"h1"[..]));

    let racers = 8;
    let barrier = Barrier::new(racers);
    let wins = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..racers)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let swap = MetaSwap::new()
                        .expect("hash", Some(b"h1"))
                        .expect("nonce:b", None)
                        .put("nonce:b", b"used")
                        .put("hash", format!("racer-{i}").as_bytes());
                    barrier.wait();
                    store.meta_swap(&swap).is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count()
    });
    assert_eq!(wins, 1, "one racer wins a swap on one expectation");
}

/// `get_many` answers each key as `get` does, in the order asked, a
/// missing record as `None`, a key asked twice twice; no keys, nothing.
pub fn get_many_reads_what_get_reads_in_order(store: &dyn Store) {
    let a = id("many-a");
    let b = id("many-b");
    open(store, &a);
    open(store, &b);
    advance(store, &b, 0).unwrap();
    let group = Group::new()
        .with(&keys::checkpoint(&b))
        .with(&keys::status(&a))
        .with(&keys::checkpoint(&id("many-missing")))
        .with(&keys::checkpoint(&a))
        .with(&keys::checkpoint(&b));
    let many = store.get_many(&group).unwrap();
    let one: Vec<_> = group.keys().iter().map(|k| store.get(k).unwrap()).collect();
    assert_eq!(many, one);
    assert!(many[2].is_none(), "a missing record reads as None");
    assert!(many.iter().enumerate().all(|(i, v)| i == 2 || v.is_some()));
    assert_ne!(many[0], many[3], "each key answers its own record");
    assert_eq!(many[0], many[4], "a key asked twice answers twice");
    assert!(store.get_many(&Group::new()).unwrap().is_empty());
    // More keys than one etcd request takes (128): answered all the same.
    let wide = (0..300)
        .map(|i| keys::checkpoint(&id(&format!("many-none-{i}"))))
        .fold(Group::new(), |group, key| group.with(&key))
        .with(&keys::checkpoint(&b));
    let read = store.get_many(&wide).unwrap();
    assert_eq!(read.len(), 301);
    assert!(read[..300].iter().all(Option::is_none));
    assert_eq!(read[300], many[0], "the last key of a wide read answers");
}

/// `commit_and_read` commits as `commit` does and reads as of right after
/// it, its own writes included; a refused one writes and reads nothing.
pub fn commit_and_read_reads_after_its_own_writes(store: &dyn Store) {
    let a = id("read-back");
    open(store, &a);
    let group = Group::new()
        .with(&keys::checkpoint(&a))
        .with(&keys::status(&a))
        .with(&keys::checkpoint(&id("read-back-missing")));
    let mut batch = Batch::new(checkpoint(1));
    batch.put(keys::status(&a), &Status::Running);
    let read = store
        .commit_and_read(&a, Expect::Version(0), batch, &group)
        .unwrap();
    assert_eq!(read, store.get_many(&group).unwrap());
    let status = keys::status(&a).decode(read[1].as_deref().unwrap());
    assert_eq!(
        status.unwrap(),
        Status::Running,
        "the read sees the commit's write"
    );
    let cp = keys::checkpoint(&a)
        .decode(read[0].as_deref().unwrap())
        .unwrap();
    assert_eq!(cp.version, 1);
    assert!(read[2].is_none());
    let err = store
        .commit_and_read(&a, Expect::Version(0), Batch::new(checkpoint(1)), &group)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.version(&a).unwrap(), Some(1));
    // Nothing to read back: just the commit.
    let none = store
        .commit_and_read(
            &a,
            Expect::Version(1),
            Batch::new(checkpoint(2)),
            &Group::new(),
        )
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(store.version(&a).unwrap(), Some(2));
    // More to read back than fits beside the writes in one etcd
    // transaction (128 operations): read all the same, after the commit.
    let wide = (0..200)
        .map(|i| keys::status(&id(&format!("read-back-none-{i}"))))
        .fold(Group::new(), |group, key| group.with(&key))
        .with(&keys::checkpoint(&a));
    let read = store
        .commit_and_read(&a, Expect::Version(2), Batch::new(checkpoint(3)), &wide)
        .unwrap();
    assert_eq!(read.len(), 201);
    assert!(read[..200].iter().all(Option::is_none));
    let cp = keys::checkpoint(&a)
        .decode(read[200].as_deref().unwrap())
        .unwrap();
    assert_eq!(cp.version, 3, "a wide read back sees the commit");
}

/// The meta plane round-trips and is apart from incident records.
pub fn meta_round_trips(store: &dyn Store) {
    assert_eq!(store.meta_get("token").unwrap(), None);
    store.put_meta("token", b"h1").unwrap();
    store.put_meta("token", b"h2").unwrap();
    assert_eq!(
        store.meta_get("token").unwrap().as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(store.get("token").unwrap(), None);
    // `meta_create` keeps the first value, whoever asks second.
    assert_eq!(store.meta_create("identity", b"first").unwrap(), b"first");
    assert_eq!(store.meta_create("identity", b"second").unwrap(), b"first");
    assert_eq!(
        store.meta_get("identity").unwrap().as_deref(),
        Some(&b"first"[..])
    );
}

/// 64 concurrent writers on 64 incidents all commit.
pub fn concurrent_incidents_all_commit(store: &dyn Store) {
    const WRITERS: usize = 64;
    const COMMITS: u64 = 20;
    let ids: Vec<IncidentId> = (0..WRITERS).map(|i| id(&format!("INC-{i}"))).collect();
    for i in &ids {
        open(store, i);
    }
    let barrier = Barrier::new(WRITERS);
    std::thread::scope(|s| {
        for i in &ids {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for v in 0..COMMITS {
                    advance(store, i, v).expect("no one else writes this incident");
                }
            });
        }
    });
    for i in &ids {
        assert_eq!(store.version(i).unwrap(), Some(COMMITS));
        assert_eq!(store.kv_scan(i).unwrap().len() as u64, COMMITS);
    }
}

/// 32 concurrent writers on their own incidents, half of them on a stale
/// version: those are refused and write nothing, and the others all land
/// (a store that writes commits together must not fail a group for one).
pub fn a_refused_commit_leaves_concurrent_ones_alone(store: &dyn Store) {
    const WRITERS: usize = 32;
    const ROUNDS: u64 = 5;
    let ids: Vec<IncidentId> = (0..WRITERS).map(|i| id(&format!("MIX-{i}"))).collect();
    for i in &ids {
        open(store, i);
    }
    let barrier = Barrier::new(WRITERS);
    std::thread::scope(|s| {
        for (n, i) in ids.iter().enumerate() {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for v in 0..ROUNDS {
                    if n % 2 == 0 {
                        advance(store, i, v).expect("the right version commits");
                    } else {
                        let stale = advance(store, i, v + 7);
                        assert!(
                            matches!(stale, Err(StoreError::Conflict { .. })),
                            "{stale:?}"
                        );
                    }
                }
            });
        }
    });
    for (n, i) in ids.iter().enumerate() {
        let (version, kv) = if n % 2 == 0 { (ROUNDS, ROUNDS) } else { (0, 0) };
        assert_eq!(store.version(i).unwrap(), Some(version), "{i}");
        assert_eq!(store.kv_scan(i).unwrap().len() as u64, kv, "{i}");
    }
}

/// 8 concurrent writers on one incident: exactly one wins each version.
pub fn one_incident_one_winner_per_version(store: &dyn Store) {
    const WRITERS: usize = 8;
    const VERSIONS: u64 = 50;
    let a = id("A");
    open(store, &a);
    let barrier = Barrier::new(WRITERS);
    let wins: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (barrier, a) = (&barrier, &a);
                s.spawn(move || {
                    let mut won = Vec::new();
                    barrier.wait();
                    loop {
                        let v = store.version(a).unwrap().unwrap();
                        if v >= VERSIONS {
                            return won;
                        }
                        let mut batch = Batch::new(checkpoint(v + 1));
                        batch.kv(
                            format!("winner-of-{}", v + 1),
                            Some(w.to_string().into_bytes()),
                        );
                        match store.commit(a, Expect::Version(v), batch) {
                            Ok(()) => won.push(v + 1),
                            Err(StoreError::Conflict { .. }) => {}
                            Err(e) => panic!("unexpected store error: {e}"),
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = wins.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=VERSIONS).collect::<Vec<_>>(),
        "one winner per version"
    );
    let kv = store.kv_scan(&a).unwrap();
    assert_eq!(kv.len() as u64, VERSIONS, "losers wrote nothing");
    for (w, won) in wins.iter().enumerate() {
        for v in won {
            assert_eq!(
                store.kv_get(&a, &format!("winner-of-{v}")).unwrap(),
                Some(w.to_string().into_bytes())
            );
        }
    }
}

/// A shared value both incidents read: the first commit on it wins, the
/// second (its incident's checkpoint still current) is refused whole.
pub fn shared_expectations_fence_commits_across_incidents(store: &dyn Store) {
    let (a, b) = (id("A"), id("B"));
    open(store, &a);
    open(store, &b);
    assert_eq!(store.shared_get("svc/api/lock").unwrap(), None);
    let take_lock = |incident: &IncidentId| {
        let mut batch = Batch::new(checkpoint(1));
        batch.kv("took", Some(b"1".to_vec()));
        batch
            .shared_mut()
            .expect("svc/api/lock", None)
            .put("svc/api/lock", incident.as_str().as_bytes().to_vec());
        store.commit(incident, Expect::Version(0), batch)
    };
    take_lock(&a).unwrap();
    let err = take_lock(&b).unwrap_err();
    assert!(
        matches!(&err, StoreError::SharedConflict { key, expected: None, found: Some(_) } if key == "svc/api/lock"),
        "{err}"
    );
    assert!(err.to_string().contains("svc/api/lock"), "{err}");
    assert_eq!(
        store.shared_get("svc/api/lock").unwrap().unwrap().value,
        b"A"
    );
    assert_eq!(store.version(&b).unwrap(), Some(0), "B's checkpoint stayed");
    assert_eq!(store.kv_get(&b, "took").unwrap(), None, "B wrote nothing");
    // A stale checkpoint refuses the shared writes with it.
    let mut stale = Batch::new(checkpoint(1));
    stale.shared_mut().put("svc/api/other", b"x".to_vec());
    assert!(store.commit(&a, Expect::Version(0), stale).is_err());
    assert_eq!(store.shared_get("svc/api/other").unwrap(), None);
}

/// Versions grow with every write, and a key deleted and written again
/// gets a new one, so a reader of the old value cannot be fooled.
pub fn shared_versions_grow_and_are_never_reused(store: &dyn Store) {
    let mut first = Shared::default();
    first.put("k", b"1".to_vec());
    store.commit_shared(first).unwrap();
    let v1 = store.shared_get("k").unwrap().unwrap().version;
    let mut delete = Shared::default();
    delete.expect("k", Some(v1)).delete("k");
    store.commit_shared(delete).unwrap();
    assert_eq!(store.shared_get("k").unwrap(), None);
    let mut again = Shared::default();
    again.expect("k", None).put("k", b"1".to_vec());
    store.commit_shared(again).unwrap();
    let v3 = store.shared_get("k").unwrap().unwrap().version;
    assert!(v3 > v1, "{v3} > {v1}");
    let mut stale = Shared::default();
    stale.expect("k", Some(v1)).put("k", b"2".to_vec());
    assert!(matches!(
        store.commit_shared(stale),
        Err(StoreError::SharedConflict { .. })
    ));
    let mut bad = Shared::default();
    bad.put("", b"x".to_vec());
    assert!(store.commit_shared(bad).is_err(), "empty keys are refused");
}

/// Shared scans stop at their prefix and page with `after`.
pub fn shared_scan_pages_by_prefix(store: &dyn Store) {
    let mut writes = Shared::default();
    for key in ["brake/a", "brake/b", "brake/c", "brakes", "limit/x"] {
        writes.put(key, key.as_bytes().to_vec());
    }
    store.commit_shared(writes).unwrap();
    let keys = |page: Vec<(String, crate::Versioned)>| -> Vec<String> {
        page.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(
        keys(store.shared_scan("brake/", None, 10).unwrap()),
        ["brake/a", "brake/b", "brake/c"]
    );
    assert_eq!(
        keys(store.shared_scan("brake/", Some("brake/a"), 1).unwrap()),
        ["brake/b"]
    );
    let (_, v) = store.shared_scan("limit/", None, 10).unwrap().remove(0);
    assert_eq!(v.value, b"limit/x");
}

/// 8 threads each add to one shared count through read-compare-write
/// commits of their own incidents: no increment is lost or doubled.
pub fn shared_counter_has_one_winner_per_count(store: &dyn Store) {
    const WRITERS: usize = 8;
    const EACH: u64 = 20;
    let barrier = Barrier::new(WRITERS);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let barrier = &barrier;
            s.spawn(move || {
                let incident = id(&format!("W{w}"));
                open(store, &incident);
                barrier.wait();
                let mut version = 0;
                while version < EACH {
                    let current = store.shared_get("count").unwrap();
                    let n: u64 = current
                        .as_ref()
                        .map_or(0, |v| String::from_utf8_lossy(&v.value).parse().unwrap());
                    let mut batch = Batch::new(checkpoint(version + 1));
                    batch
                        .shared_mut()
                        .expect("count", current.map(|v| v.version))
                        .put("count", (n + 1).to_string().into_bytes());
                    match store.commit(&incident, Expect::Version(version), batch) {
                        Ok(()) => version += 1,
                        Err(StoreError::SharedConflict { .. }) => {}
                        Err(e) => panic!("unexpected store error: {e}"),
                    }
                }
            });
        }
    });
    let count = store.shared_get("count").unwrap().unwrap().value;
    assert_eq!(count, (WRITERS as u64 * EACH).to_string().into_bytes());
}

/// `restore` writes an incident as it is, once; a second restore, or one
/// of records of another incident, writes nothing. `meta_scan` lists meta.
pub fn restore_copies_an_incident_once(store: &dyn Store) {
    let a = id("A");
    let records = vec![
        (
            keys::index(&a).into_string(),
            serde_json::to_vec(&a).unwrap(),
        ),
        (
            keys::status(&a).into_string(),
            serde_json::to_vec(&Status::Resolved).unwrap(),
        ),
        (
            keys::checkpoint(&a).into_string(),
            serde_json::to_vec(&checkpoint(7)).unwrap(),
        ),
    ];
    let kv = vec![("k".to_string(), b"v".to_vec())];
    store.restore(&a, records.clone(), kv.clone()).unwrap();
    assert_eq!(store.version(&a).unwrap(), Some(7));
    assert_eq!(store.kv_get(&a, "k").unwrap(), Some(b"v".to_vec()));
    assert!(matches!(
        store.restore(&a, records.clone(), kv),
        Err(StoreError::Conflict { .. })
    ));
    let b = id("B");
    assert!(matches!(
        store.restore(&b, records, Vec::new()),
        Err(StoreError::BadBatch { .. })
    ));
    assert_eq!(store.version(&b).unwrap(), None);
    store.put_meta("token", b"t").unwrap();
    let meta = store.meta_scan().unwrap();
    assert!(
        meta.contains(&("token".to_string(), b"t".to_vec())),
        "{meta:?}"
    );
    assert_eq!(store.claim(&a).unwrap(), crate::Claim::Ours);
}

#[cfg(test)]
mod tests {
    /// Every `pub fn …(store: &dyn Store)` in this file is in the one list:
    /// a check written but not listed would run on no backend.
    #[test]
    fn every_check_is_listed() {
        let source = include_str!("conformance.rs");
        let written: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub fn "))
            .filter(|l| l.contains("(store: &dyn Store)"))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(written.len() >= 16, "{written:?}");
        for name in written {
            assert!(
                super::CHECKS.iter().any(|(listed, _)| *listed == name),
                "conformance check `{name}` is not in the list (__with_conformance_checks!)"
            );
        }
    }
}
