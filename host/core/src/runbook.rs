//! Runbooks: the ordered steps of a recovery, their modules, policies, safety
//! rules and transitions.
//!
//! ```toml
//! [runbook]
//! name = "api-outage"
//! tools = "tools.toml"                 # tool registry, relative to this file
//!
//! [params.service]
//! description = "the service to recover"   # required unless `default` is set
//!
//! [[steps]]
//! id = "diagnose"
//! action = "probe the service"
//! module = "steps/probe.wasm"          # relative to this file
//! idempotent = true
//! grants = { tools = ["http_probe"] }
//! on = { ok = "restart" }
//! branch = [{ field = "class", equals = "healthy", next = "resolve" }]
//!
//! [[steps]]
//! id = "restart"
//! module = "steps/restart.wasm"
//! sha256 = "…"                         # optional pin
//! impact = "high"                      # needs a named human's approval
//! cooldown_ms = 600000                 # after the last destructive step
//! grants = { tools = ["restart_service"] }
//! ```
//!
//! Transitions name a step id or one of `resolve`, `escalate`, `fail`. An
//! absent `ok` goes to the next step in order (or `resolve` after the last);
//! an absent `fail` escalates: escalation beats guessing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ident::IdentKind;
use crate::policy::{Grants, Limits, StepPolicy};
use crate::records::RecordOutcome;
use crate::template;

/// A runbook file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// Name and shared settings.
    pub runbook: RunbookHeader,
    /// Parameters given at `open` (`--param name=value`).
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// The steps, in order. The first one runs first.
    pub steps: Vec<StepSpec>,
    /// Rate limits on this runbook's mutating steps, counted across all its
    /// incidents (see [`crate::limits`]). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::limits::RateLimit>,
}

/// The `[runbook]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookHeader {
    /// A short name.
    pub name: String,
    /// What the runbook recovers from.
    #[serde(default)]
    pub description: String,
    /// Tool registry file, relative to the runbook. Default: none (no tools).
    #[serde(default)]
    pub tools: Option<PathBuf>,
}

/// One runbook parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Used when `open` does not give it; without one the parameter is required.
    #[serde(default)]
    pub default: Option<String>,
    /// `string` (the default), `integer`, `number` or `boolean`: checked at
    /// `open`, and an input string that is exactly `"{name}"` becomes a
    /// JSON value of this type.
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    /// When set, the only values `open` accepts.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Smallest accepted value (`integer`, `number`). Default: none.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest accepted value (`integer`, `number`). Default: none.
    #[serde(default)]
    pub max: Option<f64>,
}

/// The type of a runbook parameter.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text (the default).
    #[default]
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamSpec {
    /// `value` as this parameter's JSON value, or why it does not fit.
    pub fn typed(&self, value: &str) -> Result<serde_json::Value, String> {
        use serde_json::Value;
        if let Some(values) = &self.values
            && !values.iter().any(|v| v == value)
        {
            return Err(format!("{value:?} is not one of {values:?}"));
        }
        let number = |n: f64| -> Result<(), String> {
            match (self.min, self.max) {
                (Some(min), _) if n < min => Err(format!("{value} is below the minimum {min}")),
                (_, Some(max)) if n > max => Err(format!("{value} is above the maximum {max}")),
                _ => Ok(()),
            }
        };
        Ok(match self.kind {
            ParamType::String => Value::String(value.to_string()),
            ParamType::Integer => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{value:?} is not an integer"))?;
                number(n as f64)?;
                Value::from(n)
            }
            ParamType::Number => {
                let n: f64 = value
                    .parse()
                    .map_err(|_| format!("{value:?} is not a number"))?;
                number(n)?;
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{value:?} is not a finite number"))?
            }
            ParamType::Boolean => match value {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("{value:?} is not `true` or `false`")),
            },
        })
    }
}

/// How much a step can hurt.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    /// Runs without approval. The default.
    #[default]
    Low,
    /// Needs a named human's approval for each attempt.
    High,
}

impl std::fmt::Display for Impact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Impact::Low => "low",
            Impact::High => "high",
        })
    }
}

/// Where an outcome leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Next {
    /// Run this step next.
    Step(String),
    /// The incident is resolved.
    Resolve,
    /// Hand the incident to a human.
    Escalate,
    /// The incident failed.
    Fail,
}

