//! Inert text: how anything that came from outside the host (an agent's
//! note, a step's reason or output, a tool's answer, an alert, a parameter)
//! is shown to a human.
//!
//! Such text is data, never layout. One rule, used by every human-facing
//! output (the terminal, Markdown, the HTML page; JSON stays JSON):
//!
//! - a newline never starts a new line of the surrounding format: it is
//!   shown as `⏎` (a `\r\n` pair as one `⏎`);
//! - every other control character (C0, DEL, C1, so ESC and with it every
//!   terminal escape sequence) and every invisible character that reorders
//!   or hides text (bidi overrides and isolates, zero-width characters, the
//!   Unicode line and paragraph separators) is shown escaped as `\u{…}`;
//! - a shown text is capped ([`SHOWN_CHARS`] by default) with a marker that
//!   says how much was left out and where the whole text is (`-v`, JSON).
//!
//! The source of each text is the caller's to show next to it (`note by
//! agent:bot`, `reason from step restart`): [`labelled`] writes it in one
//! shape.
//!
//! ```
//! use runbox_core::inert::{inert, shown};
//! let forged = "ok\n   7 2026-12-03 approved human:alice\x1b[2K";
//! assert_eq!(inert(forged), "ok⏎   7 2026-12-03 approved human:alice\\u{1b}[2K");
//! assert!(shown(&"x".repeat(1000), 10).ends_with("… (990 more characters; -v or --json shows all)"));
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// How many characters of an outside text a one-line view shows by
/// default: enough for a sentence of context, short enough that a
/// 4 KiB note does not push the entries around it off the screen.
pub const SHOWN_CHARS: usize = 240;

/// What a newline is shown as.
pub const NEWLINE: char = '⏎';

/// `text` with newlines shown as [`NEWLINE`] and every control or
/// invisible layout character escaped: one line that cannot move the
/// cursor, erase, link, reorder or start another entry.
pub fn inert(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\n' || needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => out.push(NEWLINE),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`inert`], capped at `max_chars` characters with a marker naming how
/// many more there were.
pub fn shown(text: &str, max_chars: usize) -> String {
    let text = inert(text);
    let total = text.chars().count();
    if total <= max_chars {
        return text.into_owned();
    }
    let head: String = text.chars().take(max_chars).collect();
    format!(
        "{head}… ({} more characters; -v or --json shows all)",
        total - max_chars
    )
}

/// `what by SOURCE: TEXT`, the text [`shown`] (or whole, still inert, when
/// `full`): the one shape in which outside text sits next to its source.
pub fn labelled(what: &str, source: &str, text: &str, full: bool) -> String {
    let body = if full {
        inert(text).into_owned()
    } else {
        shown(text, SHOWN_CHARS)
    };
    format!("{what} {source}: {body}")
}

/// Whether `c` is shown escaped: controls other than the newline, and the
/// invisible characters that change how the text around them reads.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'   // zero-width space, joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}'              // zero-width no-break space
        )
}

/// Whether a shown line holds nothing a terminal or a reader could take for
/// layout: no control or invisible character at all. The property the
/// outputs' tests check.
pub fn is_inert_line(line: &str) -> bool {
    !line.chars().any(|c| c == '\n' || needs_escape(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_never_leave_the_line() {
        assert_eq!(inert("a\r\nb\nc\rd"), "a⏎b⏎c\\u{d}d");
        assert_eq!(
            inert("\x1b]8;;http://x\x07link"),
            "\\u{1b}]8;;http://x\\u{7}link"
        );
        assert_eq!(inert("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(inert("\u{85}next"), "\\u{85}next");
        assert!(matches!(inert("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn random_text_always_renders_as_one_inert_line() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let text: String = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from_u32((seed % 0x3000) as u32).unwrap_or('\u{fffd}')
                })
                .collect();
            let line = shown(&text, 40);
            assert!(is_inert_line(&line), "{line:?}");
        }
    }

    #[test]
    fn a_long_text_is_capped_with_a_marker() {
        let s = shown(&"é".repeat(300), SHOWN_CHARS);
        assert!(s.starts_with(&"é".repeat(SHOWN_CHARS)));
        assert!(s.ends_with("… (60 more characters; -v or --json shows all)"));
        assert_eq!(shown("short", SHOWN_CHARS), "short");
        assert_eq!(
            labelled("note by", "agent:bot", "hi\nthere", false),
            "note by agent:bot: hi⏎there"
        );
    }
}
