//! The tool registry: named host commands a step may call.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Whether a tool only observes or also changes the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// Observes only; linked through `runbox:tool-read/v1`.
    Read,
    /// Changes the world; linked through `runbox:tool-mutate/v1`, and only
    /// with the mutation token and outside read-only mode.
    Mutate,
}

impl std::fmt::Display for ToolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToolMode::Read => "read",
            ToolMode::Mutate => "mutate",
        })
    }
}

/// The type of one tool argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    tools: BTreeMap<String, ToolSpec>,
}

/// The tools a host offers, loaded from `tools.toml`.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, ToolSpec>,
    base_dir: PathBuf,
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

impl ToolRegistry {
    /// An empty registry: every tool call is denied.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, ToolError> {
        let text = std::fs::read_to_string(path).map_err(|source| ToolError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::from_toml(&text, path, base)
    }

    /// Parses a registry; relative programs resolve against `base_dir`.
    pub fn from_toml(text: &str, origin: &Path, base_dir: PathBuf) -> Result<Self, ToolError> {
        let parse_err = |message: String| ToolError::Parse {
            path: origin.to_path_buf(),
            message,
        };
        let file: RegistryFile = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for (name, spec) in &file.tools {
            validate_spec(name, spec).map_err(|m| parse_err(format!("tool `{name}`: {m}")))?;
        }
        Ok(ToolRegistry {
            tools: file.tools,
            base_dir,
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
        if argv[0].contains('/') && !Path::new(&argv[0]).is_absolute() {
            argv[0] = self.base_dir.join(&argv[0]).to_string_lossy().into_owned();
        }
        Ok(argv)
    }

    /// Runs a tool with `args`, keeping at most `output_cap` bytes of each
    /// stream (and never more than the tool's own cap).
    pub async fn run(
        &self,
        name: &str,
        args: &serde_json::Value,
        output_cap: u32,
    ) -> Result<ToolOutput, ToolError> {
        let argv = self.argv(name, args)?;
        let spec = self
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.into()))?;
        let cap = output_cap.min(spec.output_bytes) as usize;
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&self.base_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Own process group, so a timeout kills whatever the tool spawned.
            .process_group(0);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| ToolError::Spawn {
            tool: name.to_string(),
            program: argv[0].clone(),
            source,
        })?;
        // Kills the whole group if this future is dropped mid-run (the
        // attempt hit its own deadline), not just the direct child.
        let mut group = GroupGuard(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let work = async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, cap),
                read_capped(stderr, cap),
                child.wait()
            );
            (out, err, status)
        };
        let timeout = Duration::from_millis(spec.timeout_ms);
        let outcome = tokio::time::timeout(timeout, work).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(((stdout, out_trunc), (stderr, err_trunc), status)) => {
                group.disarm();
                let rc = status.ok().and_then(|s| s.code()).unwrap_or(-1);
                Ok(ToolOutput {
                    rc,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                    truncated: out_trunc || err_trunc,
                    timed_out: false,
                    duration_ms,
                })
            }
            Err(_) => {
                drop(group);
                Ok(ToolOutput {
                    rc: -1,
                    stdout: String::new(),
                    stderr: format!("tool `{name}` timed out after {} ms", spec.timeout_ms),
                    truncated: false,
                    timed_out: true,
                    duration_ms,
                })
            }
        }
    }
}

/// What a tool run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Exit code; -1 when killed by a signal or the timeout.
    pub rc: i32,
    /// Standard output, lossily decoded, at most the cap.
    pub stdout: String,
    /// Standard error, lossily decoded, at most the cap.
    pub stderr: String,
    /// Whether either stream was cut at the cap.
    pub truncated: bool,
    /// Whether the tool was killed at its timeout.
    pub timed_out: bool,
    /// Wall-clock duration.
    pub duration_ms: u64,
}

/// SIGKILLs a tool's process group when dropped, unless disarmed.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg only sends a signal; the group was created for
            // this tool by `process_group(0)`, so it holds nothing of ours.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

/// Reads a stream to its end, keeping the first `cap` bytes: the rest is
/// drained and dropped so the tool never blocks on a full pipe.
async fn read_capped(mut stream: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
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

/// One piece of an argv slot: literal text or a placeholder.
enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Arg(&'a str),
}

fn pieces(slot: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = slot;
    while let Some(i) = rest.find(['{', '}']) {
        out.push(Piece::Text(&rest[..i]));
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push(Piece::Brace(tail.as_bytes()[0] as char));
            rest = &tail[2..];
        } else if tail.starts_with('{') {
            let close = tail
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {slot:?}"))?;
            out.push(Piece::Arg(&tail[1..close]));
            rest = &tail[close + 1..];
        } else {
            return Err(format!("lone `}}` in {slot:?} (write `}}}}`)"));
        }
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

fn fill_slot(slot: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    for piece in pieces(slot)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Arg(a) => out.push_str(
                values
                    .get(a)
                    .ok_or_else(|| format!("placeholder `{{{a}}}` has no argument"))?,
            ),
        }
    }
    Ok(out)
}

fn validate_spec(name: &str, spec: &ToolSpec) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err("names are ASCII letters, digits, `_`, `-` and `.`".into());
    }
    let program = spec.argv.first().ok_or("`argv` is empty")?;
    if program.contains('{') {
        return Err("the program (argv[0]) cannot be a placeholder".into());
    }
    if spec.timeout_ms == 0 || spec.timeout_ms > 15 * 60 * 1000 {
        return Err("`timeout_ms` must be between 1 and 900000".into());
    }
    for slot in &spec.argv {
        for piece in pieces(slot)? {
            if let Piece::Arg(a) = piece
                && !spec.args.contains_key(a)
            {
                return Err(format!("placeholder `{{{a}}}` is not declared in `args`"));
            }
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
        assert_eq!(argv, vec!["echo", "--name=a b;x", "3", "%{x}"]);
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

    #[tokio::test]
    async fn output_is_capped_and_marked_truncated() {
        let r = ToolRegistry::from_toml(
            "[tools.big]\nmode = \"read\"\nargv = [\"head\", \"-c\", \"100000\", \"/dev/zero\"]\n",
            Path::new("t"),
            PathBuf::from("/"),
        )
        .unwrap();
        let out = r.run("big", &json!({}), 1000).await.unwrap();
        assert_eq!(out.rc, 0);
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn cancelled_call_kills_the_tool_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let text = format!(
            "[tools.slow]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"(sleep 1; touch {}) & sleep 30\"]\n",
            marker.display()
        );
        let r = ToolRegistry::from_toml(&text, Path::new("t"), PathBuf::from("/")).unwrap();
        let args = json!({});
        let call = r.run("slow", &args, 1000);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a grandchild outlived the cancelled call");
    }

    #[tokio::test]
    async fn timeout_kills_the_tool_and_its_children() {
        let r = ToolRegistry::from_toml(
            "[tools.slow]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"sleep 30 & sleep 30\"]\ntimeout_ms = 200\n",
            Path::new("t"),
            PathBuf::from("/"),
        )
        .unwrap();
        let started = Instant::now();
        let out = r.run("slow", &json!({}), 1000).await.unwrap();
        assert!(out.timed_out);
        assert_eq!(out.rc, -1);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
