//! Humans with in-memory keys, for tests: each is registered in an
//! allowed_signers file on first use and signs statements in process.
//! Behind the `testing` feature; people sign with `ssh-keygen`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use runbox_core::sync::lock;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, PrivateKey};

use crate::{AllowedSigners, Decision, sign_with_key};

/// Test humans sharing one allowed_signers file.
#[derive(Debug)]
pub struct TestHumans {
    path: PathBuf,
    keys: Mutex<HashMap<String, PrivateKey>>,
}

impl TestHumans {
    /// Humans listed in the allowed_signers file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TestHumans {
            path: path.into(),
            keys: Mutex::default(),
        }
    }

    /// The allowed_signers file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s key, generated and registered on first use.
    pub fn key(&self, name: &str) -> PrivateKey {
        let mut keys = lock(&self.keys);
        keys.entry(name.to_string())
            .or_insert_with(|| {
                let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("a key");
                let public = key.public_key().to_openssh().expect("an OpenSSH key");
                AllowedSigners::add(&self.path, name, &public).expect("registered");
                key
            })
            .clone()
    }

    /// `statement` signed by `name`.
    pub fn sign(&self, name: &str, statement: &str) -> Decision {
        sign_with_key(&self.key(name), statement).expect("signed")
    }
}

/// A software passkey (webauthn-authenticator-rs's `SoftPasskey`) enrolled
/// for one human, signing statements in process as a browser would.
#[cfg(any(test, feature = "soft-passkey"))]
pub struct TestPasskey {
    authr: webauthn_authenticator_rs::softpasskey::SoftPasskey,
    /// The passkey as the console would register it.
    pub entry: crate::PasskeyEntry,
}

#[cfg(any(test, feature = "soft-passkey"))]
impl TestPasskey {
    /// A passkey for `name`, labelled `label`, made at the console at
    /// `origin` (`http://localhost:8080`).
    pub fn enroll(name: &str, label: &str, origin: &str) -> Self {
        use webauthn_authenticator_rs::WebauthnAuthenticator;
        let rp = crate::RelyingParty::new(origin).expect("a relying party");
        let mut authr = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
        let user_id = webauthn_rs::prelude::Uuid::new_v4();
        let reg = rp
            .start_registration(name, user_id, &[])
            .expect("registration");
        let mut options: webauthn_rs::prelude::CreationChallengeResponse =
            serde_json::from_value(reg.options.clone()).expect("creation options");
        // The software authenticator makes no resident keys; browsers do.
        if let Some(sel) = options.public_key.authenticator_selection.as_mut() {
            sel.resident_key = Some(webauthn_rs_core::proto::ResidentKeyRequirement::Discouraged);
            sel.require_resident_key = false;
        }
        let answer = authr
            .do_registration(rp.origin().clone(), options)
            .expect("registered");
        let passkey = rp
            .finish_registration(&serde_json::to_string(&answer).expect("JSON"), &reg.state)
            .expect("a passkey");
        let entry = crate::PasskeyEntry {
            name: name.into(),
            label: label.into(),
            user_id,
            rp_id: rp.rp_id().into(),
            origin: rp.origin().clone(),
            added_ms: runbox_core::time::now_ms(),
            passkey,
        };
        TestPasskey { authr, entry }
    }

    /// `statement` signed with this passkey: an assertion over its digest.
    pub fn sign(&mut self, statement: &str) -> Decision {
        let challenge = crate::passkey::statement_challenge(statement);
        let origin = self.entry.origin.clone();
        Decision {
            statement: statement.to_string(),
            signature: self.assert_over(&challenge, &origin),
        }
    }

    /// This passkey's assertion (JSON) over `challenge`, made at a page of
    /// `origin`.
    pub fn assert_over(&mut self, challenge: &[u8], origin: &webauthn_rs::prelude::Url) -> String {
        use webauthn_authenticator_rs::WebauthnAuthenticator;
        let options =
            crate::passkey::assertion_options(challenge, &self.entry.rp_id, &[&self.entry]);
        let options = serde_json::from_value(options).expect("request options");
        let answer = self
            .authr
            .do_authentication(origin.clone(), options)
            .expect("asserted");
        serde_json::to_string(&answer).expect("JSON")
    }
}
