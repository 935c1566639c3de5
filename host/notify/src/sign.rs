//! The webhook signature: `Runbox-Signature: t=UNIX_SECONDS,v1=HEX`, where
//! HEX is HMAC-SHA256 with the sink's secret over `"{t}.{body}"`. Signing
//! the time with the body lets a receiver refuse a replayed old request;
//! the outbox entry's id in `Idempotency-Key` lets it drop a duplicate.
//!
//! ```
//! let header = runbox_notify::sign::signature(b"0123456789abcdef", 1_700_000_000, b"{}");
//! assert!(runbox_notify::sign::verify(b"0123456789abcdef", &header, b"{}", 1_700_000_100, 300).is_ok());
//! assert!(runbox_notify::sign::verify(b"another key, 16+", &header, b"{}", 1_700_000_100, 300).is_err());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "Runbox-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Runbox-Signature` value of `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

/// What a receiver does: checks `header` against `body` in constant time,
/// and refuses a timestamp more than `tolerance` seconds from `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<(), &'static str> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err("the header has no t= or v1=");
    };
    if now.abs_diff(t) > tolerance {
        return Err("the timestamp is too old or too new");
    }
    mac(secret, t, body)
        .verify_slice(&v1)
        .map_err(|_| "the signature does not match")
}
