//! Counted nouns in what runbox prints: "1 step", "2 steps", never "1 steps".

/// `n` and the noun, plural unless `n` is 1 (`count(1, "log line")` is
/// `1 log line`, `count(2, "retry")` is `2 retries`). Nouns are regular:
/// an `s`, or `ies` for a `y` after a consonant.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(super::count(1u64, "log line"), "1 log line");
        assert_eq!(super::count(0u64, "step"), "0 steps");
        assert_eq!(super::count(2u32, "KV key"), "2 KV keys");
        assert_eq!(super::count(3u32, "retry"), "3 retries");
    }
}
