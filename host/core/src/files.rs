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