impl schemars::JsonSchema for Next {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Next".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A step id, or `resolve`, `escalate` or `fail`."
        })
    }
}

impl TryFrom<String> for Next {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "resolve" => Next::Resolve,
            "escalate" => Next::Escalate,
            "fail" => Next::Fail,
            "" => return Err("empty transition".into()),
            _ => Next::Step(s),
        })
    }
}

impl From<Next> for String {
    fn from(n: Next) -> String {
        match n {
            Next::Step(s) => s,
            Next::Resolve => "resolve".into(),
            Next::Escalate => "escalate".into(),
            Next::Fail => "fail".into(),
        }
    }
}

/// Transitions by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transitions {
    /// After `ok` (and no matching branch). Default: the next step, or `resolve`.
    #[serde(default)]
    pub ok: Option<Next>,
    /// After `fail`. Default: `escalate`.
    #[serde(default)]
    pub fail: Option<Next>,
}

/// A branch on an `ok` step's output: when `output[field] == equals`, go to `next`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// A top-level field of the step's JSON output.
    pub field: String,
    /// The value it must equal (any JSON).
    pub equals: serde_json::Value,
    /// Where to go.
    pub next: Next,
}

/// A condition checked before a step runs. When it does not hold, the
/// incident escalates with the condition in the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, untagged)]
pub enum Precondition {
    /// A step KV key equals a value.
    KvEquals {
        /// The key (with `{param}` substitution).
        kv: String,
        /// The value, as text.
        equals: String,
    },
    /// A step KV key exists (or, with `exists = false`, does not).
    KvExists {
        /// The key (with `{param}` substitution).
        kv: String,
        /// Whether it must exist.
        exists: bool,
    },
    /// An earlier step's last committed outcome.
    StepOutcome {
        /// The step id.
        step: String,
        /// `ok`, `retry`, `escalate`, `fail` or `skipped`.
        outcome: String,
    },
}

impl Precondition {
    /// The outcome a [`Precondition::StepOutcome`] asks for: `ok`, `retry`,
    /// `escalate`, `fail` or `skipped` (`None` for anything else, or for
    /// another kind of precondition).
    pub fn expected_outcome(&self) -> Option<RecordOutcome> {
        let Precondition::StepOutcome { outcome, .. } = self else {
            return None;
        };
        outcome
            .parse()
            .ok()
            .filter(|o| *o != RecordOutcome::InDoubt)
    }
}

/// Retry backoff: the wait before attempt `n + 1` is
/// `min(initial_ms * factor^(n-1), max_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// First wait. Default: 1000 ms.
    pub initial_ms: u64,
    /// Growth per retry. Default: 2.0.
    pub factor: f64,
    /// Longest wait. Default: 60 000 ms.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1000,
            factor: 2.0,
            max_ms: 60_000,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1).min(60) as i32;
        let delay = self.initial_ms as f64 * self.factor.powi(exp);
        if delay.is_finite() {
            (delay as u64).min(self.max_ms)
        } else {
            self.max_ms
        }
    }
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique id; letters, digits, `_` and `-`.
    pub id: String,
    /// Human-readable action name, kept in every step record. Default: the id.
    #[serde(default)]
    pub action: Option<String>,
    /// The module, relative to the runbook file.
    pub module: PathBuf,
    /// Optional sha256 pin of the module; a mismatch refuses to run.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Capabilities. Default: none.
    #[serde(default)]
    pub grants: Grants,
    /// Limits. Default: [`Limits::default`].
    #[serde(default)]
    pub limits: Limits,
    /// `low` (default) or `high` (approval required per attempt).
    #[serde(default)]
    pub impact: Impact,
    /// Who may approve an attempt (`impact = "high"` only). Default: any
    /// human in the data dir's allowed_signers.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// How many distinct humans must approve each attempt (`impact =
    /// "high"` only; 2 is the two-person rule). Default: 1.
    #[serde(default = "StepSpec::default_approvals")]
    pub approvals: u32,
    /// Retries after the first attempt. Default: 0.
    #[serde(default)]
    pub max_retries: u32,
    /// Wait between retries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Minimum time since the last committed destructive step before this
    /// one (if destructive) may start. Default: 0.
    #[serde(default)]
    pub cooldown_ms: u64,
    /// Safe to re-run when an attempt is in doubt after a crash. Default: false.
    #[serde(default)]
    pub idempotent: bool,
    /// Input document; string values get `{param}` substitution. Default: the params.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// Conditions checked before each attempt.
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
    /// Transitions by outcome.
    #[serde(default)]
    pub on: Transitions,
    /// Branches on an `ok` output, checked in order before `on.ok`.
    #[serde(default)]
    pub branch: Vec<Branch>,
}

