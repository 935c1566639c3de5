//! What a module can ask for, read from its own sections without
//! instantiating it: imports grouped by the capability they need, exports,
//! memories and tables with their limits, and the wasm features it uses.
//!
//! ```
//! let caps = runbox_review::ModuleCaps::inspect(
//!     br#"(module
//!         (import "runbox:kv-read/v1" "get" (func (param i32 i32 i32 i32) (result i64)))
//!         (memory (export "memory") 1 2)
//!         (func (export "_start")))"#,
//! ).unwrap();
//! assert_eq!(caps.imports[0].capability, runbox_review::Capability::KvRead);
//! assert_eq!(caps.memories[0].maximum_pages, Some(2));
//! ```

use schemars::JsonSchema;
use serde::Serialize;
use wasmparser::types::{EntityType, TypesRef};
use wasmparser::{Validator, WasmFeatures};

use runbox_abi::{KV_READ, KV_WRITE, STEP, TOOL_MUTATE, TOOL_READ, WASI};

/// The capability an import module stands for in ABI v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `runbox:step/v1`: input, logging, `finish`; always linked.
    Step,
    /// `runbox:kv-read/v1`: needs `kv_read` grants.
    KvRead,
    /// `runbox:kv-write/v1`: needs `kv_write` grants.
    KvWrite,
    /// `runbox:tool-read/v1`: needs a granted tool with mode `read`.
    ToolRead,
    /// `runbox:tool-mutate/v1`: needs a granted tool with mode `mutate` and the mutation token.
    ToolMutate,
    /// `wasi_snapshot_preview1`, or a WASI 0.2 interface of a component
    /// (clocks, random, stdio, exit, environment): always linked, with an
    /// empty context.
    Wasi,
    /// A WASI 0.2 interface a component imports that is linked only to
    /// refuse every call (`wasi:filesystem`, `wasi:sockets`, `wasi:http`).
    WasiDenied,
    /// Anything else: never linked, so the module is refused.
    OutsideAbi,
}

impl Capability {
    /// The capability behind a component's import name
    /// (`runbox:step/kv-read@1.0.0`, `wasi:sockets/tcp@0.2.0`).
    pub fn of_component_import(name: &str) -> Self {
        match runbox_abi::ComponentImport::of(name) {
            runbox_abi::ComponentImport::Runbox { module, .. } => Self::of_module(module),
            runbox_abi::ComponentImport::Wasi { denied: true } => Capability::WasiDenied,
            runbox_abi::ComponentImport::Wasi { denied: false } => Capability::Wasi,
            runbox_abi::ComponentImport::UnknownRunbox(_)
            | runbox_abi::ComponentImport::Outside => Capability::OutsideAbi,
        }
    }

    /// The capability behind an import module name.
    pub fn of_module(module: &str) -> Self {
        match module {
            STEP => Capability::Step,
            KV_READ => Capability::KvRead,
            KV_WRITE => Capability::KvWrite,
            TOOL_READ => Capability::ToolRead,
            TOOL_MUTATE => Capability::ToolMutate,
            WASI => Capability::Wasi,
            _ => Capability::OutsideAbi,
        }
    }

    /// The name used in JSON and tables (`kv-read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Step => "step",
            Capability::KvRead => "kv-read",
            Capability::KvWrite => "kv-write",
            Capability::ToolRead => "tool-read",
            Capability::ToolMutate => "tool-mutate",
            Capability::Wasi => "wasi",
            Capability::WasiDenied => "wasi-denied",
            Capability::OutsideAbi => "outside-abi",
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The imports from one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ImportGroup {
    /// What linking this module needs.
    pub capability: Capability,
    /// The import module name.
    pub module: String,
    /// The items imported from it.
    pub items: Vec<Item>,
}

/// One imported or exported item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Item {
    /// Its name.
    pub name: String,
    /// `func (i32, i32) -> (i32)`, `memory`, `table`, `global` or `tag`.
    pub kind: String,
}

