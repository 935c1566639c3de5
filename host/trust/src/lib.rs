//! # Human decisions that prove who made them
//!
//! A human decision in runbox (approve, deny, takeover, handback, resolve,
//! retry, skip, rotating the mutation token) is a [`Statement`] signed with
//! that human's SSH key, the way git signs commits: `ssh-keygen -Y sign -n
//! runbox`, so ssh-agent, passphrases and FIDO (`sk-`) keys work unchanged.
//! runbox verifies the signature in process against the data dir's
//! [`AllowedSigners`] file (git's format) before anything is written, and
//! keeps the statement and signature so `runbox verify` can check them again
//! offline. The agent never holds a human's private key; it can at most ask.
//!
//! ```no_run
//! use runbox_trust::{Action, AllowedSigners, Decision, Statement};
//!
//! let signers = AllowedSigners::read("data/allowed_signers".as_ref())?;
//! // The deployment's identity, as `runbox status --json` shows it.
//! let deployment = "0123456789abcdef0123456789abcdef";
//! let statement = Statement::new(Action::Takeover, "alice", std::time::Duration::from_secs(1800), deployment)?;
//! let signature = runbox_trust::sign_with_ssh_keygen("/home/alice/.ssh/id_ed25519".as_ref(), &statement.to_text())?;
//! let decision = Decision { statement: statement.to_text(), signature };
//! let verified = signers.verify(&decision)?;
//! assert_eq!(verified.statement.signer, "alice");
//! # Ok::<(), runbox_trust::TrustError>(())
//! ```

mod decision;
pub mod passkey;
mod signers;
mod statement;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::PathBuf;

pub use decision::{Decision, Verified, sign_with_key, sign_with_ssh_keygen};
pub use passkey::{PasskeyEntry, Passkeys, RelyingParty, passkeys_path};
pub use signers::{AllowedSigners, SignerEntry};
pub use statement::{
    Action, MAX_STATEMENT_BYTES, MAX_TTL, NAMESPACE, STATEMENT_SCHEMA, STATEMENT_SCHEMA_V1, Stance,
    Statement,
};

/// Why a decision or a signer file is refused. Each names what did not match.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The allowed_signers file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the allowed_signers file is not valid.
    #[error("{path}:{line}: {message}")]
    SignersLine {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A public key is not an OpenSSH public key.
    #[error("not an OpenSSH public key: {0}")]
    PublicKey(String),
    /// The statement is not a runbox decision statement.
    #[error("not a runbox decision statement: {0}")]
    Statement(String),
    /// The signature is not an SSH signature.
    #[error("not an SSH signature (`-----BEGIN SSH SIGNATURE-----`): {0}")]
    Signature(String),
    /// Signed for another purpose.
    #[error(
        "the signature is for namespace `{found}`, not `runbox`: sign with `ssh-keygen -Y sign -n runbox`"
    )]
    Namespace {
        /// The namespace signed.
        found: String,
    },
    /// Nobody of that name may decide.
    #[error(
        "`{signer}` is not in allowed_signers: add them with `runbox human add {signer} KEY.pub` (or `--passkey`)"
    )]
    UnknownSigner {
        /// The name in the statement.
        signer: String,
    },
    /// Signed by a key that is not one of the signer's.
    #[error(
        "signed by key {fingerprint}, which is not {signer}'s{listed}: sign with a key listed for {signer} in allowed_signers ({expected})"
    )]
    WrongKey {
        /// The name in the statement.
        signer: String,
        /// The key that signed.
        fingerprint: String,
        /// `, but listed for bob` when another human holds that key.
        listed: String,
        /// The signer's key fingerprints.
        expected: String,
    },
    /// The signature does not match the statement.
    #[error(
        "the signature does not verify for this statement ({0}): it was altered, or signed another text"
    )]
    BadSignature(String),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// A passkey's registration or assertion is not valid, or does not
    /// verify.
    #[error("passkey: {0}")]
    Passkey(String),
}