impl StepSpec {
    /// The most approvals a step may require.
    pub const MAX_APPROVALS: u32 = 16;

    fn default_approvals() -> u32 {
        1
    }

    /// The action name for records.
    pub fn action(&self) -> &str {
        self.action.as_deref().unwrap_or(&self.id)
    }

    /// The sandbox policy of this step.
    pub fn policy(&self) -> StepPolicy {
        StepPolicy {
            grants: self.grants.clone(),
            limits: self.limits,
        }
    }
}

/// Errors in a runbook, naming the file, the step and the field.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    /// The file could not be read.
    #[error("cannot read runbook {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid runbook TOML.
    #[error("invalid runbook {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message with line and column.
        message: String,
    },
    /// A step is not valid.
    #[error("invalid runbook {path}: step `{step}`: {field}: {message}")]
    Step {
        /// The file.
        path: PathBuf,
        /// The step id.
        step: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Something outside any step is not valid.
    #[error("invalid runbook {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A parsed, validated runbook and where it lives.
#[derive(Debug, Clone)]
pub struct LoadedRunbook {
    /// The runbook.
    pub runbook: Runbook,
    /// The file it came from.
    pub path: PathBuf,
    /// Its directory, against which module and tool paths resolve.
    pub base_dir: PathBuf,
    /// Each step's position, so finding a step does not grow with the runbook.
    order: HashMap<String, usize>,
}

impl LoadedRunbook {
    /// The most parameters `open` accepts (each value is at most 128 bytes).
    pub const MAX_PARAMS: usize = 64;

    /// Reads and validates a runbook file (at most
    /// [`crate::files::MAX_USER_FILE_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, RunbookError> {
        let text = crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES).map_err(
            |source| RunbookError::Read {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
        Self::parse(&text, path, base_dir)
    }

    /// Parses and validates runbook text.
    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Self, RunbookError> {
        let runbook: Runbook = toml::from_str(text).map_err(|e| RunbookError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        validate(&runbook, path)?;
        let order = runbook
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        Ok(LoadedRunbook {
            runbook,
            path: path.to_path_buf(),
            base_dir,
            order,
        })
    }

    /// A step by id.
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.runbook.steps.get(*self.order.get(id)?)
    }

    /// The module path of a step, resolved.
    pub fn module_path(&self, step: &StepSpec) -> PathBuf {
        self.base_dir.join(&step.module)
    }

    /// The tool registry path, resolved.
    pub fn tools_path(&self) -> Option<PathBuf> {
        self.runbook
            .runbook
            .tools
            .as_ref()
            .map(|t| self.base_dir.join(t))
    }

    /// Where `ok` leads from `step` given its output.
    pub fn next_after_ok(&self, step: &StepSpec, output: Option<&serde_json::Value>) -> Next {
        for b in &step.branch {
            if output.and_then(|o| o.get(&b.field)) == Some(&b.equals) {
                return b.next.clone();
            }
        }
        if let Some(next) = &step.on.ok {
            return next.clone();
        }
        let index = self.order.get(&step.id);
        match index.and_then(|i| self.runbook.steps.get(i + 1)) {
            Some(next) => Next::Step(next.id.clone()),
            None => Next::Resolve,
        }
    }

    /// Where `fail` leads.
    pub fn next_after_fail(&self, step: &StepSpec) -> Next {
        step.on.fail.clone().unwrap_or(Next::Escalate)
    }

    /// A step's input with the params of `open` filled in by type: a
    /// string that is exactly `"{name}"` of a typed parameter becomes that
    /// JSON value; other strings get text substitution; without an `input`
    /// table, the params as an object.
    pub fn step_input(
        &self,
        step: &StepSpec,
        params: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let typed: serde_json::Map<String, serde_json::Value> = params
            .iter()
            .map(|(k, v)| {
                let value = self
                    .runbook
                    .params
                    .get(k)
                    .and_then(|spec| spec.typed(v).ok())
                    .unwrap_or_else(|| serde_json::Value::String(v.clone()));
                (k.clone(), value)
            })
            .collect();
        match &step.input {
            Some(template) => substitute_typed(template, params, &typed),
            None => serde_json::Value::Object(typed),
        }
    }

    /// Resolves the params given at `open` against the declared ones.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, RunbookError> {
        let invalid = |message: String| RunbookError::Invalid {
            path: self.path.clone(),
            message,
        };
        if given.len() > Self::MAX_PARAMS {
            return Err(invalid(format!(
                "{} parameters given, at most {}",
                given.len(),
                Self::MAX_PARAMS
            )));
        }
        if let Some(unknown) = given.keys().find(|k| !self.runbook.params.contains_key(*k)) {
            return Err(invalid(format!("unknown parameter `{unknown}`")));
        }
        let mut params = BTreeMap::new();
        for (name, spec) in &self.runbook.params {
            let value = given.get(name).or(spec.default.as_ref()).ok_or_else(|| {
                invalid(format!(
                    "parameter `{name}` is required ({})",
                    spec.description
                ))
            })?;
            if !IdentKind::Param.is_valid(value) {
                return Err(invalid(format!(
                    "parameter `{name}` = {value:?}: only ASCII letters, digits, `.`, `_` and `-`"
                )));
            }
            spec.typed(value)
                .map_err(|m| invalid(format!("parameter `{name}` ({:?}): {m}", spec.kind)))?;
            params.insert(name.clone(), value.clone());
        }
        Ok(params)
    }
}

