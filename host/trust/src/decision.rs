//! A signed decision, how it is made, and what verifying it yields.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{NAMESPACE, Statement, TrustError};

/// A statement and its SSH signature, as handed in and as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Decision {
    /// The statement's exact text.
    pub statement: String,
    /// The armored SSH signature (`-----BEGIN SSH SIGNATURE-----`).
    pub signature: String,
}

impl From<&runbox_core::records::Signed> for Decision {
    /// A decision as stored with its event or record, to verify again.
    fn from(signed: &runbox_core::records::Signed) -> Self {
        Decision {
            statement: signed.statement.clone(),
            signature: signed.signature.clone(),
        }
    }
}

/// A decision whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The statement.
    pub statement: Statement,
    /// The signing key's `SHA256:…` fingerprint.
    pub fingerprint: String,
}

/// Signs `statement` with `ssh-keygen -Y sign -n runbox -f KEY`, as git
/// signs commits: `key` is a private key file, or the public key of a key
/// held by ssh-agent (or a FIDO key that asks for a touch).
pub fn sign_with_ssh_keygen(key: &Path, statement: &str) -> Result<String, TrustError> {
    let dir = tempfile::tempdir().map_err(|e| TrustError::Sign(e.to_string()))?;
    let file = dir.path().join("statement");
    std::fs::write(&file, statement).map_err(|e| TrustError::Sign(e.to_string()))?;
    let out = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(key)
        .arg(&file)
        .stdin(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            TrustError::Sign(format!(
                "cannot run ssh-keygen (Debian: openssh-client): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(TrustError::Sign(format!(
            "ssh-keygen -Y sign -f {} failed: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::read_to_string(file.with_extension("sig")).map_err(|e| TrustError::Sign(e.to_string()))
}

/// Signs `statement` with a private key in process: for tests and tools that
/// hold a key themselves. People sign with [`sign_with_ssh_keygen`].
pub fn sign_with_key(key: &ssh_key::PrivateKey, statement: &str) -> Result<Decision, TrustError> {
    let sig = key
        .sign(NAMESPACE, ssh_key::HashAlg::Sha512, statement.as_bytes())
        .map_err(|e| TrustError::Sign(e.to_string()))?;
    let signature = sig
        .to_pem(ssh_key::LineEnding::LF)
        .map_err(|e| TrustError::Sign(e.to_string()))?;
    Ok(Decision {
        statement: statement.to_string(),
        signature,
    })
}
