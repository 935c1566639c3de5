//! The mutation token: created once, stored only as its sha256, compared
//! in constant time. It authorizes mutating tools and nothing else: it can
//! never stand in for a human decision, and replacing it needs the current
//! token or a human's signed `rotate-token` statement.

use sha2::{Digest, Sha256};

use runbox_store::{MetaSwap, StoreError};
use runbox_trust::{Action, Decision};

use crate::fleet::Fleet;
use crate::{Engine, EngineError, Result};

/// Where the token's hash lives in the meta plane.
const TOKEN_KEY: &str = "mutation_token_sha256";

/// What authorizes creating or replacing the token.
#[derive(Debug, Clone, Copy)]
pub enum TokenAuth<'a> {
    /// Nothing: enough only to create the first token while no human is
    /// registered (the bootstrap of a fresh data dir).
    None,
    /// The current token.
    Current(&'a str),
    /// A human's signed `rotate-token` statement.
    Human(&'a Decision),
}

fn refused(message: impl Into<String>) -> EngineError {
    EngineError::Token(message.into())
}

impl Engine {
    /// Writes the new token's hash if the stored one is still `current`,
    /// spending the statement's nonce in the same conditional write: of two
    /// rotations racing (with one statement, or one current token), one
    /// lands and the other is refused, writing nothing.
    fn replace_token(
        &self,
        current: Option<&[u8]>,
        nonce_key: Option<&str>,
        token: &str,
    ) -> Result<()> {
        let hash = Sha256::digest(token.as_bytes());
        let mut swap = MetaSwap::new().expect(TOKEN_KEY, current);
        if let Some(key) = nonce_key {
            swap = swap.expect(key, None).put(key, b"used");
        }
        match self.store.meta_swap(&swap.put(TOKEN_KEY, &hash)) {
            Err(StoreError::MetaConflict { .. }) => Err(refused(
                "the mutation token was replaced while this rotation was being checked: check `runbox token` and, if needed, rotate again with the new token or a fresh signature",
            )),
            other => Ok(other?),
        }
    }

    /// Checks a human's signed `rotate-token` statement: its key for the
    /// nonce to spend with the new token.
    fn token_decision(&self, decision: &Decision) -> Result<String> {
        let signers = self.incidents.signers()?;
        let v = self.verify_unbound(&signers, decision, Action::RotateToken, refused)?;
        let s = &v.statement;
        if s.subject_sha256.as_deref() != Some(self.fleet().token_subject()?.as_str()) {
            return Err(refused(
                "the statement was made for another token than the current one: sign a fresh one",
            ));
        }
        let nonce_key = format!("token_nonce:{}", s.nonce);
        if self.store.meta_get(&nonce_key)?.is_some() {
            return Err(refused(
                "this signed statement was used already: sign a fresh one",
            ));
        }
        Ok(nonce_key)
    }

    /// Whether `token` matches the stored hash.
    pub(crate) fn token_valid(&self, token: &str) -> Result<bool> {
        Ok(hash_matches(
            self.store.meta_get(TOKEN_KEY)?.as_deref(),
            token,
        ))
    }
}

impl Fleet<'_> {
    /// Creates the mutation token: returns it (to print once) and stores only
    /// its sha256. Replacing one needs `rotate` and the current token or a
    /// human's signature; creating the first needs a human's signature once
    /// any human is registered.
    pub fn init_token(&self, rotate: bool, auth: TokenAuth<'_>) -> Result<String> {
        // A human's statement is checked (and refused if it is not exactly
        // this) before anything else, so a refusal never leaves a valid,
        // unspent statement for someone else to hand in later.
        let nonce_key = match auth {
            TokenAuth::Human(decision) => Some(self.engine.token_decision(decision)?),
            _ => None,
        };
        let current = self.engine.store.meta_get(TOKEN_KEY)?;
        let exists = current.is_some();
        if exists && !rotate {
            return Err(refused(
                "a mutation token exists already; use `runbox token init --rotate` to replace it",
            ));
        }
        match auth {
            TokenAuth::Current(token) if hash_matches(current.as_deref(), token) => {}
            TokenAuth::Current(_) => {
                return Err(refused(
                    "the token given is not the current mutation token: rotate with the current one, or with a human's signature (`--as NAME --key KEY`)",
                ));
            }
            TokenAuth::Human(_) => {}
            TokenAuth::None if !exists && self.engine.incidents.signers()?.is_empty() => {}
            TokenAuth::None => {
                return Err(refused(if exists {
                    "rotating the mutation token needs the current token (RUNBOX_MUTATION_TOKEN or --token-file) or a human's signature (`--as NAME --key KEY`)"
                } else {
                    "humans are registered: creating the mutation token needs one's signature (`--as NAME --key KEY`)"
                }));
            }
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| refused(format!("no randomness for the token: {e}")))?;
        let token = format!("rbx_{}", hex::encode(raw));
        self.engine
            .replace_token(current.as_deref(), nonce_key.as_deref(), &token)?;
        Ok(token)
    }

    /// What a `rotate-token` statement binds: the token it replaces (its
    /// hash), or `none` — so a statement counts for one rotation only.
    pub fn token_subject(&self) -> Result<String> {
        let current = self.engine.store.meta_get(TOKEN_KEY)?;
        let bytes = current.as_deref().unwrap_or(b"none");
        Ok(hex::encode(Sha256::digest(bytes)))
    }
}

/// Whether `token` hashes to `stored` (constant-time comparison; no stored
/// hash matches nothing).
fn hash_matches(stored: Option<&[u8]>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(stored) = stored else {
        return false;
    };
    let presented = Sha256::digest(token.trim().as_bytes());
    presented.as_slice().ct_eq(stored).into()
}
