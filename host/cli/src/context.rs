//! Where a command finds its store: the data dir, opened for writing (the
//! engine, with a sandbox) or for reading only (queries, no sandbox).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use runbox_core::fleet_config::ConfigKind;
use runbox_engine::{Engine, Incidents};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_etcd::{EtcdStore, EtcdUrl, Options as EtcdOptions};
use runbox_store_rocksdb::RocksStore;

/// What every command is given.
pub(crate) struct Context {
    data_dir: PathBuf,
    /// A `runbox serve` human decisions go to (`--server`).
    server: Option<String>,
    /// Incidents on etcd (`--store`) instead of the data dir.
    etcd: Option<(EtcdUrl, EtcdOptions)>,
}

impl Context {
    pub(crate) fn new(data_dir: Option<PathBuf>) -> Self {
        Context {
            data_dir: data_dir.unwrap_or_else(default_data_dir),
            server: None,
            etcd: None,
        }
    }

    /// Incidents live at `store` (`etcd://…`; none: the data dir's
    /// embedded store), run as `runner` with claims under a lease of `ttl`.
    pub(crate) fn with_store(
        mut self,
        store: Option<&str>,
        runner: Option<String>,
        ttl: std::time::Duration,
    ) -> Result<Self> {
        let Some(store) = store.filter(|s| !s.is_empty()) else {
            return Ok(self);
        };
        let url: EtcdUrl = store.parse()?;
        let mut options = EtcdOptions {
            lease_ttl: ttl,
            ..EtcdOptions::default()
        };
        if let Some(runner) = runner {
            runbox_core::ident::Name::new(runner.as_str())
                .map_err(|e| anyhow::anyhow!("--runner {:?}: {}", e.value, e.kind.rule()))?;
            options.runner = runner;
        }
        self.etcd = Some((url, options));
        Ok(self)
    }

    /// The store incidents live in, opened for writing: etcd, or the data
    /// dir's embedded store (which takes the data dir's lock).
    fn open_store(&self) -> Result<Arc<dyn runbox_store::Store>> {
        Ok(match &self.etcd {
            Some((url, options)) => Arc::new(EtcdStore::connect(url, options.clone())?),
            None => Arc::new(RocksStore::open(self.embedded_dir())?),
        })
    }

    /// The data dir, about to be opened as an embedded store: from here on
    /// this process creates every file owner-only (umask 077). RocksDB
    /// creates its files with the process's umask and has no mode option,
    /// and its files hold incidents and agents' token hashes.
    fn embedded_dir(&self) -> &Path {
        owner_only_files();
        &self.data_dir
    }

    /// The etcd members' `http://HOST:PORT`, when incidents live on etcd.
    pub(crate) fn etcd_endpoints(&self) -> Option<Vec<String>> {
        self.etcd.as_ref().map(|(url, _)| url.endpoints.clone())
    }

    /// Whether incidents live on a store several runners share (etcd).
    pub(crate) fn shared_store(&self) -> bool {
        self.etcd.is_some()
    }

    /// A store named on the command line (`runbox store copy`): an
    /// `etcd://` address, or a data dir.
    pub(crate) fn store_at(&self, place: &str) -> Result<Arc<dyn runbox_store::Store>> {
        if place.starts_with("etcd://") {
            let url: EtcdUrl = place.parse()?;
            let options = match &self.etcd {
                Some((_, options)) => options.clone(),
                None => EtcdOptions::default(),
            };
            return Ok(Arc::new(EtcdStore::connect(&url, options)?));
        }
        owner_only_files();
        Ok(Arc::new(RocksStore::open(Path::new(place))?))
    }

    /// Human decisions go to the `runbox serve` at `server`, if any.
    pub(crate) fn with_server(mut self, server: Option<String>) -> Self {
        self.server = server.filter(|s| !s.is_empty());
        self
    }

