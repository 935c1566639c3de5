//! Blast radius across incidents: rate limits counted fleet-wide, brakes a
//! human must release, and the layout of the shared plane they live in.
//!
//! Each incident is safe on its own; a fleet of incidents is not. A rate
//! limit counts mutations across every incident (in a runbook, for that
//! runbook's steps; in the data dir's `limits.toml`, for all of them):
//!
//! ```toml
//! [[rate_limits]]
//! tool = "restart_service"    # what is counted: calls of this mutating tool,
//!                             # or `step = "ID"`, `runbook = "NAME"` (limits.toml),
//!                             # or none of them: every mutating attempt
//! per = "{service}"           # one count per value of this template (default: one count)
//! max = 3                     # 1..=10000
//! window = "1h"               # a sliding window: 30s, 10m, 1h, 1d (at most 30 days)
//! on_full = "wait"            # wait (default) | escalate | brake
//! ```
//!
//! A use is counted, durably and across processes, in the commit that
//! lets it happen: right before the mutating call, with the attempt's
//! in-flight marker. When the limit is full a step waits until a use
//! leaves the window (`wait`), escalates (`escalate`), or trips the brake
//! for the limit's scope (`brake`). A call that finds its limit full
//! although its step passed the gate (another incident took the last use
//! in between) exceeds the limit: it is refused and trips the brake.
//!
//! A brake ([`Brake`]) holds every mutating step in its [`BrakeScope`]
//! before its mutating call; its incidents escalate. Only a human's signed
//! release lifts it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use runbox_core::limits::{BrakeScope, RateLimit};
//!
//! let limit: RateLimit = toml::from_str(
//!     "tool = \"restart_service\"\nper = \"{service}\"\nmax = 3\nwindow = \"1h\"",
//! )?;
//! let limit = limit.check("limits.toml", 0)?;
//! let params = BTreeMap::from([("service".to_string(), "api".to_string())]);
//! assert_eq!(limit.scope(&params)?.to_string(), "tool=restart_service,service=api");
//! assert_eq!("tool=restart_service,service=api".parse::<BrakeScope>()?, limit.scope(&params)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ident::IdentKind;
use crate::template::Template;
use crate::time::format_ms;

/// The key prefix a step uses for the shared namespace (`shared:svc/api/lock`).
pub const SHARED_KEY: &str = "shared:";
/// Where shared step KV lives in the shared plane.
pub const SHARED_KV: &str = "kv/";
/// Where rate-limit counts live in the shared plane.
pub const LIMIT_COUNTS: &str = "limit/";
/// Where brakes live in the shared plane.
pub const BRAKES: &str = "brake/";

/// The shared-plane key of a step's `shared:` key, if it is one.
pub fn shared_kv_key(step_key: &str) -> Option<String> {
    step_key
        .strip_prefix(SHARED_KEY)
        .map(|rest| format!("{SHARED_KV}{rest}"))
}

/// The largest `max` of a rate limit.
pub const MAX_COUNT: u32 = 10_000;
/// The longest window of a rate limit: 30 days.
pub const MAX_WINDOW_MS: u64 = 30 * 86_400_000;
/// The most rate limits one file may declare.
pub const MAX_LIMITS: usize = 256;

/// What a step does when a limit it needs is full.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Wait until a use leaves the window. The default.
    #[default]
    Wait,
    /// Escalate the incident to a human.
    Escalate,
    /// Trip the brake for the limit's scope, and escalate.
    Brake,
}

impl fmt::Display for OnFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnFull::Wait => "wait",
            OnFull::Escalate => "escalate",
            OnFull::Brake => "brake",
        })
    }
}

/// One `[[rate_limits]]` entry as written (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Count calls of this mutating tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Count attempts of mutating steps with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Count mutating attempts of this runbook's steps (limits.toml only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// One count per value of this `{param}` template. Default: one count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// Uses allowed in the window: 1..=10000.
    pub max: i64,
    /// The sliding window: `30s`, `10m`, `1h`, `1d`; at most 30 days.
    pub window: String,
    /// `wait` (default), `escalate` or `brake` when the limit is full.
    #[serde(default)]
    pub on_full: OnFull,
}

