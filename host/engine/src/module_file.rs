//! Module files, read and hashed once per change.
//!
//! The module gate compares a step's module with the sha256 recorded at
//! `open` before every attempt. Reading and hashing the file each time was
//! the largest cost of an engine step; instead the digest is kept with the
//! file's stamp (device, inode, size, modification and change times, to the
//! nanosecond) and the file is read again whenever the stamp differs. A
//! rename over the file changes the inode, a write changes the times, and
//! the change time cannot be set back by anyone without root: the cache
//! never hides a swapped module from the gate.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use runbox_sandbox::SandboxError;

use crate::lock;

/// Module files kept at most; past it the cache starts over.
const ENTRIES: usize = 256;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

type Entry = (Stamp, Arc<[u8]>, [u8; 32]);

/// Module bytes and digests by path, valid while the file's stamp holds.
#[derive(Default)]
pub(crate) struct ModuleFiles {
    files: Mutex<HashMap<PathBuf, Entry>>,
}

impl ModuleFiles {
    /// The bytes of the module at `path` and their sha256.
    pub(crate) fn read(&self, path: &Path) -> Result<(Arc<[u8]>, [u8; 32]), SandboxError> {
        let unreadable = |source| SandboxError::ReadModule {
            path: path.to_path_buf(),
            source,
        };
        let stamp = Stamp::of(&std::fs::metadata(path).map_err(unreadable)?);
        if let Some((seen, bytes, digest)) = self.lock().get(path)
            && *seen == stamp
        {
            return Ok((bytes.clone(), *digest));
        }
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        // The stamp of what is read, not of what was looked at a moment ago.
        let stamp = Stamp::of(&file.metadata().map_err(unreadable)?);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(unreadable)?;
        let bytes: Arc<[u8]> = bytes.into();
        let digest = runbox_sandbox::module_digest(&bytes);
        let mut files = self.lock();
        if files.len() >= ENTRIES {
            files.clear();
        }
        files.insert(path.to_path_buf(), (stamp, bytes.clone(), digest));
        Ok((bytes, digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        // Each update is one insert or clear: a poisoned map is whole.
        lock(&self.files)
    }
}
