//! # runbox-store-rocksdb: the embedded state plane
//!
//! [`RocksStore`] implements [`runbox_store::Store`] on one embedded RocksDB
//! per data directory. Three column families keep the planes apart:
//!
//! | column family | holds |
//! |---|---|
//! | `incidents` | `incident:{id}:…` records and the `index:` |
//! | `kv` | step KV, keyed `{incident}/{key}` |
//! | `meta` | host settings (the mutation token hash), and the shared plane under `shared/` |
//!
//! Every commit lands in one `WriteBatch` written with `sync = true`. The
//! version check is done under a lock for the incident (one of [`STRIPES`]
//! striped locks, chosen by the incident id), held across the read of the
//! checkpoint and the synced write, so two threads can never both commit on
//! one version. Commits of different incidents that arrive together are
//! written together: one batch, one fsync, for up to [`MAX_GROUP`] of them
//! (the `group` module); a commit refused by its check leaves the others
//! of its group alone. A `runbox.lock` file, held with `flock` for the
//! store's life, keeps a second process out.
//!
//! A commit that touches the shared plane also takes the one shared lock
//! (always after its incident's, so the two never deadlock), checks the
//! shared versions it expects, and writes each value behind an 8-byte
//! big-endian version: the next shared revision, which is kept in
//! `meta` and written in the same batch.
//!
//! ```no_run
//! use runbox_store::{Store, StoreExt};
//! use runbox_store_rocksdb::RocksStore;
//!
//! let store = RocksStore::open("/var/lib/runbox".as_ref())?;
//! let ids: Vec<_> = store.read_all(&runbox_store::keys::incidents())?;
//! # Ok::<(), runbox_store::StoreError>(())
//! ```

#![deny(missing_docs)]

mod group;

pub use group::MAX_GROUP;

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};
use runbox_core::ident::IncidentId;
use runbox_core::sync::lock;
use runbox_store::{
    Batch, Expect, MetaSwap, Op, Page, Shared, Store, StoreError, Versioned, check_expected,
};

const INCIDENTS: &str = "incidents";
const KV: &str = "kv";
const META: &str = "meta";
/// Where shared-plane keys live in `meta`.
const SHARED_PREFIX: &str = "shared/";
/// The meta key of the last shared revision written.
const SHARED_REVISION: &str = "shared_revision";

/// How many commit locks incidents are spread over. Two incidents share one
/// only by hash collision, which costs them concurrency, never correctness.
pub const STRIPES: usize = 1024;

/// The file a writing process holds with `flock`.
pub const LOCK_FILE: &str = "runbox.lock";

