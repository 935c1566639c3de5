//! The statement a human signs: one line of JSON that names the decision and
//! binds it to exactly what is decided, in exactly one deployment.
//!
//! `runbox.decision/v2` adds two bindings to v1: the `audience` (the
//! identity of the store the decision is for, so a decision made in staging
//! is refused by production however alike their incidents are), and the
//! incident's decision-relevant `state` ([`Stance`]: status and owner) in
//! place of v1's checkpoint `version`, which every note moved. v1
//! statements still parse, so stored decisions verify; a new decision must
//! be v2.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use runbox_core::ident::{IdentKind, Name};
use runbox_core::time::now_ms;

use crate::TrustError;

/// The `schema` of every new statement.
pub const STATEMENT_SCHEMA: &str = "runbox.decision/v2";
/// The schema of statements made before deployments were bound: read (and
/// verified) in stored records, refused for new decisions.
pub const STATEMENT_SCHEMA_V1: &str = "runbox.decision/v1";
/// The sshsig namespace runbox signatures use (`ssh-keygen -Y sign -n runbox`).
pub const NAMESPACE: &str = "runbox";
/// The largest statement accepted.
pub const MAX_STATEMENT_BYTES: usize = 4096;
/// The longest a statement may stay valid (`--expires`): a day.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far in the future `issued_at_ms` may lie (clock skew between machines).
const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// What a human decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Approve the pending attempt of a high-impact step.
    Approve,
    /// Deny it; the incident escalates to the denying human.
    Deny,
    /// Take the incident from the agent.
    Takeover,
    /// Hand it back to the agent.
    Handback,
    /// State the outcome of an in-doubt or escalated step.
    Resolve,
    /// Ask for a fresh attempt of it.
    Retry,
    /// Skip it.
    Skip,
    /// Create or replace the mutation token.
    RotateToken,
    /// Release an engaged brake; the incidents it held run again.
    ReleaseBrake,
    /// Change the fleet's configuration in a shared store (its humans, its
    /// limits): one change of the fleet timeline.
    Configure,
}

impl Action {
    /// The action as written in statements and messages (`rotate-token`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Deny => "deny",
            Action::Takeover => "takeover",
            Action::Handback => "handback",
            Action::Resolve => "resolve",
            Action::Retry => "retry",
            Action::Skip => "skip",
            Action::RotateToken => "rotate-token",
            Action::ReleaseBrake => "release-brake",
            Action::Configure => "configure",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of an incident a decision is made on: what a human saw when
/// deciding, and all that a later event must leave as it was for the
/// decision to still count. Notes, alerts and other commentary are not part
/// of it, so they never void a pending decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stance {
    /// The incident's status.
    pub status: runbox_core::records::Status,
    /// Who owns it.
    pub owner: runbox_core::records::Owner,
}

impl std::fmt::Display for Stance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}, owner {}", self.status, self.owner)
    }
}

/// A decision statement. Fields that do not apply to an action are absent;
/// the engine fills the binding (attempt, module, subject) from the
/// incident's state, and checks it again when the decision is given and
/// before an approved step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// [`STATEMENT_SCHEMA`] ([`STATEMENT_SCHEMA_V1`] in old records).
    pub schema: String,
    /// The deployment the decision is for: the identity of its store
    /// (128 random bits made with the store). Required from v2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// What is decided.
    pub action: Action,
    /// The human deciding (a name in allowed_signers).
    pub signer: String,
    /// The incident (absent for `rotate-token` and `release-brake`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt decided, and only that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// sha256 of the step's module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_sha256: Option<String>,
    /// sha256 of the step's resolved input, grants and tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_sha256: Option<String>,
    /// The brake scope released (`release-brake`), or the configuration
    /// changed (`configure`: `signers`, `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// What a `configure` change does, in words the engine made from the
    /// change itself (`verify` makes them again and compares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The outcome stated (`resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// v1 only: the incident's checkpoint version the decision was made on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// v2: the incident's decision-relevant state the decision was made on
    /// (absent for `rotate-token` and `release-brake`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Stance>,
    /// When it was made (ms since the epoch).
    pub issued_at_ms: u64,
    /// When it stops counting.
    pub expires_at_ms: u64,
    /// 128 random bits in hex: a statement is used once.
    pub nonce: String,
}

