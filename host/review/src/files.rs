//! A runbook with everything a review reads: its text, its tools file and
//! each step's module, from one [`Source`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use runbox_core::runbook::LoadedRunbook;
use runbox_core::tools::ToolRegistry;

use crate::{ModuleCaps, ReviewError, Source};

/// A runbook and the files it names, read once.
#[derive(Debug)]
pub struct RunbookFiles {
    /// Where the files came from.
    pub source: Source,
    /// The parsed, validated runbook.
    pub runbook: LoadedRunbook,
    /// Its tools (empty when it names none).
    pub tools: Arc<ToolRegistry>,
    /// Each step's module, by step id.
    modules: BTreeMap<String, ModuleFile>,
    /// Steps whose `limits.timeout_ms` is written out, not defaulted.
    explicit_timeouts: BTreeSet<String>,
}

/// A step's module file.
#[derive(Debug)]
pub struct ModuleFile {
    /// Its path.
    pub path: PathBuf,
    /// Its bytes, or why they could not be read.
    pub bytes: Result<Vec<u8>, String>,
    /// sha256 of the bytes.
    pub sha256: Option<String>,
    /// What it imports and exports; `None` when unreadable or invalid.
    pub caps: Option<ModuleCaps>,
}

impl RunbookFiles {
    /// Reads the runbook at `path` and the files it names from `source`.
    pub fn load(source: &Source, path: &Path) -> Result<Self, ReviewError> {
        let text = String::from_utf8(source.read(path)?).map_err(|_| ReviewError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
        })?;
        let runbook = LoadedRunbook::parse(&text, path, source.base_dir(path))?;
        let tools = match runbook.tools_path() {
            Some(tools_path) => {
                let text = String::from_utf8_lossy(&source.read(&tools_path)?).into_owned();
                let base = tools_path.parent().unwrap_or(Path::new(".")).to_path_buf();
                ToolRegistry::from_toml(&text, &tools_path, base)?
            }
            None => ToolRegistry::empty(),
        };
        let modules = runbook
            .runbook
            .steps
            .iter()
            .map(|step| {
                let path = runbook.module_path(step);
                (step.id.clone(), ModuleFile::read(source, path))
            })
            .collect();
        Ok(RunbookFiles {
            source: source.clone(),
            explicit_timeouts: explicit_timeouts(&text),
            runbook,
            tools: Arc::new(tools),
            modules,
        })
    }

    /// The module of step `id`.
    ///
    /// # Panics
    /// If `id` is not a step of the runbook: every step's module is read at load.
    pub fn module(&self, id: &str) -> &ModuleFile {
        &self.modules[id]
    }

    /// Every tool some step of the runbook is granted, once each.
    pub fn granted_tools(&self) -> BTreeSet<&str> {
        self.runbook
            .runbook
            .steps
            .iter()
            .flat_map(|s| s.grants.tools.iter().map(String::as_str))
            .collect()
    }

    /// Whether step `id` sets `limits.timeout_ms` itself.
    pub fn has_explicit_timeout(&self, id: &str) -> bool {
        self.explicit_timeouts.contains(id)
    }
}

impl ModuleFile {
    fn read(source: &Source, path: PathBuf) -> Self {
        match source.read(&path) {
            Ok(bytes) => ModuleFile {
                sha256: Some(runbox_sandbox::sha256_hex(&bytes)),
                caps: ModuleCaps::inspect(&bytes).ok(),
                bytes: Ok(bytes),
                path,
            },
            Err(e) => ModuleFile {
                bytes: Err(e.to_string()),
                sha256: None,
                caps: None,
                path,
            },
        }
    }
}

/// The ids of steps whose TOML writes `limits.timeout_ms`: the parsed
/// runbook fills defaults in, so presence is read from the text.
fn explicit_timeouts(text: &str) -> BTreeSet<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return BTreeSet::new();
    };
    let steps = doc.get("steps").and_then(toml::Value::as_array);
    steps
        .into_iter()
        .flatten()
        .filter_map(|step| {
            let id = step.get("id")?.as_str()?;
            step.get("limits")?.get("timeout_ms")?;
            Some(id.to_string())
        })
        .collect()
}
