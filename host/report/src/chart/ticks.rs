//! The time axis's ticks: at round intervals, so a reader adds `+2m30s`
//! in their head, never `+1m39s`.

/// Round intervals, in ms, smallest first: 1–2–5 below a second, then
/// the steps a clock face has.
const STEPS: [u64; 29] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    MINUTE,
    2 * MINUTE,
    5 * MINUTE,
    10 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    7 * DAY,
];
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// The least room between two ticks, so their labels never touch.
const GAP_PX: f64 = 90.0;

/// The interval between ticks on an axis `width_px` wide showing
/// `span_ms`: the smallest round one that leaves [`GAP_PX`] between
/// ticks (whole weeks past the last).
pub(crate) fn interval(span_ms: u64, width_px: f64) -> u64 {
    let most = (width_px / GAP_PX).floor().max(1.0) as u64;
    STEPS
        .into_iter()
        .find(|step| span_ms / step <= most)
        .unwrap_or_else(|| span_ms.div_ceil(most).next_multiple_of(7 * DAY))
}

/// The ticks of a span: 0 and every multiple of its interval up to the
/// span.
pub(crate) fn ticks(span_ms: u64, width_px: f64) -> impl Iterator<Item = u64> {
    let step = interval(span_ms, width_px);
    (0..=span_ms / step).map(move |i| i * step)
}

/// A tick's label: `+500ms`, `+1.5s`, `+30s`, `+2m30s`, `+1h`, `+1d6h`;
/// the start is `0`.
pub(crate) fn label(ms: u64) -> String {
    match ms {
        0 => "0".into(),
        1..1_000 => format!("+{ms}ms"),
        1_000..MINUTE => format!("+{}s", ms as f64 / 1000.0),
        _ => {
            let whole = [(DAY, u64::MAX, "d"), (HOUR, 24, "h"), (MINUTE, 60, "m")]
                .into_iter()
                .map(|(unit, per_next, name)| (ms / unit % per_next, name))
                .filter(|(n, _)| *n > 0)
                .map(|(n, name)| format!("{n}{name}"));
            // Seconds keep their fraction: a wide plot may tick every 500 ms.
            let seconds =
                (!ms.is_multiple_of(MINUTE)).then(|| format!("{}s", (ms % MINUTE) as f64 / 1000.0));
            format!("+{}", whole.chain(seconds).collect::<String>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_round_for_the_span() {
        // The case: a 10-minute incident on the 960 px plot.
        assert_eq!(interval(10 * MINUTE, 960.0), MINUTE);
        assert_eq!(interval(99_000, 960.0), 10_000);
        assert_eq!(interval(1_234, 960.0), 200);
        assert_eq!(interval(3 * HOUR + 1, 960.0), 30 * MINUTE);
        assert_eq!(interval(45 * DAY, 960.0), 7 * DAY);
        assert_eq!(interval(1_000 * DAY, 960.0), 15 * 7 * DAY);
        for span in [1, 7, 999, 61_000, 99_000, 600_000, 5_400_000, 90_000_000] {
            for width in [300.0, 960.0, 24_000.0] {
                let step = interval(span, width);
                assert!(STEPS.contains(&step), "{span} ms on {width} px: {step}");
                let n = span / step;
                assert!(
                    n as f64 * GAP_PX <= width.max(GAP_PX),
                    "{span} ms on {width} px: {n} ticks of {step} ms crowd"
                );
            }
        }
    }

    #[test]
    fn ticks_fall_on_multiples_and_never_past_the_end() {
        let t: Vec<u64> = ticks(10 * MINUTE + 7_000, 960.0).collect();
        assert_eq!(t.first(), Some(&0));
        assert_eq!(t.last(), Some(&(10 * MINUTE)));
        assert!(t.windows(2).all(|w| w[1] - w[0] == MINUTE), "{t:?}");
    }

    #[test]
    fn labels_read_as_round_times() {
        let labels: Vec<String> = [0, 500, 1_500, 30_000, MINUTE, 150_000, HOUR, 5_400_000]
            .into_iter()
            .map(label)
            .collect();
        assert_eq!(
            labels,
            [
                "0", "+500ms", "+1.5s", "+30s", "+1m", "+2m30s", "+1h", "+1h30m"
            ]
        );
        assert_eq!(label(DAY + 6 * HOUR), "+1d6h");
        assert_eq!(label(MINUTE + 500), "+1m0.5s");
        assert!(
            ticks(99_000, 960.0).all(|t| !label(t).contains("1m39s")),
            "never the odd value of the issue"
        );
    }
}