/// A data dir's writer lock, held without the store open
/// ([`RocksStore::lock`]): while it lives, no other process opens the
/// store for writing, and an edit of the data dir's other files (its
/// allowed_signers) is this process's alone.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// The store of one data directory.
pub struct RocksStore {
    db: DB,
    dir: PathBuf,
    stripes: Box<[Mutex<()>]>,
    /// The last shared revision written; held across a shared commit's
    /// check and write.
    shared: Mutex<u64>,
    /// Held across a meta write's check and write (`meta_swap`,
    /// `meta_create`), and by plain meta writes so none lands in between.
    meta: Mutex<()>,
    /// Commits waiting to be written together.
    group: group::Group,
    /// Held (flocked) while a writer has the store open.
    _lock: Option<File>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Drop for RocksStore {
    /// A writer closing cleanly with more than [`FLUSH_ON_CLOSE`] bytes in
    /// its memtables flushes them, so the next process to open the data dir
    /// (a read-only `export` of a long incident) reads table files instead
    /// of replaying a large WAL into memory. Best effort: what is not
    /// flushed is still in the WAL.
    fn drop(&mut self) {
        if self._lock.is_none() {
            return;
        }
        for name in [INCIDENTS, KV, META] {
            let cf = self.cf(name);
            let size = self
                .db
                .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables");
            if matches!(size, Ok(Some(bytes)) if bytes > FLUSH_ON_CLOSE) {
                let _ = self.db.flush_cf(cf);
            }
        }
    }
}

/// Memtable bytes of a column family above which closing flushes it
/// (see [`RocksStore`]'s `Drop`): what a reader may have to replay.
pub const FLUSH_ON_CLOSE: u64 = 4 << 20;

impl RocksStore {
    /// Opens (creating if needed) the store in `dir` for reading and
    /// writing. Fails with [`StoreError::Locked`] while another process has
    /// it open for writing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |source: std::io::Error| StoreError::Open {
            dir: dir.to_path_buf(),
            source: source.into(),
        };
        // Owner-only: nobody else has business in a data dir.
        runbox_core::files::create_private_dir(dir).map_err(open_err)?;
        let lock = lock_dir(dir)?;
        let cfs =
            [INCIDENTS, KV, META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&Self::options(), dir, cfs)
            .map_err(|e| Self::open_error(dir, e))?;
        let store = Self::with_db(db, dir, Some(lock));
        store.load_shared_revision()?;
        Ok(store)
    }

    /// Takes `dir`'s writer lock (creating `dir` owner-only if needed)
    /// without opening the store. Fails with [`StoreError::Locked`] while
    /// another process has the store open for writing.
    pub fn lock(dir: &Path) -> Result<DirLock, StoreError> {
        runbox_core::files::create_private_dir(dir).map_err(|source| StoreError::Open {
            dir: dir.to_path_buf(),
            source: source.into(),
        })?;
        Ok(DirLock {
            _file: lock_dir(dir)?,
        })
    }

    /// Opens the store in `dir` for reading only: no lock is taken and
    /// nothing is written (RocksDB's info log goes to the temp dir), so it
    /// works on a read-only filesystem and beside a running writer, seeing
    /// the state as of the moment it opens. A directory with no store yet is
    /// opened read-write (and created) instead. Commits fail.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("CURRENT").exists() {
            return Self::open(dir);
        }
        let mut opts = Self::options();
        opts.set_db_log_dir(std::env::temp_dir().join("runbox-read-only-logs"));
        let db = DB::open_cf_for_read_only(&opts, dir, [INCIDENTS, KV, META], false)
            .map_err(|e| Self::open_error(dir, e))?;
        let store = Self::with_db(db, dir, None);
        store.load_shared_revision()?;
        Ok(store)
    }

    fn load_shared_revision(&self) -> Result<(), StoreError> {
        let revision = match self.get_cf(META, SHARED_REVISION)? {
            Some(bytes) => decode_revision(SHARED_REVISION, &bytes)?,
            None => 0,
        };
        *self.shared_lock() = revision;
        Ok(())
    }

    fn meta_lock(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own: a panic mid-write leaves nothing to fix.
        lock(&self.meta)
    }

    fn shared_lock(&self) -> MutexGuard<'_, u64> {
        // The guarded revision only moves after a synced write succeeded.
        lock(&self.shared)
    }

    /// Checks `shared` and adds its writes to `write` under the shared lock
    /// the caller holds; returns the revision to store once written.
    fn stage_shared(
        &self,
        revision: u64,
        shared: &Shared,
        write: &mut WriteBatch,
    ) -> Result<Option<u64>, StoreError> {
        shared.check(|key| Ok(self.shared_get(key)?.map(|v| v.version)))?;
        if shared.writes().is_empty() {
            return Ok(None);
        }
        let next = revision + 1;
        let meta = self.cf(META);
        for (key, value) in shared.writes() {
            let key = format!("{SHARED_PREFIX}{key}");
            match value {
                Some(v) => {
                    let mut bytes = next.to_be_bytes().to_vec();
                    bytes.extend_from_slice(v);
                    write.put_cf(meta, key.as_bytes(), bytes);
                }
                None => write.delete_cf(meta, key.as_bytes()),
            }
        }
        write.put_cf(meta, SHARED_REVISION.as_bytes(), next.to_be_bytes());
        Ok(Some(next))
    }

    fn with_db(db: DB, dir: &Path, lock: Option<File>) -> Self {
        RocksStore {
            db,
            dir: dir.to_path_buf(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            shared: Mutex::new(0),
            meta: Mutex::new(()),
            group: group::Group::default(),
            _lock: lock,
        }
    }

    fn options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // A torn last record (a write never acknowledged) is dropped; any
        // other WAL damage refuses to open. The default (point-in-time)
        // would silently roll back committed steps past the damage, and a
        // later run would repeat them. A dropped torn commit is safe: a step
        // that mutated made its in-flight marker durable first, so it comes
        // back in doubt, not re-run.
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        // Small footprint: incident records are tiny.
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        opts
    }

    fn open_error(dir: &Path, e: rocksdb::Error) -> StoreError {
        StoreError::Open {
            dir: dir.to_path_buf(),
            source: Box::new(e),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn stripe(&self, incident: &IncidentId) -> MutexGuard<'_, ()> {
        self.lock_stripe(self.stripe_of(incident))
    }

    /// The index of the incident's commit lock.
    fn stripe_of(&self, incident: &IncidentId) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        incident.hash(&mut hasher);
        hasher.finish() as usize % STRIPES
    }

    fn lock_stripe(&self, index: usize) -> MutexGuard<'_, ()> {
        // The guarded section writes one batch or nothing; a panic inside
        // it leaves no half state, so a poisoned lock is safe to reuse.
        lock(&self.stripes[index])
    }

    fn get_cf(&self, cf: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf), key.as_bytes())
            .map_err(|e| StoreError::io(Op::Read, Some(key), e))
    }

    fn scan_cf(
        &self,
        cf: &str,
        prefix: &str,
        from: IteratorMode<'_>,
        skip_exact: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut opts = ReadOptions::default();
        // A reader (an export, a report) reads each block of a scan once:
        // caching them would grow its memory with the data dir (an export
        // of a million events held 40 MiB of blocks), for nothing.
        opts.fill_cache(self._lock.is_some());
        // Only the prefix's range: the iterator never reads past it.
        opts.set_iterate_lower_bound(prefix.as_bytes().to_vec());
        if let Some(upper) = prefix_end(prefix.as_bytes()) {
            opts.set_iterate_upper_bound(upper);
        }
        // The raw iterator lends each entry: one copy of it into the page.
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), opts);
        let forward = match from {
            IteratorMode::Start => {
                it.seek_to_first();
                true
            }
            IteratorMode::End => {
                it.seek_to_last();
                false
            }
            IteratorMode::From(key, Direction::Forward) => {
                it.seek(key);
                true
            }
            IteratorMode::From(key, Direction::Reverse) => {
                it.seek_for_prev(key);
                false
            }
        };
        let mut out = Vec::new();
        while let Some((k, v)) = it.item() {
            if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            if skip_exact.map(str::as_bytes) != Some(k) {
                out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
            }
            if forward {
                it.next();
            } else {
                it.prev();
            }
        }
        it.status()
            .map_err(|e| StoreError::io(Op::Scan, Some(prefix), e))?;
        Ok(out)
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn kv_key(incident: &IncidentId, key: &str) -> String {
    format!("{incident}/{key}")
}

