//! Step policies: what a step may touch (grants) and how much it may use (limits).
//!
//! A policy is plain data, parsed from TOML with `deny_unknown_fields` so a typo
//! never silently widens or drops a rule. Everything not granted is denied:
//! an empty policy links only `runbox:step/v1` and an empty WASI context.
//!
//! ```toml
//! [grants]
//! kv_read  = ["svc/{service}/*"]
//! kv_write = ["svc/{service}/restarts"]
//! tools    = ["http_probe", "restart_service"]
//!
//! [limits]
//! timeout_ms = 5000
//! memory_mib = 32
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use crate::ident::IdentKind;
use crate::limits::SHARED_KEY;
use crate::template::Template;
use serde::{Deserialize, Serialize};

/// A step's policy file: its grants and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepPolicy {
    /// Capabilities granted to the step. Default: none.
    #[serde(default)]
    pub grants: Grants,
    /// Resource limits. Default: [`Limits::default`].
    #[serde(default)]
    pub limits: Limits,
}

/// Why read-only mode does not run a step granted `kv_write`, and what to do
/// instead: said wherever such a step is refused (`run`, `exec`, a
/// `--read-only` server). Step KV feeds later steps' preconditions and
/// branches (a restart budget, a lock), so a diagnosis-only run that could
/// write it could change what a mutating step does later.
pub const READ_ONLY_KV_HINT: &str = "read-only mode changes no state, not even the incident's step KV: \
let a diagnosis step return its finding as its output (kept in its record, and `branch` can act on it) \
and leave KV writes to a step run without --read-only";

/// Capabilities a step may use. Each list empty by default (deny by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Key patterns the step may read (`runbox:kv-read/v1`).
    #[serde(default)]
    pub kv_read: Vec<String>,
    /// Key patterns the step may write or delete (`runbox:kv-write/v1`).
    #[serde(default)]
    pub kv_write: Vec<String>,
    /// Tool names from the registry the step may call. Whether a tool is
    /// reached through `tool-read` or `tool-mutate` is the registry's word.
    #[serde(default)]
    pub tools: Vec<String>,
}

/// Per-attempt resource limits. Every field has a named default, and
/// [`Limits::validate`] refuses values beyond the hard ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time for one attempt, host calls included.
    /// Default: [`Limits::DEFAULT_TIMEOUT_MS`] (5 s).
    pub timeout_ms: u64,
    /// Maximum linear memory. Default: [`Limits::DEFAULT_MEMORY_MIB`] (32 MiB).
    pub memory_mib: u32,
    /// Maximum table elements. Default: [`Limits::DEFAULT_TABLE_ELEMENTS`] (10 000).
    pub table_elements: u32,
    /// Maximum wasm stack. Default: [`Limits::DEFAULT_STACK_KIB`] (512 KiB).
    pub stack_kib: u32,
    /// Captured stdout plus stderr plus log messages. Default:
    /// [`Limits::DEFAULT_OUTPUT_BYTES`] (64 KiB). Writing past it stops the step.
    pub output_bytes: u32,
    /// Largest KV key. Default: [`Limits::DEFAULT_KV_KEY_BYTES`] (256 B).
    pub kv_key_bytes: u32,
    /// Largest KV value. Default: [`Limits::DEFAULT_KV_VALUE_BYTES`] (64 KiB).
    pub kv_value_bytes: u32,
    /// KV calls (get, put, delete) per attempt. Default: [`Limits::DEFAULT_KV_OPS`] (1000).
    pub kv_ops: u32,
    /// Total bytes of staged KV writes per attempt. Default:
    /// [`Limits::DEFAULT_KV_WRITE_BYTES`] (1 MiB).
    pub kv_write_bytes: u32,
    /// Tool calls per attempt. Default: [`Limits::DEFAULT_TOOL_CALLS`] (16).
    pub tool_calls: u32,
    /// Bytes kept of each of a tool's stdout and stderr; the rest is dropped
    /// and the call marked `truncated`. Default: [`Limits::DEFAULT_TOOL_OUTPUT_BYTES`] (64 KiB).
    pub tool_output_bytes: u32,
}

