//! The fleet's configuration in the state plane: on a store several runners
//! share, the humans who may decide, the fleet-wide rate limits, the alert
//! routes and the notification sinks are not files in each runner's data
//! dir but versioned documents in the store's shared plane, so every runner
//! reads the same ones.
//!
//! Each document ([`ConfigDoc`]) holds the exact text its file would hold
//! (`allowed_signers`, `passkeys.json`, `limits.toml`, `routes.toml`,
//! `notify.toml`). A change is a human's signed
//! `configure` statement, bound to the change it makes by
//! [`subject`]: the document's kind, the change's place in the fleet
//! timeline, the digest of the text it replaces and of the text it writes.
//! The change is recorded in the fleet timeline ([`ConfigChange`], one
//! per change, numbered from 1 without gaps), which `verify` replays from an
//! empty store: every change signed by a human listed by the signers
//! document as it stood before it, but the first human's enrollment, made
//! with the mutation token holder's consent.
//!
//! ```
//! use runbox_core::fleet_config::{ConfigKind, subject, text_sha256};
//!
//! let kind: ConfigKind = "limits".parse()?;
//! assert_eq!(kind.key(), "fleet/config/limits");
//! let s = subject(kind, 3, &text_sha256(""), &text_sha256("[[rate_limits]]\n"));
//! assert_eq!(s.len(), 64);
//! assert_ne!(s, subject(kind, 4, &text_sha256(""), &text_sha256("[[rate_limits]]\n")));
//! # Ok::<(), String>(())
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::records::Signed;

/// Where the configuration documents live in the shared plane.
pub const CONFIG: &str = "fleet/config/";
/// Where the fleet timeline's changes live in the shared plane.
pub const CHANGES: &str = "fleet/change/";
/// The fleet timeline's head: the number of its last change.
pub const HEAD: &str = "fleet/head";
/// Where passkeys made at the console wait, in the shared plane, for a
/// human's signed change to list them.
pub const PENDING_PASSKEYS: &str = "fleet/pending-passkey/";
/// The largest document: 256 KiB, far above a fleet's humans (an
/// ed25519 line is about 120 bytes) or limits, and under what one etcd
/// transaction carries with the change that records it.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// The longest summary of a change (it rides in the signed statement).
pub const MAX_SUMMARY_CHARS: usize = 600;
/// Who consented to a change no human could sign: the first human's
/// enrollment into an empty registry.
pub const TOKEN_CONSENT: &str = "mutation-token";

/// A configuration document of the fleet.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigKind {
    /// The humans who may decide, by their SSH keys (`allowed_signers`'
    /// format).
    Signers,
    /// The humans who may decide, by their passkeys (`passkeys.json`'s
    /// format).
    Passkeys,
    /// The fleet-wide rate limits (`limits.toml`'s format).
    Limits,
    /// Which alert group opens which runbook (`routes.toml`'s format).
    Routes,
    /// Where escalations go (`notify.toml`'s format; its secrets stay in
    /// each runner's files and environment, named, never written here).
    Sinks,
}

impl ConfigKind {
    /// Every kind.
    pub const ALL: [ConfigKind; 5] = [
        ConfigKind::Signers,
        ConfigKind::Passkeys,
        ConfigKind::Limits,
        ConfigKind::Routes,
        ConfigKind::Sinks,
    ];

    /// The kind as written in statements and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Signers => "signers",
            ConfigKind::Passkeys => "passkeys",
            ConfigKind::Limits => "limits",
            ConfigKind::Routes => "routes",
            ConfigKind::Sinks => "sinks",
        }
    }

    /// Whether it lists humans who may decide (their SSH keys or their
    /// passkeys): the first human's enrollment is the one change the
    /// mutation token consents to.
    pub fn lists_humans(self) -> bool {
        matches!(self, ConfigKind::Signers | ConfigKind::Passkeys)
    }

    /// Its document's shared-plane key.
    pub fn key(self) -> String {
        format!("{CONFIG}{}", self.as_str())
    }

    /// The data-dir file that holds it on an embedded store.
    pub fn file(self) -> &'static str {
        match self {
            ConfigKind::Signers => "allowed_signers",
            ConfigKind::Passkeys => "passkeys.json",
            ConfigKind::Limits => crate::limits::LIMITS_FILE,
            ConfigKind::Routes => crate::route::ROUTES_FILE,
            ConfigKind::Sinks => crate::notify::NOTIFY_FILE,
        }
    }
}

impl std::fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConfigKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConfigKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a configuration of the fleet (signers, limits, routes, sinks)"
                )
            })
    }
}