/// What a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Counts {
    /// Calls of a mutating tool.
    Tool(String),
    /// Mutating attempts of steps with this id.
    Step(String),
    /// Mutating attempts of a runbook's steps.
    Runbook(String),
    /// Every mutating attempt.
    Global,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Counts::Tool(t) => write!(f, "calls of tool `{t}`"),
            Counts::Step(s) => write!(f, "mutating attempts of step `{s}`"),
            Counts::Runbook(r) => write!(f, "mutating attempts of runbook `{r}`"),
            Counts::Global => f.write_str("mutating attempts"),
        }
    }
}

/// A checked rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What it counts.
    pub counts: Counts,
    /// The `per` template, if any.
    pub per: Option<String>,
    per_template: Option<Template>,
    /// Uses allowed in the window.
    pub max: u32,
    /// The window.
    pub window_ms: u64,
    /// What a step does when it is full.
    pub on_full: OnFull,
    /// Where it was declared: `limits.toml rate_limits[0]`.
    pub origin: String,
}

/// A rate limit or brake scope that is not valid, naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct LimitError {
    /// The file (and entry) it is in.
    pub origin: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RateLimit {
    /// Checks the entry at `index` of `file`'s `rate_limits`.
    pub fn check(&self, file: &str, index: usize) -> Result<Limit, LimitError> {
        let origin = format!("{file} rate_limits[{index}]");
        let bad = |field: &str, message: String| LimitError {
            origin: origin.clone(),
            field: field.to_string(),
            message,
        };
        let named = [
            ("tool", &self.tool, IdentKind::Tool),
            ("step", &self.step, IdentKind::Step),
            ("runbook", &self.runbook, IdentKind::Tool),
        ];
        let given: Vec<_> = named.iter().filter(|(_, v, _)| v.is_some()).collect();
        if given.len() > 1 {
            return Err(bad(
                "tool/step/runbook",
                "name at most one of them: a limit counts one thing".into(),
            ));
        }
        for (field, value, kind) in given {
            let value = value.as_deref().unwrap_or_default();
            kind.check(value).map_err(|e| bad(field, e.to_string()))?;
        }
        let counts = match (&self.tool, &self.step, &self.runbook) {
            (Some(t), _, _) => Counts::Tool(t.clone()),
            (_, Some(s), _) => Counts::Step(s.clone()),
            (_, _, Some(r)) => Counts::Runbook(r.clone()),
            _ => Counts::Global,
        };
        if !(1..=i64::from(MAX_COUNT)).contains(&self.max) {
            return Err(bad(
                "max",
                format!("{} is outside 1..={MAX_COUNT}", self.max),
            ));
        }
        let window_ms = humantime::parse_duration(self.window.trim())
            .map_err(|e| {
                bad(
                    "window",
                    format!("{:?} is not a span like 1h: {e}", self.window),
                )
            })?
            .as_millis() as u64;
        if window_ms == 0 || window_ms > MAX_WINDOW_MS {
            return Err(bad(
                "window",
                format!("{:?} is outside 1ms..=30 days", self.window),
            ));
        }
        let per_template = match &self.per {
            Some(per) => {
                let t = Template::parse(per).map_err(|e| bad("per", e.to_string()))?;
                if t.params().next().is_none() {
                    return Err(bad(
                        "per",
                        format!("{per:?} names no `{{param}}`: drop `per` for one count"),
                    ));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Limit {
            counts,
            per: self.per.clone(),
            per_template,
            max: self.max as u32,
            window_ms,
            on_full: self.on_full,
            origin,
        })
    }
}

/// The parameters a value depends on, and their values.
pub type Params = BTreeMap<String, String>;

impl Limit {
    /// The parameters its `per` template names.
    pub fn per_params(&self) -> impl Iterator<Item = &str> {
        self.per_template.iter().flat_map(Template::params)
    }

    /// Whether a mutating step (granted `mutating_tools`) needs a use of
    /// this limit to run.
    pub fn applies_to_step(&self, runbook: &str, step: &str, mutating_tools: &[&str]) -> bool {
        match &self.counts {
            Counts::Tool(t) => mutating_tools.contains(&t.as_str()),
            Counts::Step(s) => s == step,
            Counts::Runbook(r) => r == runbook,
            Counts::Global => !mutating_tools.is_empty(),
        }
    }

    /// Whether a mutating call of `tool` uses this limit: every call of its
    /// tool, or the first mutating call of an attempt it counts.
    pub fn applies_to_call(&self, runbook: &str, step: &str, tool: &str, first: bool) -> bool {
        match &self.counts {
            Counts::Tool(t) => t == tool,
            _ => first && self.applies_to_step(runbook, step, &[tool]),
        }
    }

    /// The value of `per` for an incident's params (empty without `per`).
    pub fn per_value(&self, params: &Params) -> Result<String, String> {
        let Some(t) = &self.per_template else {
            return Ok(String::new());
        };
        t.render(|name| {
            params
                .get(name)
                .map(|v| std::borrow::Cow::Borrowed(v.as_str()))
                .ok_or_else(|| {
                    format!(
                        "{}: per = {:?} names parameter `{name}`, which the incident does not have",
                        self.origin,
                        self.per.as_deref().unwrap_or_default()
                    )
                })
        })
    }

    /// The shared-plane key of its count for an incident's params: one per
    /// thing counted, `per` template and value, and window, so limits that
    /// differ only in `max` or `on_full` share a count.
    pub fn count_key(&self, params: &Params) -> Result<String, String> {
        let what = match &self.counts {
            Counts::Tool(t) => format!("tool={t}"),
            Counts::Step(s) => format!("step={s}"),
            Counts::Runbook(r) => format!("runbook={r}"),
            Counts::Global => "all".into(),
        };
        let per = self.per.as_deref().unwrap_or("-");
        let value = self.per_value(params)?;
        Ok(format!(
            "{LIMIT_COUNTS}{what}/{per}={value}/{}",
            self.window_ms
        ))
    }

    /// The brake scope it trips: what it counts, narrowed to the values of
    /// the parameters its `per` names.
    pub fn scope(&self, params: &Params) -> Result<BrakeScope, String> {
        let mut scope = BrakeScope::default();
        match &self.counts {
            Counts::Tool(t) => scope.tool = Some(t.clone()),
            Counts::Step(s) => scope.step = Some(s.clone()),
            Counts::Runbook(r) => scope.runbook = Some(r.clone()),
            Counts::Global => {}
        }
        for name in self.per_params() {
            let value = params.get(name).ok_or_else(|| {
                format!(
                    "{}: per names parameter `{name}`, which the incident does not have",
                    self.origin
                )
            })?;
            scope.params.insert(name.to_string(), value.clone());
        }
        Ok(scope)
    }

    /// One line for people: `at most 3 calls of tool `restart_service` per
    /// 1h for service=api (limits.toml rate_limits[0])`.
    pub fn describe(&self, params: &Params) -> String {
        let per = match self.per_value(params) {
            Ok(v) if !v.is_empty() => format!(" for {}={v}", self.per.as_deref().unwrap_or("")),
            _ => String::new(),
        };
        format!(
            "at most {} {} per {}{per} ({})",
            self.max,
            self.counts,
            humantime::format_duration(std::time::Duration::from_millis(self.window_ms)),
            self.origin
        )
    }
}

/// The uses of one count, oldest first: the shared-plane value at a
/// [`Limit::count_key`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uses {
    /// Each use.
    pub uses: Vec<Use>,
}

/// One counted use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Use {
    /// When it was counted.
    pub at_ms: u64,
    /// By which incident.
    pub incident: String,
    /// Step.
    pub step: String,
    /// Attempt.
    pub attempt: u32,
    /// The mutating tool about to be called.
    pub tool: String,
}

