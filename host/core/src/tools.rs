//! The tool registry: named host commands a step may call, and how a call
//! becomes an argv. The sandbox runs them.
//!
//! A tool is an argv template, run directly (never through a shell) with
//! typed arguments substituted into placeholders. An argument fills exactly
//! the slot its placeholder stands in: it can never add argv entries, and a
//! string argument may not begin with `-`, so it cannot pass itself off as a
//! flag the template did not give it.
//!
//! ```toml
//! [tools.http_probe]
//! mode = "read"                      # or "mutate": needs the mutation token
//! argv = ["python3", "probe.py", "--url", "http://127.0.0.1:{port}/health"]
//! timeout_ms = 2000                  # default 10 000
//! [tools.http_probe.args]
//! port = { type = "integer", min = 1, max = 65535 }
//! ```
//!
//! Relative program paths (containing `/`) and the working directory are
//! resolved against the registry file's directory. The environment is
//! cleared except for `PATH` and the tool's own `env` table. `{{` and `}}`
//! stand for literal braces.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ident::IdentKind;
use crate::sync::lock;
use crate::template::Template;

/// Whether a tool only observes or also changes the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// Observes only; linked through `runbox:tool-read/v1`.
    Read,
    /// Changes the world; linked through `runbox:tool-mutate/v1`, and only
    /// with the mutation token and outside read-only mode.
    Mutate,
}

impl ToolMode {
    /// `read` or `mutate`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolMode::Read => "read",
            ToolMode::Mutate => "mutate",
        }
    }
}

impl std::fmt::Display for ToolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of one tool argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum ArgSpec {
    /// A UTF-8 string without NUL, not starting with `-`.
    String {
        /// Longest accepted value in bytes. Default: 256.
        #[serde(default = "default_max_len")]
        max_len: usize,
        /// When set, the only accepted values.
        #[serde(default)]
        values: Option<Vec<String>>,
    },
    /// A JSON integer, optionally bounded.
    Integer {
        /// Smallest accepted value. Default: `i64::MIN`.
        #[serde(default)]
        min: Option<i64>,
        /// Largest accepted value. Default: `i64::MAX`.
        #[serde(default)]
        max: Option<i64>,
    },
    /// A JSON boolean, substituted as `true` or `false`.
    Boolean,
}

fn default_max_len() -> usize {
    256
}

/// One tool in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// `read` or `mutate`.
    pub mode: ToolMode,
    /// Program and arguments, with `{arg}` placeholders.
    pub argv: Vec<String>,
    /// Typed arguments the guest supplies. Default: none.
    #[serde(default)]
    pub args: BTreeMap<String, ArgSpec>,
    /// Time allowed before the tool's process group is killed.
    /// Default: [`ToolSpec::DEFAULT_TIMEOUT_MS`] (10 s).
    #[serde(default = "ToolSpec::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Bytes kept of each of stdout and stderr (the step's
    /// `tool_output_bytes` limit may lower it). Default: 64 KiB.
    #[serde(default = "ToolSpec::default_output_bytes")]
    pub output_bytes: u32,
    /// Extra environment variables. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// What the tool does, for reviewers.
    #[serde(default)]
    pub description: String,
    /// sha256 pin of the program file (argv[0], found on `PATH` when it has
    /// no `/`): checked when an incident opens and before each call.
    /// Default: none.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What a dry run answers instead of running a `mutate` tool
    /// (`runbox run --dry-run`). Default: none, so a dry run's call fails
    /// (-6) and the step sees it.
    #[serde(default)]
    pub dry_run: Option<ToolAnswer>,
}

/// A tool's answer as a file states it instead of running the tool: a
/// mutating tool's `dry_run` reply in tools.toml, and each scripted answer
/// of a `runbox test` case (`runbox_core::case`). One shape, so a reply
/// written for one reads the same in the other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolAnswer {
    /// Exit code. Default: 0.
    #[serde(default)]
    pub rc: i32,
    /// Stdout. Default: empty.
    #[serde(default)]
    pub stdout: String,
    /// Stderr. Default: empty.
    #[serde(default)]
    pub stderr: String,
}