impl Limits {
    /// Default wall-clock timeout per attempt.
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
    /// Default linear memory ceiling.
    pub const DEFAULT_MEMORY_MIB: u32 = 32;
    /// Default table element ceiling.
    pub const DEFAULT_TABLE_ELEMENTS: u32 = 10_000;
    /// Default wasm stack.
    pub const DEFAULT_STACK_KIB: u32 = 512;
    /// Default captured output budget.
    pub const DEFAULT_OUTPUT_BYTES: u32 = 64 * 1024;
    /// Default key size ceiling.
    pub const DEFAULT_KV_KEY_BYTES: u32 = 256;
    /// Default value size ceiling.
    pub const DEFAULT_KV_VALUE_BYTES: u32 = 64 * 1024;
    /// Default KV call budget.
    pub const DEFAULT_KV_OPS: u32 = 1_000;
    /// Default staged write budget.
    pub const DEFAULT_KV_WRITE_BYTES: u32 = 1024 * 1024;
    /// Default tool call budget.
    pub const DEFAULT_TOOL_CALLS: u32 = 16;
    /// Default tool output kept per stream.
    pub const DEFAULT_TOOL_OUTPUT_BYTES: u32 = 64 * 1024;

    /// Hard ceilings no policy may exceed: they keep one step from taking the
    /// host down however its policy is written.
    const CEILINGS: [(&'static str, u64); 11] = [
        ("timeout_ms", 15 * 60 * 1000),
        ("memory_mib", 4096),
        ("table_elements", 1_000_000),
        ("stack_kib", 8 * 1024),
        ("output_bytes", 16 * 1024 * 1024),
        ("kv_key_bytes", 4096),
        ("kv_value_bytes", 16 * 1024 * 1024),
        ("kv_ops", 1_000_000),
        ("kv_write_bytes", 64 * 1024 * 1024),
        ("tool_calls", 1_000),
        ("tool_output_bytes", 16 * 1024 * 1024),
    ];

    fn values(&self) -> [u64; 11] {
        [
            self.timeout_ms,
            self.memory_mib.into(),
            self.table_elements.into(),
            self.stack_kib.into(),
            self.output_bytes.into(),
            self.kv_key_bytes.into(),
            self.kv_value_bytes.into(),
            self.kv_ops.into(),
            self.kv_write_bytes.into(),
            self.tool_calls.into(),
            self.tool_output_bytes.into(),
        ]
    }

    /// Checks every limit is non-zero (where zero makes no sense) and below
    /// its ceiling.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for ((field, ceiling), value) in Self::CEILINGS.iter().zip(self.values()) {
            let zero_ok = matches!(*field, "kv_ops" | "kv_write_bytes" | "tool_calls");
            if value > *ceiling || (value == 0 && !zero_ok) {
                return Err(PolicyError::LimitOutOfRange {
                    field,
                    value,
                    ceiling: *ceiling,
                });
            }
        }
        Ok(())
    }

    /// Linear memory ceiling in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_mib as usize * 1024 * 1024
    }

    /// Stack ceiling in bytes.
    pub fn stack_bytes(&self) -> usize {
        self.stack_kib as usize * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            table_elements: Self::DEFAULT_TABLE_ELEMENTS,
            stack_kib: Self::DEFAULT_STACK_KIB,
            output_bytes: Self::DEFAULT_OUTPUT_BYTES,
            kv_key_bytes: Self::DEFAULT_KV_KEY_BYTES,
            kv_value_bytes: Self::DEFAULT_KV_VALUE_BYTES,
            kv_ops: Self::DEFAULT_KV_OPS,
            kv_write_bytes: Self::DEFAULT_KV_WRITE_BYTES,
            tool_calls: Self::DEFAULT_TOOL_CALLS,
            tool_output_bytes: Self::DEFAULT_TOOL_OUTPUT_BYTES,
        }
    }
}

