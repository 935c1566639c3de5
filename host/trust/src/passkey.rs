//! Passkeys: a second kind of human key, next to SSH keys.
//!
//! A passkey is a WebAuthn credential a browser makes with a fingerprint,
//! a face or a security key. runbox keeps each human's passkeys in the data
//! dir's `passkeys.json`, beside `allowed_signers`, and a human may hold
//! both kinds. A decision signed with a passkey is a WebAuthn *assertion*
//! whose challenge is the sha256 of the statement's exact text: the
//! authenticator signs `authenticatorData ‖ sha256(clientDataJSON)`, and the
//! client data carries that challenge, the page's origin and the ceremony's
//! type. So an assertion counts for one statement (one incident, step,
//! attempt, deployment and expiry, one nonce) and nothing else, exactly as
//! an SSH signature does.
//!
//! The assertion is kept as the browser sent it (`PublicKeyCredential`
//! JSON) in the decision's `signature`, and [`verify_assertion`] checks it
//! the same way when it is handed in and when `runbox verify` checks it
//! again offline: from the stored credential and the statement alone.
//! Parsing and verifying (CBOR, COSE keys, the signature) is
//! `webauthn-rs`'s; runbox only chooses the challenge.
//!
//! Signature counters are not enforced: synced passkeys and the browsers'
//! virtual authenticators report 0, and a decision is single-use anyway
//! (its statement's nonce is spent when it is carried out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid,
};
use webauthn_rs_core::WebauthnCore;
use webauthn_rs_core::proto::{AuthenticationState, ResidentKeyRequirement};

use runbox_core::ident::IdentKind;

use crate::TrustError;

/// The registry's file name, beside `allowed_signers` in the data dir.
pub const PASSKEYS_FILE: &str = "passkeys.json";
/// The registry file's `schema`.
const SCHEMA: &str = "runbox.passkeys/v1";
/// The largest registry file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The largest assertion accepted: a browser's is about 1 KiB.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// How long a browser's WebAuthn prompt stays open.
pub const CEREMONY_TIMEOUT: Duration = Duration::from_secs(120);
/// The relying party's name browsers show.
const RP_NAME: &str = "runbox";

/// Where the passkeys of the humans listed in `signers` (an
/// allowed_signers file) live.
pub fn passkeys_path(signers: &Path) -> PathBuf {
    signers.with_file_name(PASSKEYS_FILE)
}

/// One passkey of one human.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyEntry {
    /// The human it signs for.
    pub name: String,
    /// What the human called it at enrollment (`laptop`, `yubikey`).
    pub label: String,
    /// The WebAuthn user handle the human's passkeys share.
    pub user_id: Uuid,
    /// The relying party it was made for (the console's host name).
    pub rp_id: String,
    /// The console's origin at enrollment (`http://localhost:8080`).
    pub origin: Url,
    /// When it was enrolled, ms since the epoch.
    pub added_ms: u64,
    /// The credential: its id and public key, as webauthn-rs keeps them.
    pub passkey: Passkey,
}

impl PasskeyEntry {
    /// The credential id, base64url: how an assertion names it.
    pub fn credential_id(&self) -> String {
        B64URL.encode(self.passkey.cred_id().as_slice())
    }

    /// What a decision records as the key that signed it:
    /// `passkey:CREDENTIAL-ID`.
    pub fn fingerprint(&self) -> String {
        format!("passkey:{}", self.credential_id())
    }

    /// The public key's algorithm, as `runbox human list` shows it.
    pub fn algorithm(&self) -> String {
        format!("webauthn-{:?}", self.passkey.get_public_key().type_).to_lowercase()
    }
}

/// The registry file as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    schema: String,
    passkeys: Vec<PasskeyEntry>,
}

/// The passkeys of every human of a data dir.
#[derive(Debug, Clone, Default)]
pub struct Passkeys {
    entries: Vec<PasskeyEntry>,
}