/// How a live tool call's answer fell short of whole. A scripted or dry-run
/// answer never does ([`Shortfall::default`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Either stream was cut at the tool's output cap.
    pub truncated: bool,
    /// The tool was killed at its timeout.
    pub timed_out: bool,
}

impl ToolAnswer {
    /// The JSON a step receives for one tool call, whatever answered it (a
    /// real tool, a script, a dry run): `{rc, stdout, stderr, truncated,
    /// timed_out}`.
    ///
    /// ```
    /// use runbox_core::tools::{Shortfall, ToolAnswer};
    ///
    /// let answer = ToolAnswer { rc: 0, stdout: "ok".into(), stderr: String::new() };
    /// let seen = answer.step_json(Shortfall { truncated: true, timed_out: false });
    /// assert_eq!(seen["stdout"], "ok");
    /// assert_eq!(seen["truncated"], true);
    /// ```
    pub fn step_json(&self, shortfall: Shortfall) -> serde_json::Value {
        serde_json::json!({
            "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr,
            "truncated": shortfall.truncated, "timed_out": shortfall.timed_out,
        })
    }
}

impl ToolSpec {
    /// Default tool timeout.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    /// Default tool output kept per stream.
    pub const DEFAULT_OUTPUT_BYTES: u32 = 64 * 1024;

    fn default_timeout_ms() -> u64 {
        Self::DEFAULT_TIMEOUT_MS
    }

    fn default_output_bytes() -> u32 {
        Self::DEFAULT_OUTPUT_BYTES
    }
}

/// A tools file (`tools.toml`): the tools a host offers, by name.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsFile {
    /// Each tool, by name (letters, digits, `-`, `_`, `.`).
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
}

/// The tools a host offers, loaded from `tools.toml`.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, ToolSpec>,
    base_dir: PathBuf,
    /// Each tool's files (program and file arguments) and their sha256 as
    /// recorded when the incident opened: checked before each call.
    recorded: BTreeMap<String, FileDigests>,
    /// Digests by path and file stamp, so an unchanged file is hashed once.
    cache: std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, (FileStamp, String)>>>,
}

/// sha256 of files, by path.
pub type FileDigests = BTreeMap<String, String>;

/// What identifies a file's content without reading it: a write changes
/// the change time, which no user can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Errors loading the registry or running a tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The registry file could not be read.
    #[error("cannot read tool registry {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The registry is not valid.
    #[error("invalid tool registry {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// The tool is not in the registry.
    #[error("unknown tool `{0}`")]
    Unknown(String),
    /// The guest's arguments do not fit the tool's declared arguments.
    #[error("tool `{tool}`: {message}")]
    BadArgs {
        /// The tool.
        tool: String,
        /// What is wrong with the arguments.
        message: String,
    },
    /// A pinned or recorded file of the tool is not what it was.
    #[error(
        "tool `{tool}`: {path} has sha256 {found}, but {what} is {expected}: refusing to run it"
    )]
    Changed {
        /// The tool.
        tool: String,
        /// The file.
        path: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        found: String,
        /// `the pin in tools.toml` or `the digest recorded at open`.
        what: &'static str,
    },
    /// The program resolves to another file than at open.
    #[error(
        "tool `{tool}`: `{program}` now resolves to {now}, not to {then}, the file found when the incident was opened: refusing to run it; check PATH"
    )]
    Moved {
        /// The tool.
        tool: String,
        /// argv[0] as written.
        program: String,
        /// What it resolves to now.
        now: String,
        /// What it resolved to at open.
        then: String,
    },
    /// The program is not found where the runner looks for it now, or was
    /// not found when the incident was opened.
    #[error("tool `{tool}`: {found}")]
    NotFound {
        /// The tool.
        tool: String,
        /// Which program was looked for where, now and at open, and what
        /// to do.
        found: String,
    },
    /// The process could not be started.
    #[error("tool `{tool}`: cannot start `{program}`: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Which tool modes a step's grants reach through a registry: the one rule
