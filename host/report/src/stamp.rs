//! Times in exports: stored as ms since the epoch, written as RFC 3339 UTC.

use runbox_core::time::format_ms;
use serde::Serializer;

/// Serializes ms since the epoch as an RFC 3339 UTC time.
pub(crate) fn rfc3339<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_ms(*ms))
}

/// [`rfc3339`] for an optional time.
pub(crate) fn opt_rfc3339<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

/// A span in ms, short and readable: `850ms`, `12.4s`, `3m05s`, `2h07m`.
pub(crate) fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_short() {
        assert_eq!(super::span(850), "850ms");
        assert_eq!(super::span(12_400), "12.4s");
        assert_eq!(super::span(185_000), "3m05s");
        assert_eq!(super::span(7_620_000), "2h07m");
    }
}
