//! Wall-clock time as stored in records: milliseconds since the Unix epoch.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now, by this process's clock: the
/// host's wall clock read once, at the first call, and carried forward by
/// the monotonic clock.
///
/// A step of the host's wall clock while the process runs (an NTP step,
/// `date -s`) moves nothing here. It matters for what the fleet shares: a
/// runner whose clock jumped two days ahead saw every use of a fleet-wide
/// rate limit as expired, let through calls the limit held, and pruned the
/// other runners' uses from the count it wrote back
/// (`clocks::a_wall_clock_step_on_a_running_runner_keeps_the_fleet_limit`).
/// Slewing (NTP's gradual correction) moves both clocks alike and is
/// followed. What a step cannot reach is a process started on a wrong
/// clock: `runbox doctor` compares it with the etcd members' (docs/ha.md).
pub fn now_ms() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| (wall_ms(), Instant::now()));
    wall.saturating_add(at.elapsed().as_millis() as u64)
}

/// The host's wall clock now, in ms since the epoch (0 before it).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An RFC 3339 timestamp (UTC, milliseconds) for display.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The start of a `--since` window, in ms since the epoch: a span back from
/// `now_ms` (`30d`, `12h`, `90m`), a date (`2026-11-01`, midnight UTC), or
/// an RFC 3339 time (`2026-11-01T08:00:00Z`).
///
/// ```
/// use runbox_core::time::parse_since;
/// let now = 10 * 86_400_000;
/// assert_eq!(parse_since("2d", now), Ok(8 * 86_400_000));
/// assert_eq!(parse_since("1970-01-03", now), Ok(2 * 86_400_000));
/// assert_eq!(parse_since("1970-01-01T00:00:01Z", now), Ok(1_000));
/// assert!(parse_since("last tuesday", now).is_err());
/// ```
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(span) = humantime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(span.as_millis() as u64));
    }
    let stamp = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&stamp)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            format!(
                "`{text}` is neither a span back from now (30d, 12h) nor a date (2026-11-01) or RFC 3339 time (2026-11-01T08:00:00Z)"
            )
        })
}