/// How full a limit is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// Uses in the window.
    pub count: u32,
    /// The limit's `max`.
    pub max: u32,
    /// When the next use frees up, if it is full.
    pub frees_at_ms: Option<u64>,
}

impl Fill {
    /// Whether another use would go past `max`.
    pub fn is_full(&self) -> bool {
        self.count >= self.max
    }
}

impl Uses {
    /// Drops the uses that left a window of `window_ms` at `now_ms`.
    pub fn prune(&mut self, now_ms: u64, window_ms: u64) {
        let start = now_ms.saturating_sub(window_ms);
        self.uses.retain(|u| u.at_ms > start);
    }

    /// How full a limit of `max` per `window_ms` is at `now_ms`.
    pub fn fill(&self, now_ms: u64, window_ms: u64, max: u32) -> Fill {
        let start = now_ms.saturating_sub(window_ms);
        let live: Vec<u64> = self
            .uses
            .iter()
            .map(|u| u.at_ms)
            .filter(|&at| at > start)
            .collect();
        let count = live.len() as u32;
        // Full: the use that must leave for one to free is the
        // (count - max + 1)-th oldest.
        let frees_at_ms = (count >= max)
            .then(|| live.get((count - max) as usize).map(|at| at + window_ms))
            .flatten();
        Fill {
            count,
            max,
            frees_at_ms,
        }
    }
}

