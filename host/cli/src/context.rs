//! Where a command finds its store: the data dir, opened for writing (the
//! engine, with a sandbox) or for reading only (queries, no sandbox).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use runbox_engine::{Engine, Incidents};
use runbox_sandbox::{Sandbox, SandboxConfig};
use runbox_store_rocksdb::RocksStore;

/// What every command is given.
pub(crate) struct Context {
    data_dir: PathBuf,
    /// A `runbox serve` human decisions go to (`--server`).
    server: Option<String>,
}

impl Context {
    pub(crate) fn new(data_dir: Option<PathBuf>) -> Self {
        Context {
            data_dir: data_dir.unwrap_or_else(default_data_dir),
            server: None,
        }
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

    /// An engine that may write (takes the data dir's lock).
    pub(crate) fn engine(&self) -> Result<Engine> {
        let store = RocksStore::open(&self.data_dir)?;
        let sandbox = Sandbox::new(sandbox_config(&self.data_dir));
        Ok(Engine::new(Arc::new(store), sandbox)
            .with_allowed_signers(self.signers_path())
            .with_fleet_limits(self.limits_path()))
    }

    /// The data dir's fleet-wide rate limits (`limits.toml`).
    pub(crate) fn limits_path(&self) -> PathBuf {
        self.data_dir.join(runbox_core::limits::LIMITS_FILE)
    }

    /// The store, opened for writing (takes the data dir's lock), without
    /// an engine: for host settings such as the agent registry.
    pub(crate) fn store(&self) -> Result<Arc<dyn runbox_store::Store>> {
        Ok(Arc::new(RocksStore::open(&self.data_dir)?))
    }

    /// The data dir's allowed_signers: the humans who may decide.
    pub(crate) fn signers_path(&self) -> PathBuf {
        self.data_dir.join("allowed_signers")
    }

    /// Queries for read commands: work beside a running `runbox run` and on
    /// a read-only data dir, and start no sandbox.
    pub(crate) fn reader(&self) -> Result<Incidents> {
        let store = RocksStore::open_read_only(&self.data_dir)?;
        Ok(Incidents::new(Arc::new(store)).with_allowed_signers(self.signers_path()))
    }
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