/// Takes `dir/runbox.lock` with `flock`, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            source: e.into(),
        })?;
    // SAFETY: flock only acts on the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        })
    } else {
        Err(StoreError::Open {
            dir: dir.to_path_buf(),
            source: err.into(),
        })
    }
}

impl Store for RocksStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_cf(INCIDENTS, key)
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let from = after.filter(|a| *a >= prefix).unwrap_or(prefix);
        let mode = IteratorMode::From(from.as_bytes(), Direction::Forward);
        self.scan_cf(INCIDENTS, prefix, mode, after, limit)
    }

    fn scan_back(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mode = match before {
            Some(b) => IteratorMode::From(b.as_bytes(), Direction::Reverse),
            None => IteratorMode::End,
        };
        self.scan_cf(INCIDENTS, prefix, mode, before, limit)
    }

    fn kv_get(&self, incident: &IncidentId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_cf(KV, &kv_key(incident, key))
    }

    fn kv_scan(&self, incident: &IncidentId) -> Result<Page, StoreError> {
        let prefix = kv_key(incident, "");
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        Ok(self
            .scan_cf(KV, &prefix, mode, None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect())
    }

    fn commit(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError> {
        batch.validate(incident, expected)?;
        if batch.shared().is_empty() {
            return self.commit_grouped(incident, expected, batch);
        }
        // Check and write under the incident's lock, then the shared lock:
        // no other commit to either can land between the reads and the
        // synced write.
        let _guard = self.stripe(incident);
        let mut write = WriteBatch::default();
        let cp_key = self.stage(incident, expected, &batch, &mut write)?;
        let mut revision = self.shared_lock();
        let next = self.stage_shared(*revision, batch.shared(), &mut write)?;
        self.write_synced(write, Some(&cp_key))?;
        *revision = next.unwrap_or(*revision);
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_cf(META, key)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let _guard = self.meta_lock();
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(META), key.as_bytes(), value);
        self.write_synced(write, Some(key))
    }

    fn meta_create(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let _guard = self.meta_lock();
        if let Some(existing) = self.get_cf(META, key)? {
            return Ok(existing);
        }
        let mut write = WriteBatch::default();
        write.put_cf(self.cf(META), key.as_bytes(), value);
        self.write_synced(write, Some(key))?;
        Ok(value.to_vec())
    }

    fn meta_swap(&self, swap: &MetaSwap) -> Result<(), StoreError> {
        let _guard = self.meta_lock();
        swap.check(|key| self.get_cf(META, key))?;
        let mut write = WriteBatch::default();
        for (key, value) in swap.puts() {
            write.put_cf(self.cf(META), key.as_bytes(), value);
        }
        self.write_synced(write, swap.puts().first().map(|(k, _)| k.as_str()))
    }

    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = format!("{SHARED_PREFIX}{key}");
        self.get_cf(META, &key)?
            .map(|bytes| decode_versioned(&key, bytes))
            .transpose()
    }

    fn shared_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let full = format!("{SHARED_PREFIX}{prefix}");
        let after = after.map(|a| format!("{SHARED_PREFIX}{a}"));
        let from = after
            .as_deref()
            .filter(|a| *a >= full.as_str())
            .unwrap_or(&full);
        let mode = IteratorMode::From(from.as_bytes(), Direction::Forward);
        self.scan_cf(META, &full, mode, after.as_deref(), limit)?
            .into_iter()
            .map(|(k, v)| {
                let value = decode_versioned(&k, v)?;
                Ok((k[SHARED_PREFIX.len()..].to_string(), value))
            })
            .collect()
    }

    fn meta_scan(&self) -> Result<Page, StoreError> {
        let all = self.scan_cf(META, "", IteratorMode::Start, None, usize::MAX)?;
        Ok(all
            .into_iter()
            .filter(|(k, _)| !k.starts_with(SHARED_PREFIX) && k != SHARED_REVISION)
            .collect())
    }

    fn restore(&self, incident: &IncidentId, records: Page, kv: Page) -> Result<(), StoreError> {
        runbox_store::check_restore(incident, &records)?;
        let cp_key = runbox_store::checkpoint_key(incident);
        let mut write = WriteBatch::default();
        let cf = self.cf(INCIDENTS);
        for (k, v) in &records {
            write.put_cf(cf, k.as_bytes(), v);
        }
        let kv_cf = self.cf(KV);
        for (k, v) in &kv {
            write.put_cf(kv_cf, kv_key(incident, k).as_bytes(), v);
        }
        let _guard = self.stripe(incident);
        let stored = self.get_cf(INCIDENTS, &cp_key)?;
        check_expected(incident, Expect::Absent, &cp_key, stored.as_deref())?;
        self.write_synced(write, Some(&cp_key))
    }

    fn commit_shared(&self, shared: Shared) -> Result<(), StoreError> {
        shared.validate()?;
        let mut write = WriteBatch::default();
        let mut revision = self.shared_lock();
        let next = self.stage_shared(*revision, &shared, &mut write)?;
        if next.is_some() {
            self.write_synced(write, Some(SHARED_REVISION))?;
        }
        *revision = next.unwrap_or(*revision);
        Ok(())
    }
}