/// What a brake holds: every mutating step that matches all its parts
/// (none: every mutating step). Written `all`, or `key=value` parts joined
/// by `,`: `runbook=NAME`, `step=ID`, `tool=NAME`, and any incident
/// parameter (`service=api`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrakeScope {
    /// The runbook's name.
    pub runbook: Option<String>,
    /// The step id.
    pub step: Option<String>,
    /// A mutating tool the step may call.
    pub tool: Option<String>,
    /// Incident parameters and their values.
    pub params: BTreeMap<String, String>,
}

/// What a brake scope is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The incident's runbook name.
    pub runbook: &'a str,
    /// The step.
    pub step: &'a str,
    /// The mutating tools it may call (at the gate), or the one it is
    /// about to call.
    pub tools: &'a [&'a str],
    /// The incident's parameters.
    pub params: &'a Params,
}

impl BrakeScope {
    /// Whether it holds a mutating step.
    pub fn covers(&self, s: &Subject<'_>) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.runbook, s.runbook)
            && is(&self.step, s.step)
            && self.tool.as_deref().is_none_or(|t| s.tools.contains(&t))
            && self.params.iter().all(|(k, v)| s.params.get(k) == Some(v))
    }

    /// The shared-plane key of its brake.
    pub fn key(&self) -> String {
        format!("{BRAKES}{self}")
    }
}

impl fmt::Display for BrakeScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        for (name, value) in [
            ("runbook", &self.runbook),
            ("step", &self.step),
            ("tool", &self.tool),
        ] {
            if let Some(v) = value {
                parts.push(format!("{name}={v}"));
            }
        }
        parts.extend(self.params.iter().map(|(k, v)| format!("{k}={v}")));
        if parts.is_empty() {
            f.write_str("all")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// Why a brake scope does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("brake scope {scope:?}: {message}")]
pub struct ScopeError {
    /// The text.
    pub scope: String,
    /// What is wrong.
    pub message: String,
}

/// The longest brake scope, in bytes.
pub const SCOPE_MAX_BYTES: usize = 512;

/// A brake scope's rule as a regular expression, for JSON Schemas: `all`,
/// or `name=value` parts joined by `,`, each name and value 1..=128 of
/// letters, digits, `.`, `_` and `-`. ([`BrakeScope::from_str`] is the rule;
/// it also trims spaces around parts and refuses a name given twice, which
/// a pattern cannot say.)
pub const SCOPE_PATTERN: &str = "^(all|[A-Za-z0-9._-]{1,128}=[A-Za-z0-9._-]{1,128}(,[A-Za-z0-9._-]{1,128}=[A-Za-z0-9._-]{1,128})*)$";

impl FromStr for BrakeScope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Self, ScopeError> {
        let bad = |message: String| ScopeError {
            scope: text.to_string(),
            message,
        };
        let mut scope = BrakeScope::default();
        if text.trim() == "all" {
            return Ok(scope);
        }
        if text.len() > SCOPE_MAX_BYTES {
            return Err(bad(format!("longer than {SCOPE_MAX_BYTES} bytes")));
        }
        for part in text.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not `name=value` (or write `all`)")))?;
            let (name, value) = (name.trim(), value.trim());
            let valid = |s: &str| {
                !s.is_empty()
                    && s.len() <= 128
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            };
            if !valid(name) || !valid(value) {
                return Err(bad(format!(
                    "`{part}`: names and values are 1..=128 of letters, digits, `.`, `_` and `-`"
                )));
            }
            let slot = match name {
                "runbook" => &mut scope.runbook,
                "step" => &mut scope.step,
                "tool" => &mut scope.tool,
                _ => {
                    if scope
                        .params
                        .insert(name.to_string(), value.to_string())
                        .is_some()
                    {
                        return Err(bad(format!("`{name}` is given twice")));
                    }
                    continue;
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(bad(format!("`{name}` is given twice")));
            }
        }
        Ok(scope)
    }
}

