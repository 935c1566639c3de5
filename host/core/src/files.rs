//! Reading the files users hand in, with a cap: a 50 MB runbook would
//! otherwise be stored with the incident and read back by every `status`.

use std::path::Path;

/// The largest runbook, tools file, policy or step input accepted: 1 MiB.
pub const MAX_USER_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path` as UTF-8 text of at most `cap` bytes; a larger file is an
/// error naming its size and the cap.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > cap {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {cap}-byte limit"
        )));
    }
    let text = std::fs::read_to_string(path)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "grew past the {cap}-byte limit while read"
        )));
    }
    Ok(text)
}

/// Creates `dir` and any missing parents owner-only (mode 0700), as
/// `mkdir -p -m 700` would: a data dir holds incident records, agents'
/// token hashes and the control socket, none of them for other users. A
/// directory that exists already is left as it is (its mode is the
/// admin's choice).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Replaces the file at `path` with `text`, owner-only (mode 0600) and
/// whole: written to a fresh temporary file beside it, synced, then
/// renamed over it, so a reader sees the old file or the new one, never
/// half of one. Its directory is created owner-only if missing.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_dir_and_its_new_parents_are_owner_only() {
        let base = tempfile_dir();
        let dir = base.join("a/b/data");
        create_private_dir(&dir).unwrap();
        for d in [base.join("a"), base.join("a/b"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", d.display());
        }
        // Twice is fine.
        create_private_dir(&dir).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "runbox-core-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