/// for "does this step mutate", used by the sandbox (what to link), the
/// gates (cooldowns, limits, brakes), the read model (`next_step`), review
/// and `plan`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes {
    /// A granted tool is a `read` tool.
    pub read: bool,
    /// A granted tool is a `mutate` tool: the step needs the mutation token,
    /// is never linked in read-only mode, and counts against limits.
    pub mutate: bool,
}

impl ToolRegistry {
    /// Which modes `grants` reach (a granted tool the registry lacks reaches
    /// none: the sandbox refuses it before anything runs).
    pub fn modes(&self, grants: &crate::policy::Grants) -> Modes {
        let reaches = |mode| {
            grants
                .tools
                .iter()
                .any(|t| self.get(t).is_some_and(|spec| spec.mode == mode))
        };
        Modes {
            read: reaches(ToolMode::Read),
            mutate: reaches(ToolMode::Mutate),
        }
    }

    /// The granted tools that mutate, in grant order.
    pub fn mutating<'a>(&self, grants: &'a crate::policy::Grants) -> Vec<&'a str> {
        grants
            .tools
            .iter()
            .filter(|t| {
                self.get(t)
                    .is_some_and(|spec| spec.mode == ToolMode::Mutate)
            })
            .map(String::as_str)
            .collect()
    }

    /// An empty registry: every tool call is denied.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, ToolError> {
        let text = crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES).map_err(
            |source| ToolError::Read {
                path: path.to_path_buf(),
                source,
            },
        )?;
        // `tools.toml` given bare has an empty parent: it lives in `.`.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        Self::from_toml(&text, path, base)
    }

    /// Parses a registry; relative programs resolve against `base_dir`.
    pub fn from_toml(text: &str, origin: &Path, base_dir: PathBuf) -> Result<Self, ToolError> {
        let parse_err = |message: String| ToolError::Parse {
            path: origin.to_path_buf(),
            message,
        };
        let file: ToolsFile = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for (name, spec) in &file.tools {
            validate_spec(name, spec).map_err(|m| parse_err(format!("tool `{name}`: {m}")))?;
        }
        Ok(ToolRegistry {
            tools: file.tools,
            base_dir,
            ..ToolRegistry::default()
        })
    }

    /// Looks a tool up.
    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.get(name)
    }

    /// All tools, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ToolSpec)> {
        self.tools.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Builds the argv for a call, checking the arguments against their types.
    pub fn argv(&self, name: &str, args: &serde_json::Value) -> Result<Vec<String>, ToolError> {
        let spec = self
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.into()))?;
        let bad = |message: String| ToolError::BadArgs {
            tool: name.to_string(),
            message,
        };
        let given = match args {
            serde_json::Value::Object(map) => map.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            _ => return Err(bad("arguments must be a JSON object".into())),
        };
        if let Some(extra) = given.keys().find(|k| !spec.args.contains_key(*k)) {
            return Err(bad(format!("unknown argument `{extra}`")));
        }
        let mut values = BTreeMap::new();
        for (arg, arg_spec) in &spec.args {
            let value = given
                .get(arg)
                .ok_or_else(|| bad(format!("missing argument `{arg}`")))?;
            let text = typed_value(arg_spec, value).map_err(|m| bad(format!("`{arg}`: {m}")))?;
            values.insert(arg.as_str(), text);
        }
        let mut argv = spec
            .argv
            .iter()
            .map(|slot| fill_slot(slot, &values))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        // The exact file `check` hashes is the one that runs: never a
        // second `PATH` lookup by the OS.
        if let Some(program) = self.program_path(&argv[0]) {
            argv[0] = program.to_string_lossy().into_owned();
        } else if argv[0].contains('/') && !Path::new(&argv[0]).is_absolute() {
            argv[0] = self.base_dir.join(&argv[0]).to_string_lossy().into_owned();
        }
        Ok(argv)
    }

    /// The directory relative programs and the working directory resolve against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The registry with each tool's file digests as recorded at open,
    /// which every call is then checked against.
    pub fn with_recorded(mut self, recorded: BTreeMap<String, FileDigests>) -> Self {
        self.recorded = recorded;
        self
    }

    /// The files a tool runs: its program (resolved as the runner resolves
    /// it) and every literal argument naming a file beside the registry
    /// (`probe.py` in `["python3", "probe.py"]`).
    pub fn files(&self, name: &str) -> Vec<PathBuf> {
        let Some(spec) = self.get(name) else {
            return Vec::new();
        };
        let program = self.program_path(&spec.argv[0]);
        program.into_iter().chain(self.arg_files(spec)).collect()
    }

    /// The literal arguments of a tool that name files beside the registry.
    fn arg_files<'a>(&'a self, spec: &'a ToolSpec) -> impl Iterator<Item = PathBuf> + 'a {
        self.arg_paths(spec).filter(|p| p.is_file())
    }

    /// Where each literal argument would name a file beside the registry.
    fn arg_paths<'a>(&'a self, spec: &'a ToolSpec) -> impl Iterator<Item = PathBuf> + 'a {
        spec.argv[1..]
            .iter()
            .filter(|a| !a.contains('{') && !a.starts_with('-') && !a.is_empty())
            .map(|a| self.base_dir.join(a))
    }

    /// The current sha256 of each of a tool's files that can be read.
    pub fn digests(&self, name: &str) -> FileDigests {
        self.files(name)
            .into_iter()
            .filter_map(|p| Some((p.display().to_string(), self.digest(&p)?)))
            .collect()
    }

    /// Checks a tool's program against its pin and its files against the
    /// digests recorded at open, before it runs.
    pub fn check(&self, name: &str) -> Result<(), ToolError> {
        let spec = self
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.into()))?;
        let changed = |path: &Path, expected: &str, found: String, what| ToolError::Changed {
            tool: name.to_string(),
            path: path.display().to_string(),
            expected: expected.to_string(),
            found,
            what,
        };
        if let Some(pin) = &spec.sha256 {
            let program = self
                .program_path(&spec.argv[0])
                .unwrap_or_else(|| PathBuf::from(&spec.argv[0]));
            let found = self
                .digest(&program)
                .unwrap_or_else(|| "(unreadable)".into());
            if !pin.eq_ignore_ascii_case(&found) {
                return Err(changed(&program, pin, found, "the pin in tools.toml"));
            }
        }
        if let Some(recorded) = self.recorded.get(name) {
            self.check_program(name, spec, recorded)?;
        }
        for (path, expected) in self.recorded.get(name).into_iter().flatten() {
            let found = self
                .digest(Path::new(path))
                .unwrap_or_else(|| "(unreadable)".into());
            if *expected != found {
                return Err(changed(
                    Path::new(path),
                    expected,
                    found,
                    "the digest recorded when the incident was opened",
                ));
            }
        }
        Ok(())
    }

    /// The program found now must be the one found at open: a `PATH` that
    /// puts another first, or finds none, or one not found then, is refused,
    /// naming the program and where it was looked for.
    fn check_program(
        &self,
        name: &str,
        spec: &ToolSpec,
        recorded: &FileDigests,
    ) -> Result<(), ToolError> {
        let program = &spec.argv[0];
        let now = self.program_path(program);
        if now
            .as_ref()
            .is_some_and(|p| recorded.contains_key(&p.display().to_string()))
        {
            return Ok(());
        }
        // The recorded files other than the literal arguments: the program
        // as found at open, if it was.
        let args: Vec<String> = self
            .arg_paths(spec)
            .map(|p| p.display().to_string())
            .collect();
        let then = recorded.keys().find(|p| !args.contains(p));
        let not_found = |found: String| ToolError::NotFound {
            tool: name.to_string(),
            found,
        };
        match (now, then) {
            (Some(now), Some(then)) => Err(ToolError::Moved {
                tool: name.to_string(),
                program: program.clone(),
                now: now.display().to_string(),
                then: then.clone(),
            }),
            (None, Some(then)) => Err(not_found(format!(
                "program `{program}` is not found {}; when the incident was opened it was {then}: refusing to run it; check PATH",
                search_place()
            ))),
            (Some(now), None) => Err(not_found(format!(
                "program `{program}` was not found when the incident was opened, so nothing was recorded to check {} against: refusing to run it; open a new incident where PATH finds it",
                now.display()
            ))),
            (None, None) => Err(not_found(format!(
                "program `{program}` is not found {}, nor was it when the incident was opened: refusing to run it; install it, or give its full path in argv",
                search_place()
            ))),
        }
    }

    /// Where the runner finds `program`: relative to the registry when it
    /// has a `/`, else on `PATH`.
    fn program_path(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            return Some(self.base_dir.join(program));
        }
        let path = std::env::var_os("PATH")?;
        // As `execvp` does: the first executable regular file.
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
    }

    /// sha256 of a file, from the cache while its stamp is unchanged.
    fn digest(&self, path: &Path) -> Option<String> {
        use sha2::{Digest, Sha256};
        let stamp = FileStamp::of(&std::fs::metadata(path).ok()?);
        let mut cache = lock(&self.cache);
        if let Some((s, digest)) = cache.get(path)
            && *s == stamp
        {
            return Some(digest.clone());
        }
        let digest = hex::encode(Sha256::digest(std::fs::read(path).ok()?));
        cache.insert(path.to_path_buf(), (stamp, digest.clone()));
        Some(digest)
    }
}

