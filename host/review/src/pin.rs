//! `runbox pin`: writes each step's module sha256 into the runbook, keeping
//! its comments and layout, so a reviewed runbook runs only the reviewed
//! modules (`open` refuses a module that does not match its pin).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;
use toml_edit::{DocumentMut, Item, Table, Value};

use crate::{ReviewError, RunbookFiles, Source};

/// What pinning did to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PinChange {
    /// The step.
    pub step: String,
    /// The pin before, if any.
    pub old: Option<String>,
    /// The module's sha256 now pinned.
    pub new: String,
}

impl PinChange {
    /// Whether the pin was already right.
    pub fn unchanged(&self) -> bool {
        self.old.as_deref() == Some(self.new.as_str())
    }
}

/// Pins every step of the runbook at `path` to its module's current sha256.
/// With `write` false nothing is written: the changes say what would be.
pub fn pin(path: &Path, write: bool) -> Result<Vec<PinChange>, ReviewError> {
    let files = RunbookFiles::load(&Source::Disk, path)?;
    let err = |message: String| ReviewError::Pin {
        path: path.to_path_buf(),
        message,
    };
    let mut changes = Vec::new();
    for step in &files.runbook.runbook.steps {
        let module = files.module(&step.id);
        let sha = module.sha256.clone().ok_or_else(|| {
            err(format!(
                "step `{}`: {}",
                step.id,
                module.bytes.as_ref().err().cloned().unwrap_or_default()
            ))
        })?;
        changes.push(PinChange {
            step: step.id.clone(),
            old: step.sha256.clone(),
            new: sha,
        });
    }
    if write && changes.iter().any(|c| !c.unchanged()) {
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut doc: DocumentMut = text.parse().map_err(|e| err(format!("{e}")))?;
        set_pins(&mut doc, &changes).map_err(err)?;
        write_atomically(path, doc.to_string().as_bytes()).map_err(|e| err(e.to_string()))?;
    }
    Ok(changes)
}

fn set_pins(doc: &mut DocumentMut, changes: &[PinChange]) -> Result<(), String> {
    let steps = doc.get_mut("steps").ok_or("no `steps` in the runbook")?;
    let pin_for = |id: Option<&str>| {
        changes
            .iter()
            .find(|c| Some(c.step.as_str()) == id)
            .map(|c| c.new.clone())
    };
    match steps {
        Item::ArrayOfTables(tables) => {
            for table in tables.iter_mut() {
                if let Some(sha) = pin_for(table.get("id").and_then(Item::as_str)) {
                    pin_table(table, &sha);
                }
            }
        }
        Item::Value(Value::Array(array)) => {
            for value in array.iter_mut() {
                let Value::InlineTable(table) = value else {
                    continue;
                };
                if let Some(sha) = pin_for(table.get("id").and_then(Value::as_str)) {
                    table.insert("sha256", sha.into());
                }
            }
        }
        _ => return Err("`steps` is neither `[[steps]]` tables nor an array".into()),
    }
    Ok(())
}

/// Sets `sha256` right after `module`, where a reader looks for it.
fn pin_table(table: &mut Table, sha: &str) {
    if table.contains_key("sha256") {
        table["sha256"] = toml_edit::value(sha);
        return;
    }
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
    let after_module = keys
        .iter()
        .position(|k| k == "module")
        .map_or(keys.len(), |i| i + 1);
    let tail: Vec<_> = keys[after_module..]
        .iter()
        .filter_map(|k| table.remove_entry(k))
        .collect();
    table.insert("sha256", toml_edit::value(sha));
    for (key, item) in tail {
        table.insert_formatted(&key, item);
    }
}

/// Writes through a temporary file and a rename, so a crash leaves either
/// the old runbook or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("toml.pin-tmp");
    std::fs::write(&tmp, bytes)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path)
}