/// A shared value as stored: its version, 8 bytes big-endian, then the bytes.
fn decode_versioned(key: &str, mut bytes: Vec<u8>) -> Result<Versioned, StoreError> {
    let version = decode_revision(key, bytes.get(..8).unwrap_or(&[]))?;
    bytes.drain(..8);
    Ok(Versioned {
        value: bytes,
        version,
    })
}

fn decode_revision(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| {
        StoreError::io(
            Op::Read,
            Some(key),
            format!("a shared version is 8 bytes, found {}", bytes.len()),
        )
    })?;
    Ok(u64::from_be_bytes(raw))
}

impl RocksStore {
    fn write_synced(&self, write: WriteBatch, key: Option<&str>) -> Result<(), StoreError> {
        self.write_raw(write)
            .map_err(|e| StoreError::io(Op::Write, key, e))
    }

    /// Writes `write` with `sync = true`.
    fn write_raw(&self, write: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(write, &opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbox_store::conformance::Fixture;

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        Fixture::with_guard(store, dir)
    }

    runbox_store::conformance_tests!(fixture());

    /// 300 threads opening their incidents at once (more than one group
    /// takes, if they all queue together): every one lands.
    #[test]
    fn commits_past_one_group_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let ids: Vec<IncidentId> = (0..MAX_GROUP + 44)
            .map(|i| IncidentId::new(format!("G-{i}")).unwrap())
            .collect();
        let barrier = std::sync::Barrier::new(ids.len());
        std::thread::scope(|s| {
            for id in &ids {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    runbox_store::conformance::open(store, id);
                });
            }
        });
        use runbox_store::StoreExt;
        for id in &ids {
            assert_eq!(store.version(id).unwrap(), Some(0), "{id}");
        }
    }

    #[test]
    fn second_open_of_a_data_dir_says_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksStore::open(dir.path()).unwrap();
        let err = RocksStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another runbox process"));
    }

    #[test]
    fn read_only_open_sees_committed_state_beside_a_writer_and_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RocksStore::open(dir.path()).unwrap();
        let id = IncidentId::new("a").unwrap();
        runbox_store::conformance::open(&writer, &id);
        let reader = RocksStore::open_read_only(dir.path()).unwrap();
        use runbox_store::StoreExt;
        assert_eq!(reader.version(&id).unwrap(), Some(0));
        let mut next = runbox_core::records::Checkpoint::first("s");
        next.version = 1;
        let err = reader
            .commit(&id, Expect::Version(0), Batch::new(next))
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { op: Op::Write, .. }), "{err}");
    }

    /// Bytes in the incident plane's memtables.
    fn memtable_bytes(store: &RocksStore) -> u64 {
        let cf = store.cf(INCIDENTS);
        let size = store
            .db
            .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables");
        size.unwrap().unwrap()
    }

    #[test]
    fn closing_flushes_memtables_past_the_limit_and_keeps_small_ones_in_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, incidents: usize, each: usize| {
            let store = RocksStore::open(dir.path()).unwrap();
            for i in 0..incidents {
                let id = IncidentId::new(format!("{name}{i}")).unwrap();
                let mut batch = Batch::new(runbox_core::records::Checkpoint::first("s"));
                batch.put_unchecked(runbox_store::keys::meta(&id), vec![b'7'; each]);
                store.commit(&id, Expect::Absent, batch).unwrap();
            }
        };
        // Small: stays in the WAL, so a reader replays it into memtables.
        write("small", 1, 100_000);
        let reader = RocksStore::open_read_only(dir.path()).unwrap();
        assert!(memtable_bytes(&reader) > 100_000);
        drop(reader);
        // Past FLUSH_ON_CLOSE: closing flushed it; a reader replays nothing.
        write("big", 64, (FLUSH_ON_CLOSE / 32) as usize);
        let reader = RocksStore::open_read_only(dir.path()).unwrap();
        assert!(
            memtable_bytes(&reader) < 100_000,
            "{}",
            memtable_bytes(&reader)
        );
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
    }
}
