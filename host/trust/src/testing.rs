//! Humans with in-memory keys, for tests: each is registered in an
//! allowed_signers file on first use and signs statements in process.
//! Behind the `testing` feature; people sign with `ssh-keygen`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