impl Passkeys {
    /// Reads the registry at `path`; a missing file is an empty one.
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = crate::signers::read_capped(path, MAX_FILE_BYTES)?;
        Self::parse(&text, path)
    }

    /// Parses registry text (empty: an empty registry); `origin` names it
    /// in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, TrustError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let file: File = serde_json::from_str(text).map_err(|e| TrustError::SignersLine {
            path: origin.to_path_buf(),
            line: e.line(),
            message: format!("not a passkey registry: {e}"),
        })?;
        if file.schema != SCHEMA {
            return Err(TrustError::SignersLine {
                path: origin.to_path_buf(),
                line: 1,
                message: format!("schema `{}`, expected `{SCHEMA}`", file.schema),
            });
        }
        Ok(Passkeys {
            entries: file.passkeys,
        })
    }

    /// Every passkey, in enrollment order.
    pub fn entries(&self) -> &[PasskeyEntry] {
        &self.entries
    }

    /// The passkeys of `name`.
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a PasskeyEntry> + 'a {
        self.entries.iter().filter(move |e| e.name == name)
    }

    /// The user handle `name`'s passkeys share: theirs if they hold one,
    /// else a fresh one.
    pub fn user_id_of(&self, name: &str) -> Uuid {
        self.of(name)
            .next()
            .map_or_else(Uuid::new_v4, |e| e.user_id)
    }

    /// Adds `entry` to the registry at `path` (created owner-only).
    /// Refused when its credential is listed already.
    pub fn add(path: &Path, entry: PasskeyEntry) -> Result<(), TrustError> {
        let text = crate::signers::read_capped(path, MAX_FILE_BYTES)?;
        crate::signers::write_private(path, &Self::added(&text, path, entry)?)
    }

    /// Registry text (read from `origin`) with `entry` added. Refused when
    /// its credential is listed already, or its names break the rules.
    pub fn added(text: &str, origin: &Path, entry: PasskeyEntry) -> Result<String, TrustError> {
        for name in [&entry.name, &entry.label] {
            IdentKind::Name
                .check(name)
                .map_err(|e| TrustError::Statement(e.to_string()))?;
        }
        let mut current = Self::parse(text, origin)?;
        let id = entry.credential_id();
        if let Some(holder) = current.entries.iter().find(|e| e.credential_id() == id) {
            return Err(TrustError::PublicKey(format!(
                "passkey {id} is listed already, for {}: one key, one human",
                holder.name
            )));
        }
        current.entries.push(entry);
        Ok(current.into_text())
    }

    /// Removes every passkey of `name`; returns how many.
    pub fn remove(path: &Path, name: &str) -> Result<usize, TrustError> {
        let text = crate::signers::read_capped(path, MAX_FILE_BYTES)?;
        let (kept, removed) = Self::removed(&text, path, name)?;
        if removed > 0 {
            crate::signers::write_private(path, &kept)?;
        }
        Ok(removed)
    }

    /// Registry text (read from `origin`) without `name`'s passkeys, and
    /// how many there were.
    pub fn removed(text: &str, origin: &Path, name: &str) -> Result<(String, usize), TrustError> {
        let mut current = Self::parse(text, origin)?;
        let before = current.entries.len();
        current.entries.retain(|e| e.name != name);
        let removed = before - current.entries.len();
        Ok((current.into_text(), removed))
    }

    /// The registry as its file holds it (empty when no passkey is listed).
    fn into_text(self) -> String {
        if self.entries.is_empty() {
            return String::new();
        }
        let file = File {
            schema: SCHEMA.to_string(),
            passkeys: self.entries,
        };
        serde_json::to_string_pretty(&file).expect("passkeys serialize") + "\n"
    }
}

/// The console as a WebAuthn relying party: its origin, and the host name
/// (the RP ID) passkeys are made for.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    origin: Url,
    rp_id: String,
}

/// A registration begun: what the browser is asked, and what the server
/// keeps until it answers.
#[derive(Debug)]
pub struct Registration {
    /// `navigator.credentials.create`'s options, as JSON.
    pub options: serde_json::Value,
    /// Kept by the server for [`RelyingParty::finish_registration`].
    pub state: PasskeyRegistration,
}