/// Builds a step's input: its `input` template with `{param}` substituted in
/// every string, or the params as an object.
pub fn step_input(step: &StepSpec, params: &BTreeMap<String, String>) -> serde_json::Value {
    match &step.input {
        Some(template) => substitute_json(template, params),
        None => serde_json::to_value(params).expect("a string map always serializes"),
    }
}

fn substitute_typed(
    value: &serde_json::Value,
    params: &BTreeMap<String, String>,
    typed: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            let whole = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            match whole.and_then(|name| typed.get(name)) {
                Some(v) => v.clone(),
                None => Value::String(substitute(s, params)),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_typed(v, params, typed))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute_typed(v, params, typed)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn substitute_json(
    value: &serde_json::Value,
    params: &BTreeMap<String, String>,
) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(substitute(s, params)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute_json(v, params)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute_json(v, params)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Replaces known `{name}`s in `text` with params; unknown names stay as
/// written (see [`template::fill_known`]).
pub fn substitute(text: &str, params: &BTreeMap<String, String>) -> String {
    template::fill_known(text, params)
}

fn validate(rb: &Runbook, path: &Path) -> Result<(), RunbookError> {
    let invalid = |message: String| RunbookError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if rb.steps.is_empty() {
        return Err(invalid("a runbook needs at least one `[[steps]]`".into()));
    }
    for (name, spec) in &rb.params {
        let numeric = matches!(spec.kind, ParamType::Integer | ParamType::Number);
        if !numeric && (spec.min.is_some() || spec.max.is_some()) {
            return Err(invalid(format!(
                "params.{name}: `min` and `max` apply to `type = \"integer\"` or `\"number\"` only"
            )));
        }
        if let Some(default) = &spec.default {
            spec.typed(default)
                .map_err(|m| invalid(format!("params.{name}.default: {m}")))?;
        }
    }
    let mut ids = BTreeSet::new();
    for step in &rb.steps {
        if !ids.insert(step.id.as_str()) {
            return Err(invalid(format!("step id `{}` is used twice", step.id)));
        }
    }
    let order: BTreeMap<&str, usize> = rb
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    for step in &rb.steps {
        validate_step(step, &order).map_err(|(field, message)| RunbookError::Step {
            path: path.to_path_buf(),
            step: step.id.clone(),
            field: field.to_string(),
            message,
        })?;
    }
    rb.limits(path)?;
    Ok(())
}

impl Runbook {
    /// Its checked rate limits. Each counts something this runbook has (a
    /// tool one of its steps is granted, one of its steps), and names in
    /// `per` only parameters it declares.
    pub fn limits(&self, path: &Path) -> Result<Vec<crate::limits::Limit>, RunbookError> {
        use crate::limits::{Counts, LimitError, check_all};
        let origin = path.display().to_string();
        let invalid = |e: LimitError| RunbookError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "{}: {}: {}",
                e.origin.trim_start_matches(&origin).trim(),
                e.field,
                e.message
            ),
        };
        let limits = check_all(&self.rate_limits, &origin).map_err(invalid)?;
        for limit in &limits {
            let bad = |field: &str, message: String| {
                invalid(LimitError {
                    origin: limit.origin.clone(),
                    field: field.into(),
                    message,
                })
            };
            match &limit.counts {
                Counts::Tool(t) if !self.steps.iter().any(|s| s.grants.tools.contains(t)) => {
                    return Err(bad(
                        "tool",
                        format!("no step of this runbook is granted tool `{t}`"),
                    ));
                }
                Counts::Step(s) if !self.steps.iter().any(|st| &st.id == s) => {
                    return Err(bad("step", format!("this runbook has no step `{s}`")));
                }
                Counts::Runbook(_) => {
                    return Err(bad(
                        "runbook",
                        "a runbook's limits count its own steps: drop `runbook` (it belongs in the data dir's limits.toml)".into(),
                    ));
                }
                _ => {}
            }
            if let Some(name) = limit.per_params().find(|p| !self.params.contains_key(*p)) {
                return Err(bad(
                    "per",
                    format!(
                        "names parameter `{name}`, which this runbook does not declare in [params]"
                    ),
                ));
            }
        }
        Ok(limits)
    }
}

