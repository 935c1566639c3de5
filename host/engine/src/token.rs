//! The mutation token: created once, stored only as its sha256, compared
//! in constant time.

use sha2::{Digest, Sha256};

use crate::{Engine, EngineError, Result};

/// Where the token's hash lives in the meta plane.
const TOKEN_KEY: &str = "mutation_token_sha256";

impl Engine {
    /// Creates the mutation token: returns it (to print once) and stores only
    /// its sha256. Refuses to replace an existing token unless `rotate`.
    pub fn init_token(&self, rotate: bool) -> Result<String> {
        if self.store.meta_get(TOKEN_KEY)?.is_some() && !rotate {
            return Err(EngineError::Refused {
                id: "-".into(),
                message: "a mutation token exists already; use `runbox token init --rotate` to replace it".into(),
            });
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| EngineError::Refused {
            id: "-".into(),
            message: format!("no randomness for the token: {e}"),
        })?;
        let token = format!("rbx_{}", hex::encode(raw));
        let hash = Sha256::digest(token.as_bytes());
        self.store.put_meta(TOKEN_KEY, &hash)?;
        Ok(token)
    }

    /// Whether `token` matches the stored hash (constant-time comparison).
    pub(crate) fn token_valid(&self, token: &str) -> Result<bool> {
        use subtle::ConstantTimeEq;
        let Some(stored) = self.store.meta_get(TOKEN_KEY)? else {
            return Ok(false);
        };
        let presented = Sha256::digest(token.trim().as_bytes());
        Ok(presented.as_slice().ct_eq(&stored).into())
    }
}