/// A linear memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Memory {
    /// Whether the host must supply it.
    pub imported: bool,
    /// Initial size in pages.
    pub initial_pages: u64,
    /// Largest size in pages, if declared.
    pub maximum_pages: Option<u64>,
    /// Bytes per page (64 KiB unless custom page sizes are used).
    pub page_bytes: u64,
    /// 64-bit addressing.
    pub memory64: bool,
    /// Shared between threads.
    pub shared: bool,
}

/// A table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Table {
    /// Whether the host must supply it.
    pub imported: bool,
    /// Element type (`funcref`).
    pub element: String,
    /// Initial elements.
    pub initial: u64,
    /// Largest size, if declared.
    pub maximum: Option<u64>,
}

/// What kind of wasm a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A core module against ABI v1.
    Module,
    /// A component against the WIT package `runbox:step@1.0.0`.
    Component,
}

/// A module's capabilities, as `runbox caps` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ModuleCaps {
    /// `runbox.caps/v1`.
    pub schema: String,
    /// A core module or a component. For a component, each import group is
    /// one imported interface (its items are not listed), and memories,
    /// tables and features are left empty.
    pub kind: Kind,
    /// sha256 of the file's bytes (what a runbook pins).
    pub sha256: String,
    /// Size of the file.
    pub bytes: u64,
    /// Imports by module, in capability order.
    pub imports: Vec<ImportGroup>,
    /// Exports.
    pub exports: Vec<Item>,
    /// Memories, imported ones first.
    pub memories: Vec<Memory>,
    /// Tables, imported ones first.
    pub tables: Vec<Table>,
    /// Wasm features the module needs beyond the MVP, by wasmparser's names.
    pub features: Vec<String>,
}

/// The schema name of [`ModuleCaps`] JSON.
pub const CAPS_SCHEMA: &str = "runbox.caps/v1";

/// Why a module cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// Neither a wasm binary nor WAT text that parses.
    #[error("neither a wasm binary (no `\\0asm` header) nor valid WAT text: {0}")]
    Wat(String),
    /// Not a valid core wasm module.
    #[error("not a valid wasm module: {0}")]
    Invalid(String),
    /// A component whose imports cannot be read.
    #[error("not a valid wasm component: {0}")]
    Component(String),
}

/// Proposals a module may depend on, checked one by one (component-model
/// flags are left out: a step is a core module).
const FEATURES: &[(&str, WasmFeatures)] = &[
    ("mutable-global", WasmFeatures::MUTABLE_GLOBAL),
    (
        "saturating-float-to-int",
        WasmFeatures::SATURATING_FLOAT_TO_INT,
    ),
    ("sign-extension", WasmFeatures::SIGN_EXTENSION),
    ("reference-types", WasmFeatures::REFERENCE_TYPES),
    ("multi-value", WasmFeatures::MULTI_VALUE),
    ("bulk-memory", WasmFeatures::BULK_MEMORY),
    ("simd", WasmFeatures::SIMD),
    ("relaxed-simd", WasmFeatures::RELAXED_SIMD),
    ("threads", WasmFeatures::THREADS),
    (
        "shared-everything-threads",
        WasmFeatures::SHARED_EVERYTHING_THREADS,
    ),
    ("tail-call", WasmFeatures::TAIL_CALL),
    ("floats", WasmFeatures::FLOATS),
    ("multi-memory", WasmFeatures::MULTI_MEMORY),
    ("exceptions", WasmFeatures::EXCEPTIONS),
    ("legacy-exceptions", WasmFeatures::LEGACY_EXCEPTIONS),
    ("memory64", WasmFeatures::MEMORY64),
    ("extended-const", WasmFeatures::EXTENDED_CONST),
    ("function-references", WasmFeatures::FUNCTION_REFERENCES),
    ("gc", WasmFeatures::GC),
    ("custom-page-sizes", WasmFeatures::CUSTOM_PAGE_SIZES),
    ("memory-control", WasmFeatures::MEMORY_CONTROL),
    ("stack-switching", WasmFeatures::STACK_SWITCHING),
    ("wide-arithmetic", WasmFeatures::WIDE_ARITHMETIC),
    ("custom-descriptors", WasmFeatures::CUSTOM_DESCRIPTORS),
    ("compact-imports", WasmFeatures::COMPACT_IMPORTS),
];