/// Errors in a policy or in applying it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy file is not valid policy TOML.
    #[error("invalid policy {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A limit is zero or above its hard ceiling.
    #[error("limit `{field}` = {value} is out of range (1..={ceiling})")]
    LimitOutOfRange {
        /// The limit's field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// A key pattern is malformed.
    #[error("invalid key pattern `{pattern}`: {reason}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// Why it is refused.
        reason: String,
    },
    /// A parameter's value moved a pattern into another plane than the one
    /// it names (`{ns}:svc/**` with `ns=shared` reaching `shared:`).
    #[error(
        "key pattern `{pattern}` with {param}={value:?} would reach `{concrete}`, in the {plane} plane it does not name: write the plane's prefix in the pattern itself (`{plane}:…`) to grant it"
    )]
    ParamPlane {
        /// The pattern as written.
        pattern: String,
        /// The parameter that moved it.
        param: String,
        /// Its value.
        value: String,
        /// What the pattern became.
        concrete: String,
        /// The plane it reached (`shared`, `incident`).
        plane: &'static str,
    },
    /// A pattern names a `{param}` the step was not given.
    #[error("key pattern `{pattern}` needs parameter `{param}`, which the input does not provide")]
    MissingParam {
        /// The pattern as written.
        pattern: String,
        /// The missing parameter.
        param: String,
    },
    /// A parameter value could widen a grant.
    #[error(
        "parameter `{param}` = {value:?} cannot be used in a key pattern: only ASCII letters, digits, `.`, `_` and `-` are allowed"
    )]
    UnsafeParam {
        /// The parameter name.
        param: String,
        /// Its value.
        value: String,
    },
}

impl StepPolicy {
    /// Parses a policy from TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, PolicyError> {
        let policy: StepPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES).map_err(
            |source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Self::from_toml(&text, path)
    }

    /// Validates limits and the syntax of every key pattern.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.limits.validate()?;
        for pattern in self.grants.kv_read.iter().chain(&self.grants.kv_write) {
            parse_pattern(pattern)?;
        }
        Ok(())
    }
}

/// Parameters substituted into `{param}` placeholders of key patterns.
pub type Params = BTreeMap<String, String>;

/// Extracts parameters from a step input: every top-level string, number or
/// boolean field of a JSON object.
pub fn params_from_input(input: &serde_json::Value) -> Params {
    let Some(object) = input.as_object() else {
        return Params::new();
    };
    object
        .iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k.clone(), s.clone())),
            serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
            serde_json::Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

/// A set of key patterns with parameters substituted, ready to match keys.
///
/// Pattern syntax: `*` matches any run of characters within one `/`-separated
/// segment, `**` matches across segments, `{name}` is replaced by the
/// parameter `name` (whose value may only hold `[A-Za-z0-9._-]`, so a
/// parameter can never widen a grant).
#[derive(Debug, Clone, Default)]
pub struct KeyPatterns {
    matchers: Vec<(String, GlobMatcher)>,
}

impl KeyPatterns {
    /// Compiles `patterns` with `params` substituted.
    pub fn compile(patterns: &[String], params: &Params) -> Result<Self, PolicyError> {
        let matchers = patterns
            .iter()
            .map(|p| {
                let concrete = substitute(p, params)?;
                let glob = GlobBuilder::new(&concrete)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| PolicyError::BadPattern {
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })?;
                Ok((concrete, glob.compile_matcher()))
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(KeyPatterns { matchers })
    }

    /// Whether any pattern matches `key`. A key of the shared namespace
    /// (`shared:…`, across incidents) matches only patterns that name it
    /// themselves: no `*` or `**` of an incident's own keys reaches it.
    pub fn allows(&self, key: &str) -> bool {
        let shared = key.starts_with(SHARED_KEY);
        self.matchers
            .iter()
            .any(|(p, m)| p.starts_with(SHARED_KEY) == shared && m.is_match(key))
    }

    /// Whether any pattern reaches the shared namespace.
    pub fn reaches_shared(&self) -> bool {
        self.matchers.iter().any(|(p, _)| p.starts_with(SHARED_KEY))
    }

    /// Whether the set is empty (the capability is not granted at all).
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The concrete patterns, for error messages and review.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.matchers.iter().map(|(p, _)| p.as_str())
    }
}

