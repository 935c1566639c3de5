//! `routes.toml` in the data dir: which alert group opens which runbook,
//! with which params, and whether it starts running at once.
//!
//! ```toml
//! [[routes]]
//! name = "api-down"
//! match = ['alertname="ApiDown"', 'severity=~"critical|page"']
//! runbook = "recover"
//! params = { service = "{labels.service}" }
//! run = "auto"
//! ```
//!
//! Matchers are Alertmanager's: `label="v"`, `label!="v"`, `label=~"re"`,
//! `label!~"re"`, each regex anchored at both ends as Alertmanager anchors
//! it, and a label a group lacks counts as the empty string. They are
//! matched against the group's common labels (those every alert of the
//! group has); the first route whose matchers all hold takes the group.
//! A param's template names labels as `{labels.NAME}`.
//!
//! ```
//! use runbox_core::route::Routes;
//! use std::collections::BTreeMap;
//!
//! let routes = Routes::parse(
//!     "[[routes]]\nname = \"api\"\nmatch = ['service=~\"api|web\"']\nrunbook = \"recover\"\nparams = { service = \"{labels.service}\" }\n",
//!     "routes.toml",
//! )?;
//! let labels = BTreeMap::from([("service".to_string(), "web".to_string())]);
//! let route = routes.route(&labels).expect("web matches api|web");
//! assert_eq!(route.params(&labels).unwrap()["service"], "web");
//! let other = BTreeMap::from([("service".to_string(), "webby".to_string())]);
//! assert!(routes.route(&other).is_none(), "anchored: webby is not web");
//! # Ok::<(), runbox_core::route::RouteError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::alert::Labels;
use crate::ident::IdentKind;
use crate::template::Template;

/// The routes file in the data dir.
pub const ROUTES_FILE: &str = "routes.toml";
/// The most routes a routes file holds.
pub const MAX_ROUTES: usize = 256;
/// The most matchers one route holds.
pub const MAX_MATCHERS: usize = 32;
/// The longest matcher, in bytes.
pub const MAX_MATCHER_BYTES: usize = 1024;
/// The most memory one compiled matcher regex may take: a pathological
/// pattern is refused when the file is read, not when an alert arrives.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// `routes.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// The routes, tried in order: the first that matches takes the group.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Its name: part of the incident id, and shown in records. Letters,
    /// digits, `-`, `_` and `.`.
    pub name: String,
    /// Alertmanager matchers (`label="v"`, `label!="v"`, `label=~"re"`,
    /// `label!~"re"`), all of which must hold for the group's common
    /// labels. Empty: every group.
    #[serde(rename = "match", default)]
    pub matchers: Vec<String>,
    /// The runbook to open: a name (or file stem) among the served runbooks.
    pub runbook: String,
    /// The runbook's params, each a template over the group's common
    /// labels: `service = "{labels.service}"`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `manual` (the default): open the incident; `auto`: also start
    /// running it at once.
    #[serde(default)]
    pub run: RunMode,
}

/// Whether a routed incident starts running at once.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Open it; an agent or a human runs it.
    #[default]
    Manual,
    /// Open it and run it at once, as an agent with `run` would.
    Auto,
}

/// A routes file or an entry that is not valid, naming the file, the
/// entry and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct RouteError {
    /// The file, and the entry when one is at fault (`routes.toml routes[1] (api)`).
    pub origin: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RouteError {
    /// An error in entry `index` (named `name`) of `file`.
    pub fn entry(file: &str, index: usize, name: &str, field: &str, message: String) -> Self {
        RouteError {
            origin: format!("{file} routes[{index}] ({name})"),
            field: field.to_string(),
            message,
        }
    }
}

/// How a matcher compares.
#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Regex(regex::Regex),
    NotRegex(regex::Regex),
}

/// One parsed matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    label: String,
    op: Op,
}