/// Checks one step. Transitions only go forward: a step's records are keyed
/// by attempt, and a cycle would start a step over at attempt 1 (retries are
/// the way to run a step again).
fn validate_step(
    step: &StepSpec,
    order: &BTreeMap<&str, usize>,
) -> Result<(), (&'static str, String)> {
    if !IdentKind::Step.is_valid(&step.id) {
        return Err((
            "id",
            "letters, digits, `_` and `-`, not `resolve`/`escalate`/`fail`".into(),
        ));
    }
    if let Some(pin) = &step.sha256
        && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(("sha256", "a pin is 64 hex digits".into()));
    }
    step.policy()
        .validate()
        .map_err(|e| ("grants/limits", e.to_string()))?;
    if step.backoff.factor < 1.0 || !step.backoff.factor.is_finite() {
        return Err(("backoff.factor", "must be a finite number >= 1".into()));
    }
    if step.max_retries > 100 {
        return Err(("max_retries", "at most 100".into()));
    }
    validate_approvals(step)?;
    // Each transition with the field it is written in, for the message.
    let mut targets: Vec<(String, &Next)> = Vec::new();
    targets.extend(step.on.ok.iter().map(|n| ("on.ok".to_string(), n)));
    targets.extend(step.on.fail.iter().map(|n| ("on.fail".to_string(), n)));
    targets.extend(
        step.branch
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("branch[{i}].next"), &b.next)),
    );
    let here = order[step.id.as_str()];
    for (field, next) in targets {
        if let Next::Step(id) = next {
            match order.get(id.as_str()) {
                None => {
                    return Err((
                        "transitions",
                        format!(
                            "{field} = \"{id}\" names no step: use a step id, or `resolve`, `escalate` or `fail`"
                        ),
                    ));
                }
                Some(&there) if there <= here => {
                    return Err((
                        "transitions",
                        format!(
                            "{field} = \"{id}\" goes back: transitions only go forward (use max_retries to run a step again)"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for pre in &step.preconditions {
        if let Precondition::StepOutcome { step: id, outcome } = pre {
            if !order.contains_key(id.as_str()) {
                return Err(("preconditions", format!("unknown step `{id}`")));
            }
            if pre.expected_outcome().is_none() {
                return Err(("preconditions", format!("unknown outcome `{outcome}`")));
            }
        }
    }
    Ok(())
}

fn validate_approvals(step: &StepSpec) -> Result<(), (&'static str, String)> {
    if step.impact == Impact::Low && (!step.approvers.is_empty() || step.approvals != 1) {
        return Err((
            "approvers/approvals",
            "only a step with `impact = \"high\"` waits for approval".into(),
        ));
    }
    if step.approvals == 0 || step.approvals > StepSpec::MAX_APPROVALS {
        return Err((
            "approvals",
            format!("1..={} distinct humans", StepSpec::MAX_APPROVALS),
        ));
    }
    if let Some(bad) = step.approvers.iter().find(|a| !IdentKind::Name.is_valid(a)) {
        return Err(("approvers", format!("{bad:?} is not a human's name")));
    }
    let distinct: BTreeSet<&String> = step.approvers.iter().collect();
    if !step.approvers.is_empty() && (distinct.len() as u32) < step.approvals {
        return Err((
            "approvals",
            format!(
                "{} approvals needed but only {} approvers named",
                step.approvals,
                distinct.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [runbook]
        name = "t"
        [params.service]
        description = "svc"
        [[steps]]
        id = "diagnose"
        module = "probe.wasm"
        branch = [{ field = "class", equals = "healthy", next = "resolve" }]
        [[steps]]
        id = "restart"
        module = "restart.wasm"
        impact = "high"
        on = { fail = "fail" }
    "#;

    fn parse(text: &str) -> Result<LoadedRunbook, RunbookError> {
        LoadedRunbook::parse(text, Path::new("rb.toml"), PathBuf::from("/rb"))
    }

    #[test]
    fn default_transitions_go_forward_then_resolve_and_fail_escalates() {
        let rb = parse(GOOD).unwrap();
        let diagnose = rb.step("diagnose").unwrap();
        let restart = rb.step("restart").unwrap();
        let healthy = serde_json::json!({"class": "healthy"});
        assert_eq!(rb.next_after_ok(diagnose, Some(&healthy)), Next::Resolve);
        let sick = serde_json::json!({"class": "down"});
        assert_eq!(
            rb.next_after_ok(diagnose, Some(&sick)),
            Next::Step("restart".into())
        );
        assert_eq!(rb.next_after_ok(restart, None), Next::Resolve);
        assert_eq!(rb.next_after_fail(diagnose), Next::Escalate);
        assert_eq!(rb.next_after_fail(restart), Next::Fail);
    }

    #[test]
    fn errors_name_the_file_step_and_field() {
        let text = GOOD.replace("on = { fail = \"fail\" }", "on = { ok = \"nowhere\" }");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("rb.toml") && err.contains("`restart`") && err.contains("nowhere"),
            "{err}"
        );
        let text = GOOD.replace("impact = \"high\"", "impact = \"high\"\nretries = 3");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("rb.toml") && err.contains("retries"), "{err}");
        let text = GOOD.replace("impact = \"high\"", "impact = \"high\"\nsha256 = \"abc\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
    }

    #[test]
    fn transition_back_to_an_earlier_step_is_refused() {
        let text = GOOD.replace("on = { fail = \"fail\" }", "on = { fail = \"diagnose\" }");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("only go forward"), "{err}");
    }

    #[test]
    fn params_are_required_unless_defaulted_and_must_be_safe() {
        let rb = parse(GOOD).unwrap();
        assert!(
            rb.resolve_params(&BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("`service`")
        );
        let given = BTreeMap::from([("service".to_string(), "api".to_string())]);
        assert_eq!(rb.resolve_params(&given).unwrap()["service"], "api");
        let bad = BTreeMap::from([("service".to_string(), "a/*".to_string())]);
        assert!(rb.resolve_params(&bad).is_err());
        let unknown = BTreeMap::from([("svc".to_string(), "a".to_string())]);
        assert!(
            rb.resolve_params(&unknown)
                .unwrap_err()
                .to_string()
                .contains("`svc`")
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial_ms: 100,
            factor: 2.0,
            max_ms: 500,
        };
        assert_eq!([1, 2, 3, 4].map(|n| b.delay_ms(n)), [100, 200, 400, 500]);
    }

    #[test]
    fn step_input_substitutes_params() {
        let rb = parse(&GOOD.replace(
            "module = \"probe.wasm\"",
            "module = \"probe.wasm\"\ninput = { target = \"svc/{service}\", n = 3 }",
        ))
        .unwrap();
        let params = BTreeMap::from([("service".to_string(), "api".to_string())]);
        let input = step_input(rb.step("diagnose").unwrap(), &params);
        assert_eq!(input, serde_json::json!({"target": "svc/api", "n": 3}));
        assert_eq!(
            step_input(rb.step("restart").unwrap(), &params),
            serde_json::json!({"service": "api"})
        );
    }
}