/// Parses a key pattern: a [`Template`] whose literal text holds no braces,
/// never names `incident:` records, and uses no glob syntax beyond `*`/`**`.
fn parse_pattern(pattern: &str) -> Result<Template, PolicyError> {
    let bad = |reason: String| PolicyError::BadPattern {
        pattern: pattern.to_string(),
        reason,
    };
    if pattern.is_empty() {
        return Err(bad("empty pattern".into()));
    }
    if pattern.starts_with("incident:") {
        return Err(bad(
            "`incident:` records belong to the host and can never be granted".into(),
        ));
    }
    if pattern.contains(['?', '[', ']', '\\']) {
        return Err(bad("only `*`, `**` and `{param}` are special".into()));
    }
    if pattern == SHARED_KEY {
        return Err(bad(
            "`shared:` needs a key pattern after it (`shared:svc/{service}/*`)".into(),
        ));
    }
    let template = Template::parse(pattern).map_err(|e| bad(e.to_string()))?;
    // `{{` would reach globset as alternation syntax: refuse literal braces.
    if template.literals().any(|t| t.contains(['{', '}'])) {
        return Err(bad("only `*`, `**` and `{param}` are special".into()));
    }
    Ok(template)
}

fn substitute(pattern: &str, params: &Params) -> Result<String, PolicyError> {
    let template = parse_pattern(pattern)?;
    let concrete = render_pattern(pattern, &template, params)?;
    check_plane(pattern, &template, &concrete, params)?;
    Ok(concrete)
}

/// The planes a key pattern can name by its prefix, besides an incident's
/// own step KV.
const PLANES: [(&str, &str); 2] = [(SHARED_KEY, "shared"), ("incident:", "incident")];

/// Refuses a pattern that a parameter moved into a plane its own text does
/// not name: a plane is granted only where the runbook writes it.
fn check_plane(
    pattern: &str,
    template: &Template,
    concrete: &str,
    params: &Params,
) -> Result<(), PolicyError> {
    for (prefix, plane) in PLANES {
        if concrete.starts_with(prefix) && !pattern.starts_with(prefix) {
            let param = template.params().next().unwrap_or_default().to_string();
            let value = params.get(&param).cloned().unwrap_or_default();
            return Err(PolicyError::ParamPlane {
                pattern: pattern.to_string(),
                param,
                value,
                concrete: concrete.to_string(),
                plane,
            });
        }
    }
    Ok(())
}

/// Whether a parameter could move `pattern` into another plane: its
/// leading parameters are followed by a `:` (`{ns}:svc/**`), so a value
/// such as `shared` makes the prefix. `review` reports such patterns;
/// `open` refuses the values that do it.
pub fn plane_reachable_by_param(pattern: &str) -> bool {
    parse_pattern(pattern).is_ok_and(|t| {
        t.starts_with_param() && t.literals().next().is_some_and(|l| l.starts_with(':'))
    })
}

fn render_pattern(
    pattern: &str,
    template: &Template,
    params: &Params,
) -> Result<String, PolicyError> {
    template.render(|name| {
        let value = params.get(name).ok_or_else(|| PolicyError::MissingParam {
            pattern: pattern.to_string(),
            param: name.to_string(),
        })?;
        if !is_safe_param(value) {
            return Err(PolicyError::UnsafeParam {
                param: name.to_string(),
                value: value.clone(),
            });
        }
        Ok(Cow::Borrowed(value.as_str()))
    })
}