/// An engaged brake: the shared-plane value at [`BrakeScope::key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Brake {
    /// The scope, as written.
    pub scope: String,
    /// Why it was engaged.
    pub reason: String,
    /// Who engaged it: `human:NAME`, or `agent:NAME` when a limit tripped it.
    pub by: String,
    /// When.
    pub at_ms: u64,
    /// The incident whose step tripped it, if a limit did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
}

impl Brake {
    /// One line for people.
    pub fn describe(&self) -> String {
        format!(
            "brake `{}` engaged by {} at {}, reason: {}",
            self.scope,
            self.by,
            format_ms(self.at_ms),
            crate::inert::shown(&self.reason, crate::inert::SHOWN_CHARS)
        )
    }
}

/// The data dir's fleet-wide limits file.
pub const LIMITS_FILE: &str = "limits.toml";

/// `limits.toml`: rate limits for every incident of the data dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// The limits.
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
}

impl LimitsFile {
    /// Reads and checks a limits file; a missing file has no limits.
    pub fn load(path: &Path) -> Result<Vec<Limit>, LimitError> {
        let origin = path.display().to_string();
        let text = match crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(LimitError {
                    origin,
                    field: "file".into(),
                    message: format!("cannot read it: {e}"),
                });
            }
        };
        Self::parse(&text, &origin)
    }

    /// Parses and checks limits-file text; `origin` names it in errors
    /// (a path, or the fleet's `limits` document in a shared store).
    pub fn parse(text: &str, origin: &str) -> Result<Vec<Limit>, LimitError> {
        let file: LimitsFile = toml::from_str(text).map_err(|e| LimitError {
            origin: origin.to_string(),
            field: "toml".into(),
            message: e.to_string(),
        })?;
        check_all(&file.rate_limits, origin)
    }
}