impl ModuleCaps {
    /// Inspects a module file's bytes: binary wasm or WAT text.
    pub fn inspect(file: &[u8]) -> Result<Self, CapsError> {
        let wasm = wat::parse_bytes(file).map_err(|e| CapsError::Wat(e.to_string()))?;
        if wasmparser::Parser::is_component(&wasm) {
            return Self::inspect_component(file, &wasm);
        }
        let types = Validator::new_with_features(WasmFeatures::all())
            .validate_all(&wasm)
            .map_err(|e| CapsError::Invalid(e.to_string()))?;
        let types = types.as_ref();
        let (imports, imported_memories, imported_tables) = imports(&types);
        Ok(ModuleCaps {
            schema: CAPS_SCHEMA.to_string(),
            kind: Kind::Module,
            sha256: runbox_sandbox::sha256_hex(file),
            bytes: file.len() as u64,
            imports,
            exports: types
                .core_exports()
                .into_iter()
                .flatten()
                .map(|(name, ty)| Item {
                    name: name.to_string(),
                    kind: kind(&types, ty),
                })
                .collect(),
            memories: (0..types.memory_count())
                .map(|i| memory(&types, i, i < imported_memories))
                .collect(),
            tables: (0..types.table_count())
                .map(|i| table(&types, i, i < imported_tables))
                .collect(),
            features: features_used(&wasm),
        })
    }

    /// A component's imports, one group per imported interface, read from
    /// its top-level import sections (nested components and modules import
    /// only from what the component itself imports).
    fn inspect_component(file: &[u8], wasm: &[u8]) -> Result<Self, CapsError> {
        let mut imports = Vec::new();
        let mut exports = Vec::new();
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let payload = payload.map_err(|e| CapsError::Component(e.to_string()))?;
            match payload {
                wasmparser::Payload::ModuleSection { .. }
                | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
                wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                    for import in reader {
                        let import = import.map_err(|e| CapsError::Component(e.to_string()))?;
                        // A type import (a world's `use types.{outcome-error}`)
                        // names a type, not a capability: nothing is linked
                        // for it, so it is no import to show.
                        if matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                            continue;
                        }
                        let name = import.name.name.to_string();
                        imports.push(ImportGroup {
                            capability: Capability::of_component_import(&name),
                            module: name,
                            items: Vec::new(),
                        });
                    }
                }
                wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                    for export in reader {
                        let export = export.map_err(|e| CapsError::Component(e.to_string()))?;
                        exports.push(Item {
                            name: export.name.name.to_string(),
                            kind: format!("{:?}", export.kind).to_lowercase(),
                        });
                    }
                }
                _ => {}
            }
        }
        imports.sort_by(|a, b| (a.capability, &a.module).cmp(&(b.capability, &b.module)));
        Ok(ModuleCaps {
            schema: CAPS_SCHEMA.to_string(),
            kind: Kind::Component,
            sha256: runbox_sandbox::sha256_hex(file),
            bytes: file.len() as u64,
            imports,
            exports,
            memories: Vec::new(),
            tables: Vec::new(),
            features: Vec::new(),
        })
    }

    /// The capabilities the module's imports need.
    pub fn capabilities(&self) -> impl Iterator<Item = Capability> + '_ {
        self.imports.iter().map(|g| g.capability)
    }

    /// Every import as `module.name` (a component's: the interface).
    pub fn import_names(&self) -> Vec<String> {
        if self.kind == Kind::Component {
            return self.imports.iter().map(|g| g.module.clone()).collect();
        }
        self.imports
            .iter()
            .flat_map(|g| {
                g.items
                    .iter()
                    .map(move |i| format!("{}.{}", g.module, i.name))
            })
            .collect()
    }
}