impl Statement {
    /// A fresh statement by `signer` for the deployment `audience`, valid
    /// for `ttl` (at most [`MAX_TTL`]).
    pub fn new(
        action: Action,
        signer: &str,
        ttl: Duration,
        audience: &str,
    ) -> Result<Self, TrustError> {
        Name::new(signer).map_err(|e| TrustError::Statement(e.to_string()))?;
        check_audience(audience).map_err(TrustError::Statement)?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(TrustError::Statement(format!(
                "expiry {}s is outside 1s..={}s",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| TrustError::Sign(format!("no randomness: {e}")))?;
        let now = now_ms();
        Ok(Statement {
            schema: STATEMENT_SCHEMA.to_string(),
            audience: Some(audience.to_string()),
            action,
            signer: signer.to_string(),
            incident: None,
            step: None,
            attempt: None,
            module_sha256: None,
            subject_sha256: None,
            scope: None,
            change: None,
            outcome: None,
            version: None,
            state: None,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
            nonce: hex::encode(nonce),
        })
    }

    /// The exact text to sign: one line of JSON and a newline.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a statement always serializes") + "\n"
    }

    /// Parses and checks a statement's form (not its signature, not its binding).
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let bad = |m: String| TrustError::Statement(m);
        if text.len() > MAX_STATEMENT_BYTES {
            return Err(bad(format!(
                "{} bytes, more than {MAX_STATEMENT_BYTES}",
                text.len()
            )));
        }
        let s: Statement = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        s.check_schema().map_err(bad)?;
        IdentKind::Name
            .check(&s.signer)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(incident) = &s.incident {
            IdentKind::Incident
                .check(incident)
                .map_err(|e| bad(e.to_string()))?;
        }
        if let Some(step) = &s.step {
            IdentKind::Step
                .check(step)
                .map_err(|e| bad(e.to_string()))?;
        }
        let hex_of = |v: &Option<String>, len: usize| {
            v.as_ref()
                .is_none_or(|h| h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if s.scope.as_ref().is_some_and(|scope| scope.len() > 512) {
            return Err(bad("scope is longer than 512 bytes".into()));
        }
        if s.change
            .as_ref()
            .is_some_and(|c| c.chars().count() > runbox_core::fleet_config::MAX_SUMMARY_CHARS)
        {
            return Err(bad(format!(
                "change is longer than {} characters",
                runbox_core::fleet_config::MAX_SUMMARY_CHARS
            )));
        }
        if !hex_of(&Some(s.nonce.clone()), 32)
            || !hex_of(&s.module_sha256, 64)
            || !hex_of(&s.subject_sha256, 64)
        {
            return Err(bad("nonce or digest is not hex of the right length".into()));
        }
        let ttl = s.expires_at_ms.saturating_sub(s.issued_at_ms);
        if ttl == 0 || ttl > MAX_TTL.as_millis() as u64 {
            return Err(bad(format!(
                "valid for {ttl} ms; a statement is valid for 1 ms..={} s",
                MAX_TTL.as_secs()
            )));
        }
        Ok(s)
    }

    /// Whether this is a statement of before deployments were bound.
    pub fn is_v1(&self) -> bool {
        self.schema == STATEMENT_SCHEMA_V1
    }

    /// The fields each schema has, and only those: v1 has no audience and
    /// no state; v2 has an audience and no checkpoint version.
    fn check_schema(&self) -> Result<(), String> {
        match self.schema.as_str() {
            STATEMENT_SCHEMA_V1 if self.audience.is_some() || self.state.is_some() => Err(format!(
                "a `{STATEMENT_SCHEMA_V1}` statement has no audience or state"
            )),
            STATEMENT_SCHEMA_V1 => Ok(()),
            STATEMENT_SCHEMA if self.version.is_some() => Err(format!(
                "a `{STATEMENT_SCHEMA}` statement binds the incident's state, not a version"
            )),
            STATEMENT_SCHEMA => check_audience(self.audience.as_deref().unwrap_or_default()),
            other => Err(format!("schema `{other}`, expected `{STATEMENT_SCHEMA}`")),
        }
    }

    /// Refuses a statement made for another deployment than `deployment`,
    /// naming both, and a v1 statement, which names none.
    pub fn check_audience(&self, deployment: &str) -> Result<(), String> {
        match self.audience.as_deref() {
            Some(a) if a == deployment => Ok(()),
            Some(a) => Err(format!(
                "the statement is for deployment {a}, but this is deployment {deployment}: a decision counts only where it was made"
            )),
            None => Err(format!(
                "a `{}` statement names no deployment: sign a fresh `{STATEMENT_SCHEMA}` one",
                self.schema
            )),
        }
    }

    /// Whether the statement counts at `now_ms`: issued (within clock skew)
    /// and not expired.
    pub fn check_time(&self, now_ms: u64) -> Result<(), String> {
        if self.issued_at_ms > now_ms.saturating_add(MAX_SKEW_MS) {
            return Err(format!(
                "issued {} s in the future: check the signing machine's clock",
                (self.issued_at_ms - now_ms) / 1000
            ));
        }
        if now_ms >= self.expires_at_ms {
            return Err(format!(
                "expired {} s ago (at {} ms): sign a fresh one",
                (now_ms - self.expires_at_ms) / 1000,
                self.expires_at_ms
            ));
        }
        Ok(())
    }
}

/// A deployment identity: 32 lowercase hex digits (128 random bits).
fn check_audience(audience: &str) -> Result<(), String> {
    if audience.len() == 32
        && audience
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "audience {audience:?} is not a deployment identity (32 lowercase hex digits)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_round_trips_and_refuses_what_it_should() {
        let mut s = Statement::new(Action::Approve, "alice", Duration::from_secs(60), DEP).unwrap();
        s.incident = Some("INC-7".into());
        s.step = Some("restart".into());
        s.attempt = Some(1);
        assert_eq!(Statement::parse(&s.to_text()).unwrap(), s);
        assert!(s.to_text().ends_with("}\n") && s.to_text().lines().count() == 1);
        let forged = s.to_text().replace("\"alice\"", "\"human:bob\\nx\"");
        assert!(Statement::parse(&forged).is_err());
        let extra = s.to_text().replace("{", "{\"admin\":true,");
        assert!(
            Statement::parse(&extra).is_err(),
            "unknown fields are refused"
        );
        assert!(Statement::new(Action::Approve, "alice", MAX_TTL * 2, DEP).is_err());
        assert!(Statement::new(Action::Approve, "alice", MAX_TTL, "prod").is_err());
        assert!(s.check_time(s.issued_at_ms).is_ok());
        assert!(
            s.check_time(s.expires_at_ms)
                .unwrap_err()
                .contains("expired")
        );
        assert!(Statement::parse(&"x".repeat(MAX_STATEMENT_BYTES + 1)).is_err());
    }

    const DEP: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn v2_binds_a_deployment_and_v1_still_parses() {
        let s = Statement::new(Action::Takeover, "alice", Duration::from_secs(60), DEP).unwrap();
        assert!(s.check_audience(DEP).is_ok());
        let other = "fedcba9876543210fedcba9876543210";
        let err = s.check_audience(other).unwrap_err();
        assert!(err.contains(DEP) && err.contains(other), "{err}");
        // A v2 statement without its audience, or with a v1 version, is refused.
        let mut bare = s.clone();
        bare.audience = None;
        assert!(Statement::parse(&bare.to_text()).is_err());
        let mut versioned = s.clone();
        versioned.version = Some(3);
        assert!(Statement::parse(&versioned.to_text()).is_err());
        // A v1 statement as release 0.2 stored it parses, and names no deployment.
        let mut v1 = s.clone();
        v1.schema = STATEMENT_SCHEMA_V1.into();
        v1.audience = None;
        v1.version = Some(3);
        let v1 = Statement::parse(&v1.to_text()).unwrap();
        assert!(v1.is_v1());
        assert!(
            v1.check_audience(DEP)
                .unwrap_err()
                .contains("names no deployment")
        );
    }
}