impl Matcher {
    /// Parses `label OP "value"` (the value may also be unquoted, as
    /// Alertmanager accepts it).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_MATCHER_BYTES {
            return Err(format!("{} bytes; at most {MAX_MATCHER_BYTES}", text.len()));
        }
        let text = text.trim();
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| format!("{text:?}: no operator (=, !=, =~, !~)"))?;
        let label = text[..at].trim();
        if !valid_label_name(label) {
            return Err(format!(
                "{text:?}: label name {label:?} is not [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        let rest = &text[at..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("{text:?}: no operator (=, !=, =~, !~)"))?;
        let value = unquote(value).map_err(|e| format!("{text:?}: {e}"))?;
        let op = match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "=~" => Op::Regex(anchored(&value).map_err(|e| format!("{text:?}: {e}"))?),
            _ => Op::NotRegex(anchored(&value).map_err(|e| format!("{text:?}: {e}"))?),
        };
        Ok(Matcher {
            label: label.to_string(),
            op,
        })
    }

    /// Whether `labels` satisfy it (a missing label is the empty string).
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.label).map_or("", String::as_str);
        match &self.op {
            Op::Equal(v) => value == v,
            Op::NotEqual(v) => value != v,
            Op::Regex(re) => re.is_match(value),
            Op::NotRegex(re) => !re.is_match(value),
        }
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A matcher's value: `"…"` with `\"`, `\\` and `\n` escapes, or bare text.
fn unquote(value: &str) -> Result<String, String> {
    let Some(inner) = value.strip_prefix('"') else {
        if value.contains('"') {
            return Err("a stray `\"` in an unquoted value".into());
        }
        return Ok(value.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.as_str().is_empty() => return Ok(out),
            '"' => return Err("text after the closing `\"`".into()),
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("unknown escape `\\{}`", other.unwrap_or(' '))),
            },
            c => out.push(c),
        }
    }
    Err("no closing `\"`".into())
}

/// `^(?:re)$`: Alertmanager's regex matchers match the whole value.
fn anchored(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| format!("regex: {e}"))
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// The runbook it opens.
    pub runbook: String,
    /// Whether its incidents run at once.
    pub run: RunMode,
    /// Where it was declared: `routes.toml routes[0] (api)`.
    pub origin: String,
    matchers: Vec<Matcher>,
    params: Vec<(String, Template)>,
}

/// The prefix of a param template's label placeholders.
const LABELS: &str = "labels.";

impl Route {
    /// Whether every matcher holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The runbook's params for a group with common labels `labels`; a
    /// label a template names that the group lacks is an error naming
    /// the route, the param and the label.
    pub fn params(&self, labels: &Labels) -> Result<BTreeMap<String, String>, RouteError> {
        self.params
            .iter()
            .map(|(name, template)| {
                let value = template.render(|placeholder| {
                    let label = placeholder.strip_prefix(LABELS).unwrap_or(placeholder);
                    labels
                        .get(label)
                        .map(|v| Cow::Borrowed(v.as_str()))
                        .ok_or_else(|| RouteError {
                            origin: self.origin.clone(),
                            field: format!("params.{name}"),
                            message: format!(
                                "label `{label}` is not on every alert of the group (commonLabels)"
                            ),
                        })
                })?;
                Ok((name.clone(), value))
            })
            .collect()
    }
}

/// The checked routes of a routes file, in order.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Reads and checks `path`; a missing file has no routes (every
    /// alert is unrouted, and recorded as such).
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let origin = path.display().to_string();
        match crate::files::read_capped(path, crate::files::MAX_USER_FILE_BYTES) {
            Ok(text) => Self::parse(&text, &origin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Routes::default()),
            Err(e) => Err(RouteError {
                origin,
                field: "file".into(),
                message: format!("cannot read it: {e}"),
            }),
        }
    }

    /// Parses and checks routes text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RouteError> {
        let file: RoutesFile = toml::from_str(text).map_err(|e| RouteError {
            origin: origin.to_string(),
            field: "toml".into(),
            message: e.to_string(),
        })?;
        if file.routes.len() > MAX_ROUTES {
            return Err(RouteError {
                origin: origin.to_string(),
                field: "routes".into(),
                message: format!("{} routes; at most {MAX_ROUTES}", file.routes.len()),
            });
        }
        let mut routes: Vec<Route> = Vec::with_capacity(file.routes.len());
        for (i, spec) in file.routes.iter().enumerate() {
            let bad = |field: &str, message: String| {
                RouteError::entry(
                    origin,
                    i,
                    &crate::inert::shown(&spec.name, 64),
                    field,
                    message,
                )
            };
            if routes.iter().any(|r| r.name == spec.name) {
                return Err(bad("name", format!("`{}` is used twice", spec.name)));
            }
            routes.push(check(spec, origin, i).map_err(|(field, m)| bad(&field, m))?);
        }
        Ok(Routes { routes })
    }

    /// The first route that takes a group with common labels `labels`.
    pub fn route(&self, labels: &Labels) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(labels))
    }

    /// Every route, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Checks one entry; an error is `(field, message)`.
