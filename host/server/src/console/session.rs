//! What the console keeps in memory: signed-in sessions, one-time
//! enrollment links, and the challenges of ceremonies under way. None of
//! it is authority over an incident: a session reads and engages brakes,
//! and every decision is a fresh passkey assertion over its own statement.
//! A restart signs everyone out and voids open links, which is the safe
//! side.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use runbox_core::ident::Name;
use runbox_trust::RelyingParty;
use webauthn_rs::prelude::PasskeyRegistration;

use crate::error::{ErrorCode, ServiceError};
use runbox_core::sync::lock;

/// How long a session lasts after sign-in, whatever its use: 12 hours
/// (an on-call shift). Then the human signs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long an enrollment link stays valid: 15 minutes, used once.
pub const ENROLLMENT_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a sign-in challenge waits for its assertion.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(180);
/// The most sessions, links or pending challenges kept at once; past it
/// the oldest expire first and new ones are refused while none has.
pub const MAX_PENDING: usize = 1024;

/// A human signed in.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub human: Name,
    /// The token every state-changing request carries (`X-CSRF-Token` or
    /// the form's `csrf` field).
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

/// An enrollment link, until it is used or expires.
#[derive(Debug)]
pub(crate) struct Enrollment {
    pub(crate) human: Name,
    pub(crate) label: String,
    pub(crate) expires: Instant,
    /// The registration begun with it, and the user handle it gave the
    /// authenticator (the link is spent when it ends).
    pub(crate) registration: Option<(PasskeyRegistration, webauthn_rs::prelude::Uuid)>,
}

/// The console's state.
#[derive(Default)]
pub struct Console {
    party: OnceLock<RelyingParty>,
    sessions: Mutex<HashMap<String, Session>>,
    enrollments: Mutex<HashMap<String, Enrollment>>,
    /// Sign-in challenges (hex) and when they expire.
    logins: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("origin", &self.party.get().map(RelyingParty::origin))
            .finish_non_exhaustive()
    }
}

