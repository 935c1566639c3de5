//! Identifiers: the one place that says what an incident id, a name, a step
//! id, a parameter value or a tool name may contain.
//!
//! Identifiers become parts of store keys, timeline lines and argv slots, so
//! each kind admits only characters that cannot change the meaning of where
//! it lands: no `:` (the key separator), no `/` or whitespace, no newline
//! that could forge a timeline line, no `*` that could widen a grant.
//!
//! | kind | characters | length |
//! |---|---|---|
//! | [`IdentKind::Incident`] | ASCII letters, digits, `-`, `_`, `.` | 1..=64 |
//! | [`IdentKind::Name`] (actors) | ASCII letters, digits, `-`, `_`, `.`, `@` | 1..=64 |
//! | [`IdentKind::Step`] | ASCII letters, digits, `-`, `_`; not `resolve`, `escalate`, `fail` | 1..=64 |
//! | [`IdentKind::Param`] (values) | ASCII letters, digits, `-`, `_`, `.`; not `.` or `..` | 1..=128 |
//! | [`IdentKind::Tool`] | ASCII letters, digits, `-`, `_`, `.` | 1..=64 |
//!
//! [`IncidentId`] and [`Name`] are the newtypes for the identifiers the
//! engine is handed: once built, they are valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which rule an identifier follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentKind {
    /// An incident id.
    Incident,
    /// An actor's name (agent or human).
    Name,
    /// A runbook step id.
    Step,
    /// A runbook parameter value.
    Param,
    /// A tool name.
    Tool,
}

impl IdentKind {
    /// What the identifier is, for messages.
    pub fn what(self) -> &'static str {
        match self {
            IdentKind::Incident => "incident id",
            IdentKind::Name => "name",
            IdentKind::Step => "step id",
            IdentKind::Param => "parameter value",
            IdentKind::Tool => "tool name",
        }
    }

    /// The characters allowed besides ASCII letters and digits.
    fn extra(self) -> &'static str {
        match self {
            IdentKind::Incident | IdentKind::Param | IdentKind::Tool => "-_.",
            IdentKind::Name => "-_.@",
            IdentKind::Step => "-_",
        }
    }

    fn max_len(self) -> usize {
        match self {
            IdentKind::Param => 128,
            _ => 64,
        }
    }

    fn reserved(self) -> &'static [&'static str] {
        match self {
            IdentKind::Step => &["resolve", "escalate", "fail"],
            IdentKind::Param => &[".", ".."],
            _ => &[],
        }
    }

    /// The rule in words, for messages.
    pub fn rule(self) -> String {
        let extra: Vec<String> = self.extra().chars().map(|c| format!("`{c}`")).collect();
        let mut rule = format!(
            "1 to {} ASCII letters, digits, {}",
            self.max_len(),
            extra.join(", ")
        );
        if !self.reserved().is_empty() {
            let reserved: Vec<String> = self.reserved().iter().map(|r| format!("`{r}`")).collect();
            rule.push_str(&format!("; not {}", reserved.join(" or ")));
        }
        rule
    }

    /// The rule as a regular expression (without the reserved words), for
    /// JSON Schemas and OpenAPI.
    pub fn pattern(self) -> String {
        let extra: String = self
            .extra()
            .chars()
            .map(|c| {
                if c == '-' {
                    "\\-".to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        format!("^[A-Za-z0-9{extra}]{{1,{}}}$", self.max_len())
    }

    /// Whether `value` is a valid identifier of this kind.
    pub fn is_valid(self, value: &str) -> bool {
        !value.is_empty()
            && value.len() <= self.max_len()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || self.extra().contains(c))
            && !self.reserved().contains(&value)
    }

    /// Checks `value`, naming it and the rule when it is not valid.
    pub fn check(self, value: &str) -> Result<(), IdentError> {
        if self.is_valid(value) {
            Ok(())
        } else {
            Err(IdentError {
                kind: self,
                value: value.to_string(),
            })
        }
    }
}

/// An identifier that breaks its kind's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} {value:?}: {}", kind.what(), kind.rule())]
pub struct IdentError {
    /// The rule it broke.
    pub kind: IdentKind,
    /// The value, as given.
    pub value: String,
}

macro_rules! ident_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $kind.pattern(),
                    "description": format!("A {}: {}.", $kind.what(), $kind.rule()),
                })
            }
        }

        impl $name {
            /// Validates `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdentError> {
                let value = value.into();
                $kind.check(&value)?;
                Ok($name(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdentError;
            fn try_from(value: String) -> Result<Self, IdentError> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdentError;
            fn from_str(s: &str) -> Result<Self, IdentError> {
                $name::new(s)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ident_newtype!(
    /// A valid incident id: safe inside store keys (`incident:{id}:…`).
    IncidentId,
    IdentKind::Incident
);

ident_newtype!(
    /// A valid actor name, without its `agent:`/`human:` side.
    Name,
    IdentKind::Name
);

ident_newtype!(
    /// A valid runbook step id.
    StepId,
    IdentKind::Step
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_as_a_pattern_takes_what_the_rule_takes() {
        for kind in [IdentKind::Incident, IdentKind::Name, IdentKind::Step] {
            let pattern = regex::Regex::new(&kind.pattern()).unwrap();
            for value in ["INC-7", "a.b_c", "x@y", "a b", "", "é", &"a".repeat(65)] {
                let reserved = kind.reserved().contains(&value);
                assert_eq!(
                    pattern.is_match(value) && !reserved,
                    kind.is_valid(value),
                    "{kind:?} {value:?}"
                );
            }
        }
    }

    #[test]
    fn incident_ids_cannot_escape_their_prefix() {
        assert!(IncidentId::new("INC-7").is_ok());
        for bad in ["a:b", "", "x/y", "a\nb", &"x".repeat(65)] {
            assert!(IncidentId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_cannot_smuggle_a_side_or_a_line() {
        assert!(Name::new("alice@example.com").is_ok());
        for bad in ["human:bob", "alice\napproved", "a b", ""] {
            let err = Name::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid name"), "{err}");
        }
    }

    #[test]
    fn reserved_words_and_dots_are_refused_where_they_mean_something() {
        assert!(!IdentKind::Step.is_valid("resolve"));
        assert!(IdentKind::Step.is_valid("restart-api"));
        assert!(!IdentKind::Step.is_valid("a.b"));
        assert!(!IdentKind::Param.is_valid(".."));
        assert!(IdentKind::Param.is_valid("api.v2"));
        assert!(!IdentKind::Param.is_valid("a*"));
        assert!(IdentKind::Tool.is_valid("http_probe"));
    }

    #[test]
    fn serde_refuses_an_invalid_id() {
        let err = serde_json::from_str::<IncidentId>("\"a:b\"").unwrap_err();
        assert!(err.to_string().contains("incident id"), "{err}");
    }
}