/// A configuration document as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// Which.
    pub kind: ConfigKind,
    /// The fleet timeline's change that wrote it.
    pub seq: u64,
    /// Its text, as its file would hold it.
    pub text: String,
}

/// The fleet timeline's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The number of the last change (0: none yet).
    pub seq: u64,
}

/// One change of the fleet's configuration, in the fleet timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Its place in the fleet timeline, from 1.
    pub seq: u64,
    /// The document changed.
    pub kind: ConfigKind,
    /// When it was committed (ms since the epoch).
    pub at_ms: u64,
    /// Who made it: `human:NAME`, or [`TOKEN_CONSENT`].
    pub by: String,
    /// What it does, in words (the statement says the same).
    pub summary: String,
    /// sha256 of the text it replaced ([`text_sha256`] of `""` for none).
    pub base_sha256: String,
    /// The text it wrote.
    pub text: String,
    /// The human's signed statement (none for the first enrollment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

/// The shared-plane key of change `seq`.
pub fn change_key(seq: u64) -> String {
    format!("{CHANGES}{seq:012}")
}

/// Where one-time passkey enrollment links live on a shared store (any
/// runner's console takes them), by the sha256 of their token.
pub const ENROLLMENTS: &str = "fleet/enrollment/";
/// How long an enrollment link works: 15 minutes.
pub const ENROLLMENT_TTL_MS: u64 = 15 * 60 * 1000;
/// The most enrollment links alive at once on a shared store.
pub const MAX_ENROLLMENTS: usize = 16;

/// A one-time link that enrolls a passkey for a human at a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentLink {
    /// The human the passkey will sign for.
    pub human: String,
    /// What to call it.
    pub label: String,
    /// When the link stops working (ms since the epoch).
    pub expires_ms: u64,
}

/// The shared-plane key of the enrollment link whose token is `token`:
/// the store keeps its digest, never the token.
pub fn enrollment_key(token: &str) -> String {
    format!("{ENROLLMENTS}{}", text_sha256(token))
}

/// The shared-plane key of a passkey waiting to be listed, by its
/// fingerprint (`passkey:CREDENTIAL-ID`).
pub fn pending_passkey_key(fingerprint: &str) -> String {
    format!("{PENDING_PASSKEYS}{fingerprint}")
}

/// sha256 of a document's text, hex.
pub fn text_sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What a `configure` statement binds: change `seq` of the fleet timeline,
/// from the text whose digest is `base_sha256` to the one whose digest is
/// `new_sha256`, of `kind`. A statement counts for that one change: once it
/// lands the timeline has moved past `seq`.
pub fn subject(kind: ConfigKind, seq: u64, base_sha256: &str, new_sha256: &str) -> String {
    let bound = format!("runbox.fleet-config/v1\n{kind}\n{seq}\n{base_sha256}\n{new_sha256}\n");
    hex::encode(Sha256::digest(bound.as_bytes()))
}

/// `text` cut to [`MAX_SUMMARY_CHARS`] characters, with `…` where cut.
pub fn bounded_summary(text: String) -> String {
    if text.chars().count() <= MAX_SUMMARY_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_binds_every_part_of_the_change() {
        let base = text_sha256("");
        let new = text_sha256("x");
        let s = subject(ConfigKind::Signers, 1, &base, &new);
        assert_ne!(s, subject(ConfigKind::Limits, 1, &base, &new));
        assert_ne!(s, subject(ConfigKind::Signers, 2, &base, &new));
        assert_ne!(s, subject(ConfigKind::Signers, 1, &new, &new));
        assert_ne!(s, subject(ConfigKind::Signers, 1, &base, &base));
    }

    #[test]
    fn kinds_round_trip_and_strangers_are_named() {
        for kind in ConfigKind::ALL {
            assert_eq!(kind.as_str().parse::<ConfigKind>().unwrap(), kind);
        }
        assert!(
            "hosts"
                .parse::<ConfigKind>()
                .unwrap_err()
                .contains("`hosts`")
        );
    }

    #[test]
    fn change_keys_sort_in_timeline_order() {
        assert!(change_key(9) < change_key(10));
        assert!(change_key(99_999) < change_key(100_000));
    }

    #[test]
    fn a_long_summary_is_cut_where_it_says_so() {
        let cut = bounded_summary("a".repeat(MAX_SUMMARY_CHARS + 5));
        assert_eq!(cut.chars().count(), MAX_SUMMARY_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_summary("short".into()), "short");
    }
}