/// A fresh 256-bit secret, hex.
pub(crate) fn secret() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::new(ErrorCode::Unavailable, format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Drops what expired, then refuses when `map` is still full.
fn make_room<T>(
    map: &mut HashMap<String, T>,
    expires: impl Fn(&T) -> Instant,
    what: &str,
) -> Result<(), ServiceError> {
    let now = Instant::now();
    map.retain(|_, v| expires(v) > now);
    if map.len() >= MAX_PENDING {
        return Err(ServiceError::new(
            ErrorCode::Unavailable,
            format!("{MAX_PENDING} {what} are open already; try again in a few minutes"),
        ));
    }
    Ok(())
}

impl Console {
    /// Sets where browsers reach the console (once, when `serve` binds).
    pub fn set_party(&self, party: RelyingParty) {
        let _ = self.party.set(party);
    }

    /// The console's relying party, or why passkeys cannot work here.
    pub fn party(&self) -> Result<&RelyingParty, ServiceError> {
        self.party.get().ok_or_else(|| {
            ServiceError::new(
                ErrorCode::Unavailable,
                "the web console is served by `runbox serve` on a host name (`localhost`, or --console-origin)",
            )
        })
    }

    /// Opens a session for `human`; returns its id (the cookie's value).
    pub(crate) fn sign_in(&self, human: Name) -> Result<(String, Session), ServiceError> {
        let mut sessions = lock(&self.sessions);
        make_room(&mut sessions, |s| s.expires, "sessions")?;
        let session = Session {
            human,
            csrf: secret()?,
            expires: Instant::now() + SESSION_TTL,
        };
        let id = secret()?;
        sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session `id` names, if any.
    pub(crate) fn session(&self, id: &str) -> Option<Session> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub(crate) fn sign_out(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// Ends every session of `human` (their keys were removed).
    pub(crate) fn sign_out_human(&self, human: &str) {
        lock(&self.sessions).retain(|_, s| s.human.as_str() != human);
    }

    /// A one-time enrollment link's secret for `human`'s new passkey.
    pub(crate) fn enroll(&self, human: Name, label: String) -> Result<String, ServiceError> {
        let token = secret()?;
        self.hold_enrollment(&token, human, label, ENROLLMENT_TTL)?;
        Ok(token)
    }

    /// Whether `token` names an enrollment this console holds.
    pub(crate) fn knows_enrollment(&self, token: &str) -> bool {
        lock(&self.enrollments).contains_key(token)
    }

    /// Holds the enrollment `token` names for `ttl`: one made here, or
    /// elsewhere (a shared store's link).
    pub(crate) fn hold_enrollment(
        &self,
        token: &str,
        human: Name,
        label: String,
        ttl: Duration,
    ) -> Result<(), ServiceError> {
        let mut links = lock(&self.enrollments);
        make_room(&mut links, |e| e.expires, "enrollment links")?;
        links.insert(
            token.to_string(),
            Enrollment {
                human,
                label,
                expires: Instant::now() + ttl,
                registration: None,
            },
        );
        Ok(())
    }

    /// Runs `f` on the live enrollment `token` names.
    pub(crate) fn with_enrollment<T>(
        &self,
        token: &str,
        f: impl FnOnce(&mut Enrollment) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut links = lock(&self.enrollments);
        match links.get_mut(token) {
            Some(e) if e.expires > Instant::now() => f(e),
            _ => Err(ServiceError::forbidden(
                "this enrollment link is unknown, used or expired: ask for a new one (`runbox human add NAME --passkey`)",
            )),
        }
    }

    /// Spends enrollment `token`: it never works again.
    pub(crate) fn spend_enrollment(&self, token: &str) -> Option<Enrollment> {
        lock(&self.enrollments).remove(token)
    }

    /// A fresh sign-in challenge (32 random bytes).
    pub(crate) fn login_challenge(&self) -> Result<Vec<u8>, ServiceError> {
        let mut logins = lock(&self.logins);
        make_room(&mut logins, |t| *t, "sign-ins")?;
        let mut challenge = vec![0u8; 32];
        getrandom::fill(&mut challenge).map_err(|e| {
            ServiceError::new(ErrorCode::Unavailable, format!("no randomness: {e}"))
        })?;
        logins.insert(hex::encode(&challenge), Instant::now() + CHALLENGE_TTL);
        Ok(challenge)
    }

    /// Spends a sign-in challenge: true if it was issued here, is live and
    /// was not used.
    pub(crate) fn spend_login(&self, challenge: &[u8]) -> bool {
        lock(&self.logins)
            .remove(&hex::encode(challenge))
            .is_some_and(|t| t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Name {
        Name::new("alice").unwrap()
    }

    #[test]
    fn each_kind_is_capped_at_max_pending_and_expired_ones_make_room() {
        let console = Console::default();
        for _ in 0..MAX_PENDING {
            console.enroll(alice(), "k".into()).unwrap();
        }
        let err = console.enroll(alice(), "k".into()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
        // Once one expires, there is room again.
        let past = Instant::now() - Duration::from_secs(1);
        lock(&console.enrollments)
            .values_mut()
            .next()
            .unwrap()
            .expires = past;
        console.enroll(alice(), "k".into()).unwrap();
    }

    #[test]
    fn expired_sessions_and_links_count_for_nothing_and_challenges_count_once() {
        let console = Console::default();
        let (id, _) = console.sign_in(alice()).unwrap();
        assert!(console.session(&id).is_some());
        let past = Instant::now() - Duration::from_secs(1);
        lock(&console.sessions).get_mut(&id).unwrap().expires = past;
        assert!(console.session(&id).is_none(), "an expired session");
        let token = console.enroll(alice(), "k".into()).unwrap();
        lock(&console.enrollments).get_mut(&token).unwrap().expires = past;
        assert!(
            console.with_enrollment(&token, |_| Ok(())).is_err(),
            "an expired link"
        );
        let challenge = console.login_challenge().unwrap();
        assert!(console.spend_login(&challenge));
        assert!(!console.spend_login(&challenge), "a challenge used twice");
        assert!(!console.spend_login(&[0; 32]), "a challenge never issued");
    }
}