/// Parameter values that can appear in a key pattern without changing its
/// meaning: the [`IdentKind::Param`] rule.
pub fn is_safe_param(value: &str) -> bool {
    IdentKind::Param.is_valid(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_param_never_moves_a_pattern_into_another_plane() {
        let err = KeyPatterns::compile(&["{ns}:svc/**".into()], &params(&[("ns", "shared")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shared plane") && err.contains("ns=\"shared\""),
            "{err}"
        );
        let err = KeyPatterns::compile(&["{ns}:x".into()], &params(&[("ns", "incident")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("incident plane"), "{err}");
        let ok = KeyPatterns::compile(&["{ns}:svc/**".into()], &params(&[("ns", "api")])).unwrap();
        assert!(ok.allows("api:svc/budget") && !ok.reaches_shared());
        assert!(KeyPatterns::compile(&["shared:{ns}/**".into()], &params(&[("ns", "x")])).is_ok());
        assert!(plane_reachable_by_param("{ns}:svc/**"));
        assert!(plane_reachable_by_param("{a}{b}:svc/**"));
        assert!(!plane_reachable_by_param("svc/{ns}:x"));
        assert!(!plane_reachable_by_param("shared:{ns}/x"));
    }

    #[test]
    fn star_stays_within_a_segment() {
        let p = KeyPatterns::compile(&["svc/{service}/*".into()], &params(&[("service", "api")]))
            .unwrap();
        assert!(p.allows("svc/api/restarts"));
        assert!(!p.allows("svc/api/a/b"));
        assert!(!p.allows("svc/db/restarts"));
        assert!(!p.allows("svc/api"));
    }

    #[test]
    fn double_star_crosses_segments() {
        let p = KeyPatterns::compile(&["svc/**".into()], &Params::new()).unwrap();
        assert!(p.allows("svc/api/a/b"));
        assert!(!p.allows("other/x"));
    }

    #[test]
    fn param_with_glob_characters_cannot_widen_a_grant() {
        let err = KeyPatterns::compile(&["svc/{service}/*".into()], &params(&[("service", "*")]))
            .unwrap_err();
        assert!(matches!(err, PolicyError::UnsafeParam { .. }), "{err}");
        let err =
            KeyPatterns::compile(&["svc/{s}/x".into()], &params(&[("s", "a/../b")])).unwrap_err();
        assert!(matches!(err, PolicyError::UnsafeParam { .. }), "{err}");
    }

    #[test]
    fn missing_param_is_named() {
        let err = KeyPatterns::compile(&["svc/{service}/x".into()], &Params::new()).unwrap_err();
        assert!(err.to_string().contains("`service`"), "{err}");
    }

    #[test]
    fn incident_records_cannot_be_granted() {
        let policy = StepPolicy {
            grants: Grants {
                kv_read: vec!["incident:*".into()],
                ..Grants::default()
            },
            ..StepPolicy::default()
        };
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::BadPattern { .. })
        ));
    }

    #[test]
    fn unknown_policy_field_is_refused_with_its_name() {
        let err = StepPolicy::from_toml("[grants]\nkv_reed = [\"a\"]\n", Path::new("p.toml"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("p.toml") && text.contains("kv_reed"),
            "{text}"
        );
    }

    #[test]
    fn limits_default_when_absent_and_ceilings_hold() {
        let policy = StepPolicy::from_toml("[limits]\ntimeout_ms = 100\n", Path::new("p")).unwrap();
        assert_eq!(policy.limits.timeout_ms, 100);
        assert_eq!(policy.limits.memory_mib, Limits::DEFAULT_MEMORY_MIB);
        let err =
            StepPolicy::from_toml("[limits]\nmemory_mib = 100000\n", Path::new("p")).unwrap_err();
        assert!(err.to_string().contains("memory_mib"), "{err}");
        let err = StepPolicy::from_toml("[limits]\ntimeout_ms = 0\n", Path::new("p")).unwrap_err();
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn params_come_from_top_level_scalars() {
        let p =
            params_from_input(&serde_json::json!({"service": "api", "n": 3, "nested": {"x": 1}}));
        assert_eq!(p.get("service").map(String::as_str), Some("api"));
        assert_eq!(p.get("n").map(String::as_str), Some("3"));
        assert!(!p.contains_key("nested"));
    }
}