/// Checks a list of limits declared in `origin`.
pub fn check_all(limits: &[RateLimit], origin: &str) -> Result<Vec<Limit>, LimitError> {
    if limits.len() > MAX_LIMITS {
        return Err(LimitError {
            origin: origin.to_string(),
            field: "rate_limits".into(),
            message: format!("{} limits, at most {MAX_LIMITS}", limits.len()),
        });
    }
    limits
        .iter()
        .enumerate()
        .map(|(i, l)| l.check(origin, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> Result<Limit, LimitError> {
        toml::from_str::<RateLimit>(text)
            .unwrap()
            .check("l.toml", 2)
    }

    #[test]
    fn malformed_limits_name_file_entry_and_field() {
        for (text, field) in [
            ("max = 3\nwindow = \"0s\"", "window"),
            ("max = 3\nwindow = \"soon\"", "window"),
            ("max = 3\nwindow = \"400d\"", "window"),
            ("max = -1\nwindow = \"1h\"", "max"),
            ("max = 0\nwindow = \"1h\"", "max"),
            ("max = 10001\nwindow = \"1h\"", "max"),
            (
                "max = 3\nwindow = \"1h\"\ntool = \"a\"\nstep = \"b\"",
                "tool/step/runbook",
            ),
            ("max = 3\nwindow = \"1h\"\nper = \"svc\"", "per"),
            ("max = 3\nwindow = \"1h\"\nper = \"{svc\"", "per"),
            ("max = 3\nwindow = \"1h\"\ntool = \"a b\"", "tool"),
        ] {
            let err = limit(text).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
            assert!(
                err.to_string().starts_with("l.toml rate_limits[2]: "),
                "{err}"
            );
        }
        let unknown =
            toml::from_str::<LimitsFile>("[[rate_limits]]\nmax = 1\nwindow = \"1h\"\ntol = \"x\"");
        assert!(unknown.unwrap_err().to_string().contains("tol"));
    }

    #[test]
    fn fill_says_when_a_full_limit_frees() {
        let at = |ms| Use {
            at_ms: ms,
            incident: "I".into(),
            step: "s".into(),
            attempt: 1,
            tool: "t".into(),
        };
        let uses = Uses {
            uses: vec![at(1_000), at(2_000), at(3_000)],
        };
        let fill = uses.fill(3_500, 10_000, 3);
        assert!(fill.is_full());
        assert_eq!(fill.frees_at_ms, Some(11_000));
        let fill = uses.fill(11_500, 10_000, 3);
        assert_eq!((fill.count, fill.is_full()), (2, false));
        let fill = uses.fill(3_500, 10_000, 2);
        assert_eq!(
            fill.frees_at_ms,
            Some(12_000),
            "two must leave for one to free"
        );
        let mut pruned = uses.clone();
        pruned.prune(11_500, 10_000);
        assert_eq!(pruned.uses.len(), 2);
    }

    #[test]
    fn the_scope_pattern_takes_what_the_parser_takes() {
        let pattern = regex::Regex::new(SCOPE_PATTERN).unwrap();
        let long = format!("service={}", "a".repeat(129));
        for scope in [
            "all",
            "service=api",
            "tool=restart_service,service=api",
            "a.b_c-d=1",
            "",
            "tool",
            "x=a/b",
            "=a",
            "a=",
            "a=b,",
            "ALL,",
            "é=1",
            &long,
        ] {
            assert_eq!(
                pattern.is_match(scope),
                scope.parse::<BrakeScope>().is_ok(),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn scopes_parse_print_and_cover() {
        let scope: BrakeScope = "service=api, tool=restart_service".parse().unwrap();
        assert_eq!(scope.to_string(), "tool=restart_service,service=api");
        assert_eq!(scope.key(), "brake/tool=restart_service,service=api");
        assert_eq!("all".parse::<BrakeScope>().unwrap().to_string(), "all");
        for bad in ["", "tool", "tool=a,tool=b", "x=a/b", "service=a,service=b"] {
            assert!(bad.parse::<BrakeScope>().is_err(), "{bad}");
        }
        let params = Params::from([("service".to_string(), "api".to_string())]);
        let other = Params::from([("service".to_string(), "db".to_string())]);
        let subject = |tools: &'static [&'static str], params| Subject {
            runbook: "rb",
            step: "restart",
            tools,
            params,
        };
        assert!(scope.covers(&subject(&["restart_service"], &params)));
        assert!(!scope.covers(&subject(&["restart_service"], &other)));
        assert!(!scope.covers(&subject(&["drain"], &params)));
        assert!(BrakeScope::default().covers(&subject(&["drain"], &other)));
    }

    #[test]
    fn counts_are_keyed_by_what_per_value_and_window() {
        let l = limit("tool = \"restart\"\nper = \"{service}\"\nmax = 3\nwindow = \"1h\"").unwrap();
        let params = Params::from([("service".to_string(), "api".to_string())]);
        assert_eq!(
            l.count_key(&params).unwrap(),
            "limit/tool=restart/{service}=api/3600000"
        );
        let err = l.count_key(&Params::new()).unwrap_err();
        assert!(
            err.contains("`service`") && err.contains("l.toml rate_limits[2]"),
            "{err}"
        );
        assert!(l.applies_to_call("rb", "s", "restart", false));
        assert!(!l.applies_to_call("rb", "s", "drain", true));
        let g = limit("max = 3\nwindow = \"1h\"").unwrap();
        assert!(g.applies_to_call("rb", "s", "drain", true));
        assert!(
            !g.applies_to_call("rb", "s", "drain", false),
            "once per attempt"
        );
        assert!(
            l.describe(&params)
                .starts_with("at most 3 calls of tool `restart` per 1h for {service}=api"),
            "{}",
            l.describe(&params)
        );
    }
}
