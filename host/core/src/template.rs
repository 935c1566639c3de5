//! `{param}` templates: the one substitution rule behind key patterns, tool
//! argv slots and step inputs.
//!
//! A template is text with placeholders: `{name}` stands for a value, `{{`
//! and `}}` for literal braces. Names are ASCII letters, digits, `_`, `-` and
//! `.`. A value fills exactly its placeholder's place and is never parsed
//! again, so a value that itself looks like `{other}` stays as it is.
//!
//! ```
//! use std::borrow::Cow;
//! use runbox_core::template::Template;
//!
//! let t = Template::parse("svc/{service}/restarts")?;
//! assert_eq!(t.params().collect::<Vec<_>>(), ["service"]);
//! let key = t.render(|name| Ok::<_, ()>(Cow::Owned(name.to_uppercase())));
//! assert_eq!(key, Ok("svc/SERVICE/restarts".to_string()));
//! # Ok::<(), runbox_core::template::TemplateError>(())
//! ```
//!
//! Free text that is not a template (a step's input document) uses
//! [`fill_known`]: known `{name}`s are replaced, everything else stays as
//! written.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in {0:?}")]
    Unclosed(String),
    /// A `}` without its `{` (write `}}` for a literal brace).
    #[error("lone `}}` in {0:?} (write `}}}}` for a literal brace)")]
    LoneClose(String),
    /// A placeholder whose name breaks the rule.
    #[error(
        "placeholder `{{{name}}}` in {text:?}: names are ASCII letters, digits, `_`, `-` and `.`"
    )]
    BadName {
        /// The template.
        text: String,
        /// The name.
        name: String,
    },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push(tail.as_bytes()[0] as char);
                rest = &tail[2..];
            } else if tail.starts_with('{') {
                let close = tail
                    .find('}')
                    .ok_or_else(|| TemplateError::Unclosed(text.to_string()))?;
                let name = &tail[1..close];
                if !valid_name(name) {
                    return Err(TemplateError::BadName {
                        text: text.to_string(),
                        name: name.to_string(),
                    });
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Param(name.to_string()));
                rest = &tail[close + 1..];
            } else {
                return Err(TemplateError::LoneClose(text.to_string()));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The placeholder names, in order of appearance.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The literal text between placeholders (with `{{`/`}}` already unescaped).
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Text(text) => Some(text.as_str()),
            Piece::Param(_) => None,
        })
    }

    /// Whether the template starts with a placeholder.
    pub fn starts_with_param(&self) -> bool {
        matches!(self.pieces.first(), Some(Piece::Param(_)))
    }

    /// Fills every placeholder with `lookup(name)`; the first error stops it.
    pub fn render<'v, E>(
        &self,
        mut lookup: impl FnMut(&str) -> Result<Cow<'v, str>, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Param(name) => out.push_str(&lookup(name)?),
            }
        }
        Ok(out)
    }
}

/// Replaces each `{name}` in free text whose name is in `params`; anything
/// else (unknown names, stray braces) stays as written. Values are not
/// scanned again.
pub fn fill_known(text: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let value = tail
            .find('}')
            .and_then(|close| params.get(&tail[1..close]).map(|v| (close, v)));
        match value {
            Some((close, value)) => {
                out.push_str(value);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn braces_escape_and_placeholders_parse() {
        let t = Template::parse("{{x}} {a}-{b.c}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["a", "b.c"]);
        let out = t.render(|n| Ok::<_, ()>(Cow::Owned(format!("<{n}>"))));
        assert_eq!(out.unwrap(), "{x} <a>-<b.c>");
    }

    #[test]
    fn malformed_templates_are_named() {
        assert!(matches!(
            Template::parse("a{b"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("a}b"),
            Err(TemplateError::LoneClose(_))
        ));
        assert!(matches!(
            Template::parse("{a b}"),
            Err(TemplateError::BadName { .. })
        ));
        assert!(matches!(
            Template::parse("{}"),
            Err(TemplateError::BadName { .. })
        ));
    }

    #[test]
    fn fill_known_leaves_unknown_names_and_stray_braces() {
        let p = params(&[("service", "api"), ("x", "{service}")]);
        assert_eq!(
            fill_known("{service} {other} { {x} }", &p),
            "api {other} { {service} }",
            "values are not substituted again"
        );
    }
}