impl RelyingParty {
    /// The relying party of a console reached at `origin`
    /// (`http://localhost:8080`, `https://runbox.example.com`). Browsers
    /// take no IP address as an RP ID: open the console as `localhost`.
    pub fn new(origin: &str) -> Result<Self, TrustError> {
        let bad = |why: &dyn std::fmt::Display| {
            TrustError::Passkey(format!("console origin {origin:?}: {why}"))
        };
        let origin = Url::parse(origin).map_err(|e| bad(&e))?;
        let rp_id = match origin.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(_) => {
                return Err(bad(
                    &"an IP address cannot hold passkeys; use a host name (`localhost`)",
                ));
            }
            None => return Err(bad(&"no host")),
        };
        if !matches!(origin.scheme(), "https" | "http") {
            return Err(bad(&"not http(s)"));
        }
        if origin.scheme() == "http" && rp_id != "localhost" {
            return Err(bad(
                &"browsers make passkeys over https only (or on http://localhost)",
            ));
        }
        Ok(RelyingParty { origin, rp_id })
    }

    /// The origin.
    pub fn origin(&self) -> &Url {
        &self.origin
    }

    /// The RP ID.
    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    fn webauthn(&self) -> Result<webauthn_rs::Webauthn, TrustError> {
        webauthn_rs::WebauthnBuilder::new(&self.rp_id, &self.origin)
            .and_then(|b| {
                b.rp_name(RP_NAME)
                    .allow_any_port(self.rp_id == "localhost")
                    .timeout(CEREMONY_TIMEOUT)
                    .build()
            })
            .map_err(|e| TrustError::Passkey(format!("relying party {}: {e}", self.origin)))
    }

    /// Begins enrolling a passkey for `name` (user handle `user_id`): a
    /// discoverable credential (so the console's login needs no user name)
    /// with user verification required, and none of `existing` again.
    pub fn start_registration(
        &self,
        name: &str,
        user_id: Uuid,
        existing: &[&PasskeyEntry],
    ) -> Result<Registration, TrustError> {
        let exclude = existing
            .iter()
            .map(|e| e.passkey.cred_id().clone())
            .collect();
        let (mut ccr, state): (CreationChallengeResponse, _) = self
            .webauthn()?
            .start_passkey_registration(user_id, name, name, Some(exclude))
            .map_err(|e| TrustError::Passkey(e.to_string()))?;
        if let Some(sel) = ccr.public_key.authenticator_selection.as_mut() {
            sel.resident_key = Some(ResidentKeyRequirement::Required);
            sel.require_resident_key = true;
        }
        let options = serde_json::to_value(&ccr).expect("options serialize");
        Ok(Registration { options, state })
    }

    /// Finishes an enrollment with the browser's answer (JSON).
    pub fn finish_registration(
        &self,
        answer: &str,
        state: &PasskeyRegistration,
    ) -> Result<Passkey, TrustError> {
        if answer.len() > MAX_ASSERTION_BYTES * 4 {
            return Err(TrustError::Passkey("the registration is too large".into()));
        }
        let reg: RegisterPublicKeyCredential = serde_json::from_str(answer)
            .map_err(|e| TrustError::Passkey(format!("not a WebAuthn registration: {e}")))?;
        self.webauthn()?
            .finish_passkey_registration(&reg, state)
            .map_err(|e| TrustError::Passkey(format!("the registration does not verify: {e}")))
    }
}

/// `navigator.credentials.get`'s options for an assertion over
/// `challenge` by one of `allowed` (none: any discoverable passkey of
/// `rp_id`, for a login).
pub fn assertion_options(
    challenge: &[u8],
    rp_id: &str,
    allowed: &[&PasskeyEntry],
) -> serde_json::Value {
    let allow: Vec<serde_json::Value> = allowed
        .iter()
        .map(|e| serde_json::json!({"type": "public-key", "id": e.credential_id()}))
        .collect();
    serde_json::json!({
        "publicKey": {
            "challenge": B64URL.encode(challenge),
            "rpId": rp_id,
            "allowCredentials": allow,
            "userVerification": "required",
            "timeout": CEREMONY_TIMEOUT.as_millis(),
        }
    })
}

/// The challenge a passkey signs for `statement`: its text's sha256.
pub fn statement_challenge(statement: &str) -> [u8; 32] {
    Sha256::digest(statement.as_bytes()).into()
}

/// The credential id an assertion names (base64url), without checking it.
pub fn assertion_credential(assertion: &str) -> Result<String, TrustError> {
    Ok(B64URL.encode(parse_assertion(assertion)?.raw_id.as_slice()))
}

fn parse_assertion(assertion: &str) -> Result<PublicKeyCredential, TrustError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(TrustError::Passkey(format!(
            "the assertion is over {MAX_ASSERTION_BYTES} bytes"
        )));
    }
    serde_json::from_str(assertion)
        .map_err(|e| TrustError::Passkey(format!("not a WebAuthn assertion: {e}")))
}