    /// The `runbox serve` human decisions go to (`--server`), if any.
    pub(crate) fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An engine that may write (takes the data dir's lock), running up
    /// to [`Engine::DEFAULT_MAX_CONCURRENT_ATTEMPTS`] attempts at once.
    pub(crate) fn engine(&self) -> Result<Engine> {
        self.engine_for(Engine::DEFAULT_MAX_CONCURRENT_ATTEMPTS)
    }

    /// An engine running up to `attempts` step attempts at once (`run
    /// --concurrency`): its sandbox pool has a slot for each, so no
    /// attempt the cap admits finds the pool full.
    pub(crate) fn engine_for(&self, attempts: usize) -> Result<Engine> {
        self.no_fleet_files()?;
        self.engine_unchecked(attempts)
    }

    /// An engine for the commands that move the data dir's configuration
    /// files into a shared store (`runbox human add`, `runbox limits set`):
    /// they run while those files are still there.
    pub(crate) fn engine_for_config(&self) -> Result<Engine> {
        self.engine_unchecked(Engine::DEFAULT_MAX_CONCURRENT_ATTEMPTS)
    }

    fn engine_unchecked(&self, attempts: usize) -> Result<Engine> {
        let store = self.open_store()?;
        let mut config = sandbox_config(&self.data_dir);
        let slots = u32::try_from(attempts).unwrap_or(u32::MAX);
        config.pool_slots = config.pool_slots.max(slots);
        let engine =
            Engine::new(store, Sandbox::new(config)).with_max_concurrent_attempts(attempts);
        Ok(match self.shared_store() {
            true => engine.with_config_in_store(),
            false => engine
                .with_allowed_signers(self.signers_path())
                .with_fleet_limits(self.limits_path())
                .with_notify(self.notify_file()?),
        })
    }

    /// On a shared store the fleet's configuration is the store's: a data
    /// dir that still holds a file of its own is refused, naming what moves
    /// them, rather than one runner quietly deciding by other rules than
    /// the rest.
    fn no_fleet_files(&self) -> Result<()> {
        if !self.shared_store() {
            return Ok(());
        }
        for kind in ConfigKind::ALL {
            let path = self.data_dir.join(kind.file());
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
                anyhow::bail!(
                    "{} is not read on a store runners share: the fleet's configuration is the store's, the same for every runner. Move {}; then delete {}",
                    path.display(),
                    how_to_move(kind),
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// The notification sinks: the data dir's `notify.toml` (none without
    /// it), or on a shared store, the store's.
    pub(crate) fn notify_routing(&self) -> Result<runbox_core::notify::Routing> {
        if !self.shared_store() {
            return self.notify_file();
        }
        let text = self.reader()?.config_text(ConfigKind::Sinks)?;
        Ok(runbox_incidents::config::sinks_of(&text)?)
    }

    fn notify_file(&self) -> Result<runbox_core::notify::Routing> {
        let path = self.data_dir.join(runbox_core::notify::NOTIFY_FILE);
        Ok(runbox_core::notify::Routing::load(&path)?)
    }

    /// The data dir's fleet-wide rate limits (`limits.toml`).
    pub(crate) fn limits_path(&self) -> PathBuf {
        self.data_dir.join(runbox_core::limits::LIMITS_FILE)
    }

    /// The store, opened for writing (takes the data dir's lock), without
    /// an engine: for host settings such as the agent registry.
    pub(crate) fn store(&self) -> Result<Arc<dyn runbox_store::Store>> {
        self.open_store()
    }

    /// The data dir's writer lock, without opening its store: for edits of
    /// the data dir's files (allowed_signers) that no owner may make at
    /// the same time.
    pub(crate) fn lock_data_dir(&self) -> Result<runbox_store_rocksdb::DirLock> {
        Ok(RocksStore::lock(self.embedded_dir())?)
    }

    /// The data dir's allowed_signers: the humans who may decide.
    pub(crate) fn signers_path(&self) -> PathBuf {
        self.data_dir.join("allowed_signers")
    }

    /// Queries for read commands: work beside a running `runbox run` and on
    /// a read-only data dir, and start no sandbox.
    pub(crate) fn reader(&self) -> Result<Incidents> {
        self.no_fleet_files()?;
        let incidents = Incidents::new(self.read_store()?);
        Ok(match self.shared_store() {
            true => incidents.with_config_in_store(),
            false => incidents.with_allowed_signers(self.signers_path()),
        })
    }

    /// The store, opened for reading only where it can be (beside a
    /// running writer; etcd is opened as usual).
    pub(crate) fn read_store(&self) -> Result<Arc<dyn runbox_store::Store>> {
        Ok(match &self.etcd {
            Some(_) => self.open_store()?,
            // A data dir with no store yet is created by this open.
            None => Arc::new(RocksStore::open_read_only(self.embedded_dir())?),
        })
    }
}

/// The command that moves the data dir's file of `kind` into a shared store.
fn how_to_move(kind: ConfigKind) -> &'static str {
    match kind {
        ConfigKind::Signers => {
            "its humans: `runbox human add NAME KEY.pub` for each (the first with the mutation token)"
        }
        ConfigKind::Passkeys => {
            "its passkeys: enroll each again at a console (`runbox human add NAME --passkey --console URL`), then list it (`runbox human accept`)"
        }
        ConfigKind::Limits => "its limits: `runbox limits set FILE`",
        ConfigKind::Routes => "its alert routes: `runbox alerts routes set FILE`",
        ConfigKind::Sinks => {
            "its notification sinks: `runbox notify set FILE` (their secrets stay in files and variables each runner reads)"
        }
    }
}

/// Makes every file this process creates from now on owner-only (umask
/// 077), once. Process-wide on purpose: RocksDB's background threads
/// create files (tables, logs) long after the store is opened.
fn owner_only_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: umask only sets the process's file-creation mask; it
        // cannot fail and touches no memory.
        unsafe {
            libc::umask(0o077);
        }
    });
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("runbox");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/runbox"),
        None => PathBuf::from(".runbox"),
    }
}

/// Compiled modules are kept beside the store, so a new process does not
/// recompile every step.
fn sandbox_config(data_dir: &Path) -> SandboxConfig {
    SandboxConfig {
        artifact_dir: Some(data_dir.join("modules")),
        ..SandboxConfig::default()
    }
}
