//! How an error and its causes print on one line.

/// `parts` (an error, then its causes) joined by `": "`, skipping a part the
/// line already holds: typed errors often quote their source, and a chain
/// printed naively says it twice ("… (os error 2): … (os error 2)").
pub fn one_line(parts: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for part in parts {
        if line.contains(&part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&part);
    }
    line
}

/// [`one_line`] of `e` and its chain of sources.
pub fn one_line_of(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    one_line(parts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_quoted_cause_is_said_once() {
        let parts = [
            "cannot start `x`: No such file".to_string(),
            "No such file".to_string(),
        ];
        assert_eq!(super::one_line(parts), "cannot start `x`: No such file");
        let parts = ["a".to_string(), "b".to_string()];
        assert_eq!(super::one_line(parts), "a: b");
    }
}