/// Verifies `assertion` (a browser's `PublicKeyCredential` JSON) over
/// `challenge` by one of `candidates`: the credential it names must be one
/// of them, the client data must be a `webauthn.get` over `challenge` from
/// the credential's origin, the authenticator data must be for its RP ID
/// with the user verified, and the signature must verify with its public
/// key. Returns the credential that signed.
pub fn verify_assertion<'a>(
    candidates: &[&'a PasskeyEntry],
    challenge: &[u8],
    assertion: &str,
) -> Result<&'a PasskeyEntry, TrustError> {
    let rsp = parse_assertion(assertion)?;
    let id = B64URL.encode(rsp.raw_id.as_slice());
    let entry = candidates
        .iter()
        .find(|e| e.credential_id() == id)
        .ok_or_else(|| TrustError::Passkey(format!("passkey {id} is not registered")))?;
    // A `Passkey` serializes as `{"cred": Credential}`.
    let mut cred = serde_json::to_value(&entry.passkey)
        .map_err(|e| TrustError::Passkey(e.to_string()))?["cred"]
        .take();
    // Counters are not enforced (see the module's docs): the same check
    // then holds offline, long after the counter moved on.
    cred["counter"] = serde_json::json!(0);
    let state: AuthenticationState = serde_json::from_value(serde_json::json!({
        "credentials": [cred],
        "policy": "required",
        "challenge": B64URL.encode(challenge),
        "appid": null,
        "allow_backup_eligible_upgrade": true,
    }))
    .map_err(|e| TrustError::Passkey(format!("webauthn-rs's state changed shape: {e}")))?;
    let core = WebauthnCore::new_unsafe_experts_only(
        RP_NAME,
        &entry.rp_id,
        vec![entry.origin.clone()],
        CEREMONY_TIMEOUT,
        Some(false),
        Some(entry.rp_id == "localhost"),
    );
    let result = core
        .authenticate_credential(&rsp, &state)
        .map_err(|e| TrustError::Passkey(format!("the assertion does not verify: {e}")))?;
    if !result.user_verified() {
        return Err(TrustError::Passkey(
            "the authenticator did not verify the user (PIN or biometrics)".into(),
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPasskey;

    /// A human with a software passkey enrolled at `http://localhost:8080`.
    fn enrolled(name: &str) -> TestPasskey {
        TestPasskey::enroll(name, "test", "http://localhost:8080")
    }

    fn at(origin: &str) -> Url {
        Url::parse(origin).unwrap()
    }

    #[test]
    fn an_assertion_counts_for_its_challenge_credential_and_origin_only() {
        let mut authr = enrolled("alice");
        let alice = authr.entry.clone();
        let bob = enrolled("bob").entry;
        let digest = statement_challenge("{\"statement\":1}");
        let good = authr.assert_over(&digest, &at("http://localhost:8080"));
        let used = verify_assertion(&[&alice], &digest, &good).unwrap();
        assert_eq!(used.name, "alice");
        // Again, offline, as `verify` does: the counter moved on meanwhile.
        let later = authr.assert_over(&digest, &at("http://localhost:9000"));
        verify_assertion(&[&alice], &digest, &later).unwrap();
        verify_assertion(&[&alice], &digest, &good).unwrap();
        // Another statement.
        let other = statement_challenge("{\"statement\":2}");
        let err = verify_assertion(&[&alice], &other, &good).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        // Not among the candidates (bob's passkey only).
        let err = verify_assertion(&[&bob], &digest, &good).unwrap_err();
        assert!(err.to_string().contains("is not registered"), "{err}");
        // Made for another site than the one the credential belongs to
        // (the authenticator scopes it to its RP ID, the browser to the
        // page's origin; the server checks both).
        let mut elsewhere = alice.clone();
        elsewhere.rp_id = "runbox.example.com".into();
        elsewhere.origin = Url::parse("https://runbox.example.com").unwrap();
        assert!(verify_assertion(&[&elsewhere], &digest, &good).is_err());
        // A signature bit flipped.
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let mut sig = B64URL
            .decode(v["response"]["signature"].as_str().unwrap())
            .unwrap();
        let n = sig.len();
        sig[n - 2] ^= 1;
        v["response"]["signature"] = B64URL.encode(sig).into();
        assert!(verify_assertion(&[&alice], &digest, &v.to_string()).is_err());
        // Garbage and giants.
        assert!(verify_assertion(&[&alice], &digest, "{").is_err());
        let giant = "x".repeat(MAX_ASSERTION_BYTES + 1);
        let err = verify_assertion(&[&alice], &digest, &giant).unwrap_err();
        assert!(err.to_string().contains("over"), "{err}");
    }

    #[test]
    fn the_registry_keeps_one_human_per_credential_and_removes_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PASSKEYS_FILE);
        let alice = enrolled("alice").entry;
        let bob = enrolled("bob").entry;
        Passkeys::add(&path, alice.clone()).unwrap();
        Passkeys::add(&path, bob).unwrap();
        let mut again = alice.clone();
        again.name = "mallory".into();
        let err = Passkeys::add(&path, again).unwrap_err().to_string();
        assert!(err.contains("listed already, for alice"), "{err}");
        assert_eq!(Passkeys::read(&path).unwrap().entries().len(), 2);
        assert_eq!(Passkeys::remove(&path, "alice").unwrap(), 1);
        let left = Passkeys::read(&path).unwrap();
        assert_eq!(left.entries().len(), 1);
        assert_eq!(left.entries()[0].name, "bob");
        std::fs::write(
            &path,
            "{\"schema\": \"runbox.passkeys/v1\", \"passkeys\": 7}",
        )
        .unwrap();
        let err = Passkeys::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("passkeys.json:1: not a passkey registry"),
            "{err}"
        );
    }

    #[test]
    fn only_a_host_name_can_be_a_relying_party() {
        assert!(RelyingParty::new("http://localhost:1234").is_ok());
        assert!(RelyingParty::new("https://runbox.example.com").is_ok());
        for bad in [
            "http://127.0.0.1:80",
            "http://runbox.example.com",
            "ftp://localhost",
            "nope",
        ] {
            assert!(RelyingParty::new(bad).is_err(), "{bad}");
        }
    }
}