fn check(spec: &RouteSpec, file: &str, index: usize) -> Result<Route, (String, String)> {
    if !IdentKind::Incident.is_valid(&spec.name) {
        return Err(("name".into(), IdentKind::Incident.rule()));
    }
    if spec.runbook.trim().is_empty() {
        return Err(("runbook".into(), "empty".into()));
    }
    if spec.matchers.len() > MAX_MATCHERS {
        return Err((
            "match".into(),
            format!("{} matchers; at most {MAX_MATCHERS}", spec.matchers.len()),
        ));
    }
    let matchers = spec
        .matchers
        .iter()
        .enumerate()
        .map(|(i, m)| Matcher::parse(m).map_err(|e| (format!("match[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    if spec.params.len() > crate::runbook::LoadedRunbook::MAX_PARAMS {
        return Err((
            "params".into(),
            format!(
                "{} params; at most {}",
                spec.params.len(),
                crate::runbook::LoadedRunbook::MAX_PARAMS
            ),
        ));
    }
    let mut params = Vec::with_capacity(spec.params.len());
    for (name, text) in &spec.params {
        let field = format!("params.{name}");
        let template = Template::parse(text).map_err(|e| (field.clone(), e.to_string()))?;
        if let Some(other) = template.params().find(|p| {
            p.strip_prefix(LABELS)
                .is_none_or(|label| !valid_label_name(label))
        }) {
            return Err((
                field,
                format!("`{{{other}}}`: a param names a label as `{{labels.NAME}}`"),
            ));
        }
        params.push((name.clone(), template));
    }
    Ok(Route {
        name: spec.name.clone(),
        runbook: spec.runbook.clone(),
        run: spec.run,
        origin: format!("{file} routes[{index}] ({})", spec.name),
        matchers,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(m: &str) -> Matcher {
        Matcher::parse(m).unwrap_or_else(|e| panic!("{m}: {e}"))
    }

    #[test]
    fn the_four_operators_match_as_alertmanagers_do() {
        let l = labels(&[("service", "api"), ("severity", "critical")]);
        assert!(one("service=\"api\"").matches(&l));
        assert!(one("service = api").matches(&l), "unquoted, spaced");
        assert!(!one("service!=\"api\"").matches(&l));
        assert!(one("severity=~\"crit.*|page\"").matches(&l));
        assert!(!one("severity!~\"crit.*\"").matches(&l));
        // Anchored: a regex matches the whole value, not a part.
        assert!(!one("service=~\"ap\"").matches(&l));
        assert!(!one("service=~\"p\"").matches(&l));
        assert!(
            one("service=~\"a(p|q)i\"").matches(&l),
            "alternation stays inside the anchors"
        );
        assert!(
            !one("service=~\"x|ap\"").matches(&l),
            "each branch anchored"
        );
        // A missing label is the empty string.
        assert!(one("team=\"\"").matches(&l));
        assert!(!one("team=~\".+\"").matches(&l));
        assert!(one("team!=\"db\"").matches(&l));
        // Escapes in quoted values.
        let q = labels(&[("msg", "say \"hi\"\\")]);
        assert!(one(r#"msg="say \"hi\"\\""#).matches(&q));
    }

    #[test]
    fn malformed_matchers_say_what_is_wrong() {
        for (m, says) in [
            ("service", "no operator"),
            ("=\"x\"", "label name"),
            ("9a=\"x\"", "label name"),
            ("a=\"x", "no closing"),
            ("a=\"x\"y", "after the closing"),
            ("a=\"\\q\"", "unknown escape"),
            ("a=~\"(\"", "regex"),
            ("a=x\"y", "stray"),
        ] {
            let err = Matcher::parse(m).unwrap_err();
            assert!(err.contains(says), "{m}: {err}");
        }
        let huge = format!("a=~\"{}\"", "x".repeat(MAX_MATCHER_BYTES));
        assert!(Matcher::parse(&huge).unwrap_err().contains("at most"));
        // A regex whose compiled program is too large is refused (`\\w`:
        // a backslash is escaped inside a quoted value).
        let big = r#"a=~"(\\w{100}){100}""#;
        let err = Matcher::parse(big).unwrap_err();
        assert!(err.contains("regex") && err.contains("size limit"), "{err}");
    }

    const ROUTES: &str = r#"
        [[routes]]
        name = "api"
        match = ['alertname="ApiDown"', 'service=~"api|web"']
        runbook = "recover"
        params = { service = "{labels.service}", region = "eu-{labels.region}" }
        run = "auto"

        [[routes]]
        name = "catch-all"
        runbook = "triage"
    "#;

    #[test]
    fn the_first_matching_route_takes_the_group() {
        let routes = Routes::parse(ROUTES, "routes.toml").unwrap();
        let api = labels(&[
            ("alertname", "ApiDown"),
            ("service", "web"),
            ("region", "1"),
        ]);
        let route = routes.route(&api).unwrap();
        assert_eq!((route.name.as_str(), route.run), ("api", RunMode::Auto));
        let params = route.params(&api).unwrap();
        assert_eq!(params["service"], "web");
        assert_eq!(params["region"], "eu-1");
        let other = labels(&[("alertname", "DiskFull")]);
        let route = routes.route(&other).unwrap();
        assert_eq!(
            (route.name.as_str(), route.run),
            ("catch-all", RunMode::Manual)
        );
        assert!(route.params(&other).unwrap().is_empty());
    }

    #[test]
    fn a_missing_label_is_an_error_naming_route_param_and_label() {
        let routes = Routes::parse(ROUTES, "routes.toml").unwrap();
        let l = labels(&[("alertname", "ApiDown"), ("service", "api")]);
        let err = routes.route(&l).unwrap().params(&l).unwrap_err();
        assert_eq!(err.origin, "routes.toml routes[0] (api)");
        assert_eq!(err.field, "params.region");
        assert!(err.message.contains("`region`"), "{err}");
    }

    #[test]
    fn errors_name_the_file_the_entry_and_the_field() {
        for (text, origin, field) in [
            (
                ROUTES.replace("api|web", "api|("),
                "routes.toml routes[0] (api)",
                "match[1]",
            ),
            (
                ROUTES.replace("{labels.service}", "{service}"),
                "routes.toml routes[0] (api)",
                "params.service",
            ),
            (
                ROUTES.replace("{labels.service}", "{labels.service"),
                "routes.toml routes[0] (api)",
                "params.service",
            ),
            (
                ROUTES.replace("\"catch-all\"", "\"api\""),
                "routes.toml routes[1] (api)",
                "name",
            ),
            (
                ROUTES.replace("\"catch-all\"", "\"a b\""),
                "routes.toml routes[1] (a b)",
                "name",
            ),
            (
                ROUTES.replace("\"triage\"", "\"\""),
                "routes.toml routes[1] (catch-all)",
                "runbook",
            ),
            (
                ROUTES.replace("\"auto\"", "\"soon\""),
                "routes.toml",
                "toml",
            ),
            (
                ROUTES.replace("runbook = \"triage\"", "runbok = \"triage\""),
                "routes.toml",
                "toml",
            ),
        ] {
            let err = Routes::parse(&text, "routes.toml").unwrap_err();
            assert_eq!(
                (err.origin.as_str(), err.field.as_str()),
                (origin, field),
                "{err}"
            );
        }
        let many = "[[routes]]\nname = \"r\"\nrunbook = \"x\"\n".repeat(MAX_ROUTES + 1);
        let err = Routes::parse(&many, "routes.toml").unwrap_err();
        assert_eq!(err.field, "routes", "{err}");
    }

    #[test]
    fn a_missing_file_has_no_routes() {
        let routes = Routes::load(Path::new("/nonexistent/routes.toml")).unwrap();
        assert!(routes.route(&Labels::new()).is_none());
    }
}