/// Where [`ToolRegistry::program_path`] looks for a bare program (one with
/// a `/` always resolves, beside the registry), in words.
fn search_place() -> String {
    match std::env::var_os("PATH") {
        None => "on PATH (PATH is not set)".to_string(),
        Some(p) if p.is_empty() => "on PATH (PATH is empty)".to_string(),
        Some(p) => format!("on PATH ({})", p.to_string_lossy()),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn typed_value(spec: &ArgSpec, value: &serde_json::Value) -> Result<String, String> {
    match spec {
        ArgSpec::String { max_len, values } => {
            let s = value.as_str().ok_or("expected a string")?;
            if s.len() > *max_len {
                return Err(format!("longer than {max_len} bytes"));
            }
            if s.contains('\0') {
                return Err("contains NUL".into());
            }
            if s.starts_with('-') {
                return Err("may not start with `-`".into());
            }
            if let Some(allowed) = values
                && !allowed.iter().any(|a| a == s)
            {
                return Err(format!("{s:?} is not one of {allowed:?}"));
            }
            Ok(s.to_string())
        }
        ArgSpec::Integer { min, max } => {
            let n = value.as_i64().ok_or("expected an integer")?;
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(format!("{n} is out of range"));
            }
            Ok(n.to_string())
        }
        ArgSpec::Boolean => Ok(value.as_bool().ok_or("expected a boolean")?.to_string()),
    }
}

fn fill_slot(slot: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let template = Template::parse(slot).map_err(|e| e.to_string())?;
    template.render(|name| {
        values
            .get(name)
            .map(|v| Cow::Borrowed(v.as_str()))
            .ok_or_else(|| format!("placeholder `{{{name}}}` has no argument"))
    })
}

fn validate_spec(name: &str, spec: &ToolSpec) -> Result<(), String> {
    IdentKind::Tool.check(name).map_err(|e| e.to_string())?;
    let program = spec.argv.first().ok_or("`argv` is empty")?;
    if Template::parse(program).map_or(true, |t| t.params().next().is_some()) {
        return Err("the program (argv[0]) cannot be a placeholder".into());
    }
    if let Some(pin) = &spec.sha256
        && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err("`sha256` is 64 hex digits (`sha256sum PROGRAM`)".into());
    }
    if spec.timeout_ms == 0 || spec.timeout_ms > 15 * 60 * 1000 {
        return Err("`timeout_ms` must be between 1 and 900000".into());
    }
    for slot in &spec.argv {
        let template = Template::parse(slot).map_err(|e| e.to_string())?;
        if let Some(a) = template.params().find(|a| !spec.args.contains_key(*a)) {
            return Err(format!("placeholder `{{{a}}}` is not declared in `args`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(text: &str) -> ToolRegistry {
        ToolRegistry::from_toml(text, Path::new("tools.toml"), PathBuf::from("/base")).unwrap()
    }

    /// The one mutate rule: a step mutates when a granted tool is a
    /// `mutate` tool of the registry; an unknown tool reaches no mode.
    #[test]
    fn modes_follow_the_registry_s_modes_of_granted_tools() {
        let tools = registry(
            "[tools.probe]\nmode = \"read\"\nargv = [\"true\"]\n[tools.restart]\nmode = \"mutate\"\nargv = [\"true\"]\n",
        );
        let grants = |names: &[&str]| crate::policy::Grants {
            tools: names.iter().map(ToString::to_string).collect(),
            ..Default::default()
        };
        let read = grants(&["probe", "ghost"]);
        assert_eq!(
            tools.modes(&read),
            Modes {
                read: true,
                mutate: false
            }
        );
        assert!(tools.mutating(&read).is_empty());
        let both = grants(&["restart", "probe"]);
        assert_eq!(
            tools.modes(&both),
            Modes {
                read: true,
                mutate: true
            }
        );
        assert_eq!(tools.mutating(&both), ["restart"]);
        assert_eq!(tools.modes(&grants(&[])), Modes::default());
    }

    const ECHO: &str = r#"
        [tools.echo]
        mode = "read"
        argv = ["echo", "--name={name}", "{count}", "%{{x}}"]
        [tools.echo.args]
        name = { type = "string", max_len = 8 }
        count = { type = "integer", min = 0, max = 9 }
    "#;

    #[test]
    fn argument_fills_only_its_slot() {
        let r = registry(ECHO);
        let argv = r
            .argv("echo", &json!({"name": "a b; rm -rf /", "count": 3}))
            .unwrap_err();
        assert!(argv.to_string().contains("longer than 8"), "{argv}");
        let argv = r
            .argv("echo", &json!({"name": "a b;x", "count": 3}))
            .unwrap();
        // The program is the file found on PATH, run by its path.
        assert!(argv[0].ends_with("/echo"), "{argv:?}");
        assert_eq!(argv[1..], ["--name=a b;x", "3", "%{x}"]);
    }

    #[test]
    fn leading_dash_cannot_inject_a_flag() {
        let r = registry(ECHO);
        let err = r
            .argv("echo", &json!({"name": "-rf", "count": 1}))
            .unwrap_err();
        assert!(err.to_string().contains("may not start with `-`"), "{err}");
    }

    #[test]
    fn unknown_missing_and_mistyped_arguments_are_refused() {
        let r = registry(ECHO);
        for args in [
            json!({"name": "a", "count": 1, "extra": 1}),
            json!({"name": "a"}),
            json!({"name": "a", "count": "1"}),
            json!({"name": "a", "count": 10}),
            json!([1, 2]),
        ] {
            assert!(r.argv("echo", &args).is_err(), "{args}");
        }
    }

    #[test]
    fn undeclared_placeholder_is_refused_at_load() {
        let err = ToolRegistry::from_toml(
            "[tools.t]\nmode = \"read\"\nargv = [\"x\", \"{y}\"]\n",
            Path::new("tools.toml"),
            PathBuf::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`{y}`"), "{err}");
    }

    #[test]
    fn relative_program_resolves_against_registry_dir() {
        let r = registry("[tools.t]\nmode = \"mutate\"\nargv = [\"./restart.sh\"]\n");
        assert_eq!(r.argv("t", &json!({})).unwrap()[0], "/base/./restart.sh");
    }
}
