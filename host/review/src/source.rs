//! Where a review reads its files: the working tree, or one git revision of
//! it (`review --git REV1..REV2 PATH`), so a pull request's two sides are
//! reviewed without checking either out.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::ReviewError;

/// A tree of files to review.
#[derive(Debug, Clone)]
pub enum Source {
    /// The file system as it is.
    Disk,
    /// The files as committed at `rev` in the repository at `root`.
    Git {
        /// The repository's top-level directory.
        root: PathBuf,
        /// The revision (`main`, `HEAD~1`, a commit id).
        rev: String,
    },
}

impl Source {
    /// The revision `rev` of the git repository holding `path`.
    pub fn git(rev: &str, path: &Path) -> Result<Self, ReviewError> {
        // A revision is handed to git as an argument: never let it be a flag.
        if rev.is_empty() || rev.starts_with('-') || rev.contains(':') {
            return Err(ReviewError::Git(format!(
                "`{rev}` is not a revision (expected e.g. `main`, `HEAD~1` or a commit id)"
            )));
        }
        let dir = absolute(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let top = git(&dir, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(String::from_utf8_lossy(&top).trim());
        git(
            &root,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{rev}^{{commit}}"),
            ],
        )
        .map_err(|_| ReviewError::Git(format!("no commit `{rev}` in {}", root.display())))?;
        Ok(Source::Git {
            root,
            rev: rev.to_string(),
        })
    }

    /// Reads a file.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, ReviewError> {
        match self {
            Source::Disk => std::fs::read(path).map_err(|source| ReviewError::Read {
                path: path.to_path_buf(),
                source,
            }),
            Source::Git { root, rev } => {
                let rel = self.repo_path(path)?;
                git(root, &["cat-file", "blob", &format!("{rev}:{rel}")]).map_err(|_| {
                    ReviewError::Read {
                        path: path.to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("no file `{rel}` at revision `{rev}`"),
                        ),
                    }
                })
            }
        }
    }

    /// The directory files named relative to `file` resolve against.
    pub fn base_dir(&self, file: &Path) -> PathBuf {
        let dir = absolute(file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match self {
            Source::Disk => std::fs::canonicalize(&dir).unwrap_or(dir),
            Source::Git { .. } => dir,
        }
    }

    /// How a report names this tree: `working tree` or the revision.
    pub fn label(&self) -> String {
        match self {
            Source::Disk => "working tree".to_string(),
            Source::Git { rev, .. } => format!("revision {rev}"),
        }
    }

    /// `path` relative to the repository's root, `/`-separated.
    fn repo_path(&self, path: &Path) -> Result<String, ReviewError> {
        let Source::Git { root, .. } = self else {
            return Ok(path.display().to_string());
        };
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        let abs = absolute(path);
        let rel = abs.strip_prefix(&root).map_err(|_| {
            ReviewError::Git(format!(
                "{} is outside the repository {}",
                path.display(),
                root.display()
            ))
        })?;
        let parts: Vec<_> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(parts.join("/"))
    }
}

/// `path` made absolute against the current directory (canonicalized when
/// it exists, so symlinked checkouts map onto the repository root), with
/// `.` and `..` resolved lexically.
fn absolute(path: &Path) -> PathBuf {
    let joined = std::env::current_dir().unwrap_or_default().join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    // Canonicalize the longest existing ancestor and keep the rest.
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => rest.push(name.to_os_string()),
            None => break,
        }
        existing.pop();
    }
    let mut real = std::fs::canonicalize(&existing).unwrap_or(existing);
    real.extend(rest.iter().rev());
    real
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, ReviewError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| ReviewError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(ReviewError::Git(format!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}