/// Imports grouped by module, and how many memories and tables are imported.
fn imports(types: &TypesRef<'_>) -> (Vec<ImportGroup>, u32, u32) {
    let mut groups: Vec<ImportGroup> = Vec::new();
    let (mut memories, mut tables) = (0, 0);
    for (module, name, ty) in types.core_imports().into_iter().flatten() {
        match ty {
            EntityType::Memory(_) => memories += 1,
            EntityType::Table(_) => tables += 1,
            _ => {}
        }
        let item = Item {
            name: name.to_string(),
            kind: kind(types, ty),
        };
        match groups.iter_mut().find(|g| g.module == module) {
            Some(group) => group.items.push(item),
            None => groups.push(ImportGroup {
                capability: Capability::of_module(module),
                module: module.to_string(),
                items: vec![item],
            }),
        }
    }
    groups.sort_by(|a, b| (a.capability, &a.module).cmp(&(b.capability, &b.module)));
    (groups, memories, tables)
}

fn kind(types: &TypesRef<'_>, ty: EntityType) -> String {
    match ty {
        EntityType::Func(id) | EntityType::FuncExact(id) => match types[id].composite_type.inner {
            wasmparser::CompositeInnerType::Func(ref f) => {
                let list = |ts: &[wasmparser::ValType]| {
                    ts.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!("func ({}) -> ({})", list(f.params()), list(f.results()))
            }
            _ => "func".to_string(),
        },
        EntityType::Table(_) => "table".to_string(),
        EntityType::Memory(_) => "memory".to_string(),
        EntityType::Global(g) => format!(
            "global {}{}",
            if g.mutable { "mut " } else { "" },
            g.content_type
        ),
        EntityType::Tag(_) => "tag".to_string(),
    }
}

fn memory(types: &TypesRef<'_>, index: u32, imported: bool) -> Memory {
    let m = types.memory_at(index);
    Memory {
        imported,
        initial_pages: m.initial,
        maximum_pages: m.maximum,
        page_bytes: m.page_size_log2.map_or(65536, |log2| 1u64 << log2.min(63)),
        memory64: m.memory64,
        shared: m.shared,
    }
}

fn table(types: &TypesRef<'_>, index: u32, imported: bool) -> Table {
    let t = types.table_at(index);
    Table {
        imported,
        element: t.element_type.to_string(),
        initial: t.initial,
        maximum: t.maximum,
    }
}

/// The features whose absence makes validation fail: wasmparser's own
/// definition of what each proposal covers, rather than a second list of
/// which instruction belongs to which proposal.
fn features_used(wasm: &[u8]) -> Vec<String> {
    FEATURES
        .iter()
        .filter(|(_, flag)| {
            Validator::new_with_features(WasmFeatures::all() - *flag)
                .validate_all(wasm)
                .is_err()
        })
        .map(|(name, _)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// componentize-py and componentize-js import the world's
    /// `outcome-error` as a type: it grants nothing and is not shown, while
    /// the interfaces beside it are.
    #[test]
    fn a_components_type_import_is_no_capability() {
        let wasm = wat::parse_str(
            r#"(component
                (type $oe (variant (case "fail" string)))
                (import "outcome-error" (type (eq $oe)))
                (import "runbox:step/log@1.0.0" (instance)))"#,
        )
        .unwrap();
        let caps = ModuleCaps::inspect_component(&wasm, &wasm).unwrap();
        let shown: Vec<(&str, Capability)> = caps
            .imports
            .iter()
            .map(|g| (g.module.as_str(), g.capability))
            .collect();
        assert_eq!(shown, [("runbox:step/log@1.0.0", Capability::Step)]);
    }
}
