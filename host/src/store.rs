//! The durable store: one embedded RocksDB per data directory.
//!
//! Three column families keep the planes apart:
//!
//! | column family | holds | who writes |
//! |---|---|---|
//! | `incidents` | `incident:{id}:…` records ([`crate::incident`]) | the engine |
//! | `kv` | step KV, keyed `{incident}/{key}` | steps, through committed attempts |
//! | `meta` | the mutation token hash, the schema version | `runbox token` |
//!
//! A step's KV namespace is a different column family from the incident
//! records, so no key pattern, however broad, can reach `incident:` records.
//! Every write is one [`Batch`] committed with `sync = true`: a step's
//! record, its KV writes, its timeline events and the next checkpoint land
//! together or not at all. RocksDB's `LOCK` file keeps a second process out.

use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const INCIDENTS: &str = "incidents";
const KV: &str = "kv";
const META: &str = "meta";

/// Errors from the store, naming the directory or key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "data dir {dir} is in use by another runbox process (RocksDB lock held); one process at a time per data dir"
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The store could not be opened.
    #[error("cannot open the store in {dir}: {message}")]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A read or write failed.
    #[error("store {op} failed{}: {message}", key.as_ref().map(|k| format!(" for `{k}`")).unwrap_or_default())]
    Io {
        /// `read`, `write` or `scan`.
        op: &'static str,
        /// The key, when there is one.
        key: Option<String>,
        /// RocksDB's message.
        message: String,
    },
    /// A stored record does not decode.
    #[error("record `{key}` is corrupt: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's message.
        message: String,
    },
}

/// The store of one data directory.
pub struct Store {
    db: DB,
    dir: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for reading and writing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let cfs =
            [INCIDENTS, KV, META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&Self::options(), dir, cfs)
            .map_err(|e| Self::open_error(dir, e))?;
        Ok(Store {
            db,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens the store in `dir` for reading only: no lock is taken and
    /// nothing is written (RocksDB's info log goes to the temp dir), so it
    /// works on a read-only filesystem and beside a running `runbox run`,
    /// seeing the state as of the moment it opens. A directory with no store
    /// yet is opened read-write (and created) instead.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("CURRENT").exists() {
            return Self::open(dir);
        }
        let mut opts = Self::options();
        opts.set_db_log_dir(std::env::temp_dir().join("runbox-read-only-logs"));
        let db = DB::open_cf_for_read_only(&opts, dir, [INCIDENTS, KV, META], false)
            .map_err(|e| Self::open_error(dir, e))?;
        Ok(Store {
            db,
            dir: dir.to_path_buf(),
        })
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
        // Small footprint: incident records are tiny and few.
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        opts
    }

    fn open_error(dir: &Path, e: rocksdb::Error) -> StoreError {
        let message = e.to_string();
        if message.contains("lock") || message.contains("LOCK") {
            StoreError::Locked {
                dir: dir.to_path_buf(),
            }
        } else {
            StoreError::Open {
                dir: dir.to_path_buf(),
                message,
            }
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn get_raw(&self, cf: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf), key.as_bytes())
            .map_err(|e| StoreError::Io {
                op: "read",
                key: Some(key.to_string()),
                message: e.to_string(),
            })
    }

    /// Reads an incident record.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get_raw(INCIDENTS, key)?
            .map(|bytes| decode(key, &bytes))
            .transpose()
    }

    /// All incident records under `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        self.scan_raw(INCIDENTS, prefix)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v).map(|t| (k, t)))
            .collect()
    }

    /// All keys under `prefix` in the incident plane.
    pub fn scan_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .scan_raw(INCIDENTS, prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn scan_raw(&self, cf: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (k, v) = item.map_err(|e| StoreError::Io {
                op: "scan",
                key: Some(prefix.to_string()),
                message: e.to_string(),
            })?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.into_vec()));
        }
        Ok(out)
    }

    /// A step KV value of an incident.
    pub fn kv_get(&self, incident: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(KV, &kv_key(incident, key))
    }

    /// All step KV entries of an incident, keys relative to its namespace.
    pub fn kv_scan(&self, incident: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = kv_key(incident, "");
        Ok(self
            .scan_raw(KV, &prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect())
    }

    /// A value from the meta plane.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(META, key)
    }

    /// Starts a batch.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
        }
    }
}

fn kv_key(incident: &str, key: &str) -> String {
    format!("{incident}/{key}")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Writes that commit together, synced, or not at all.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    /// Puts an incident record.
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Self {
        let bytes = serde_json::to_vec(value).expect("records always serialize");
        self.inner
            .put_cf(self.store.cf(INCIDENTS), key.as_bytes(), bytes);
        self
    }

    /// Puts or deletes (`None`) a step KV key of an incident.
    pub fn kv(&mut self, incident: &str, key: &str, value: Option<&[u8]>) -> &mut Self {
        let cf = self.store.cf(KV);
        let key = kv_key(incident, key);
        match value {
            Some(v) => self.inner.put_cf(cf, key.as_bytes(), v),
            None => self.inner.delete_cf(cf, key.as_bytes()),
        }
        self
    }

    /// Puts a meta value.
    pub fn meta(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.inner
            .put_cf(self.store.cf(META), key.as_bytes(), value);
        self
    }

    /// Commits the batch atomically with `sync = true`.
    pub fn commit(self) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.store
            .db
            .write_opt(self.inner, &opts)
            .map_err(|e| StoreError::Io {
                op: "write",
                key: None,
                message: e.to_string(),
            })
    }
}

/// Step KV reads of one incident, for the sandbox.
pub struct IncidentKv {
    store: std::sync::Arc<Store>,
    incident: String,
}

impl IncidentKv {
    /// The KV view of `incident`.
    pub fn new(store: std::sync::Arc<Store>, incident: &str) -> Self {
        IncidentKv {
            store,
            incident: incident.to_string(),
        }
    }
}

impl crate::sandbox::KvSource for IncidentKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .kv_get(&self.incident, key)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_commits_records_and_kv_together_and_planes_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = store.batch();
        batch
            .put("incident:a:status", &"open")
            .kv("a", "incident:a:status", Some(b"forged"));
        batch.commit().unwrap();
        let status: Option<String> = store.get("incident:a:status").unwrap();
        assert_eq!(
            status.as_deref(),
            Some("open"),
            "a KV key named like a record stays in KV"
        );
        assert_eq!(
            store.kv_get("a", "incident:a:status").unwrap().as_deref(),
            Some(&b"forged"[..])
        );
        assert_eq!(
            store.kv_get("b", "incident:a:status").unwrap(),
            None,
            "KV is per incident"
        );
    }

    #[test]
    fn second_open_of_a_data_dir_says_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another runbox process"));
    }

    #[test]
    fn read_only_open_sees_committed_state_beside_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Store::open(dir.path()).unwrap();
        let mut batch = writer.batch();
        batch.put("incident:a:status", &"open");
        batch.commit().unwrap();
        let reader = Store::open_read_only(dir.path()).unwrap();
        let status: Option<String> = reader.get("incident:a:status").unwrap();
        assert_eq!(status.as_deref(), Some("open"));
    }

    #[test]
    fn scan_stops_at_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = store.batch();
        batch
            .put("incident:a:timeline:1", &1)
            .put("incident:a:timeline:2", &2)
            .put("incident:b:timeline:1", &3);
        batch.commit().unwrap();
        let events: Vec<(String, u32)> = store.scan("incident:a:timeline:").unwrap();
        assert_eq!(
            events.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
