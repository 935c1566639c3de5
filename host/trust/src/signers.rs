//! The data dir's `allowed_signers` file, in the format git and
//! `ssh-keygen -Y verify` read: one key per line,
//! `NAME[,NAME…] [namespaces="runbox"] KEYTYPE BASE64 [COMMENT]`.
//!
//! runbox reads the subset that names humans exactly: principal patterns,
//! `cert-authority` and validity windows are refused with the line number
//! rather than half understood.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, PublicKey, SshSig};

use runbox_core::ident::IdentKind;

use crate::passkey::{PasskeyEntry, Passkeys};
use crate::{Decision, NAMESPACE, Statement, TrustError, Verified};

/// One key of one or more humans.
#[derive(Debug, Clone)]
pub struct SignerEntry {
    /// The names this key may sign for.
    pub names: Vec<String>,
    /// The key.
    pub key: PublicKey,
    /// The key's `SHA256:…` fingerprint.
    pub fingerprint: String,
}

/// The humans who may decide, and their keys.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    entries: Vec<SignerEntry>,
    passkeys: Passkeys,
}

/// The largest allowed_signers file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl AllowedSigners {
    /// Reads the file at `path`; a missing file is an empty list. (Its
    /// passkeys are read with [`AllowedSigners::with_passkeys`].)
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = read_capped(path, MAX_FILE_BYTES)?;
        Self::parse(&text, path)
    }

    /// The SSH keys of the file at `signers` and the passkeys beside it
    /// ([`crate::passkeys_path`]): every human who may decide.
    pub fn read_with_passkeys(signers: &Path) -> Result<Self, TrustError> {
        let passkeys = Passkeys::read(&crate::passkeys_path(signers))?;
        Ok(Self::read(signers)?.with_passkeys(passkeys))
    }

    /// These SSH keys and `passkeys`.
    pub fn with_passkeys(mut self, passkeys: Passkeys) -> Self {
        self.passkeys = passkeys;
        self
    }

    /// The passkeys.
    pub fn passkeys(&self) -> &Passkeys {
        &self.passkeys
    }

    /// What people call the key a decision records (its `fingerprint`): a
    /// passkey's label (`passkey laptop`); none for an SSH key, whose
    /// fingerprint is how people know it, or a key no longer listed.
    pub fn key_label(&self, fingerprint: &str) -> Option<String> {
        self.passkeys
            .entries()
            .iter()
            .find(|e| e.fingerprint() == fingerprint)
            .map(|e| format!("passkey {}", e.label))
    }

    /// Parses allowed_signers text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, TrustError> {
        let mut entries: Vec<SignerEntry> = Vec::new();
        // One key, one human: a key listed twice (or a line naming two
        // humans) would let one key count as two approvers.
        let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| TrustError::SignersLine {
                path: origin.to_path_buf(),
                line: i + 1,
                message,
            };
            let Some(entry) = parse_line(line).map_err(bad)? else {
                continue;
            };
            if entry.names.len() > 1 {
                return Err(bad(format!(
                    "one human per line: list {} on lines of their own, each with their own key",
                    entry.names.join(", ")
                )));
            }
            if let Some(first) = seen.insert(entry.fingerprint.clone(), i + 1) {
                return Err(bad(format!(
                    "key {} is listed already on line {first}: one key, one human",
                    entry.fingerprint
                )));
            }
            entries.push(entry);
        }
        Ok(AllowedSigners {
            entries,
            passkeys: Passkeys::default(),
        })
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[SignerEntry] {
        &self.entries
    }

    /// Whether nobody is listed, with either kind of key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.passkeys.entries().is_empty()
    }

    /// The keys listed for `name`.
    pub fn keys_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SignerEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.names.iter().any(|n| n == name))
    }

    /// Verifies a signed decision: its statement's form, the signature's
    /// namespace, that the key is one of the signer's, and the signature.
    /// What the statement binds (incident, step, attempt, expiry) is the
    /// engine's to check against the incident.
    pub fn verify(&self, decision: &Decision) -> Result<Verified, TrustError> {
        let statement = Statement::parse(&decision.statement)?;
        if is_assertion(&decision.signature) {
            return self.verify_passkey(decision, statement);
        }
        if decision.signature.len() > crate::MAX_STATEMENT_BYTES * 4 {
            return Err(TrustError::Signature("too large".into()));
        }
        let sig: SshSig = decision
            .signature
            .trim()
            .parse()
            .map_err(|e: ssh_key::Error| TrustError::Signature(e.to_string()))?;
        if sig.namespace() != NAMESPACE {
            return Err(TrustError::Namespace {
                found: sig.namespace().to_string(),
            });
        }
        let signer = statement.signer.clone();
        let mine: Vec<&SignerEntry> = self.keys_of(&signer).collect();
        if mine.is_empty() {
            return Err(TrustError::UnknownSigner { signer });
        }
        let Some(entry) = mine.iter().find(|e| e.key.key_data() == sig.public_key()) else {
            let used = PublicKey::from(sig.public_key().clone())
                .fingerprint(HashAlg::Sha256)
                .to_string();
            let others: Vec<&str> = self
                .entries
                .iter()
                .filter(|e| e.key.key_data() == sig.public_key())
                .flat_map(|e| e.names.iter().map(String::as_str))
                .collect();
            return Err(TrustError::WrongKey {
                signer: signer.clone(),
                fingerprint: used,
                listed: if others.is_empty() {
                    String::new()
                } else {
                    format!(", but listed for {}", others.join(", "))
                },
                expected: mine
                    .iter()
                    .map(|e| e.fingerprint.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        entry
            .key
            .verify(NAMESPACE, decision.statement.as_bytes(), &sig)
            .map_err(|e| TrustError::BadSignature(e.to_string()))?;
        Ok(Verified {
            statement,
            fingerprint: entry.fingerprint.clone(),
        })
    }

    /// Verifies a decision signed with a passkey: a WebAuthn assertion over
    /// the statement's digest by one of the signer's passkeys.
    fn verify_passkey(
        &self,
        decision: &Decision,
        statement: Statement,
    ) -> Result<Verified, TrustError> {
        let signer = statement.signer.clone();
        let mine: Vec<&PasskeyEntry> = self.passkeys.of(&signer).collect();
        if mine.is_empty() && self.keys_of(&signer).next().is_none() {
            return Err(TrustError::UnknownSigner { signer });
        }
        let used = crate::passkey::assertion_credential(&decision.signature)?;
        if !mine.iter().any(|e| e.credential_id() == used) {
            let holder = self
                .passkeys
                .entries()
                .iter()
                .find(|e| e.credential_id() == used);
            return Err(TrustError::WrongKey {
                signer: signer.clone(),
                fingerprint: format!("passkey:{used}"),
                listed: holder.map_or(String::new(), |h| format!(", but listed for {}", h.name)),
                expected: mine
                    .iter()
                    .map(|e| e.fingerprint())
                    .chain(self.keys_of(&signer).map(|e| e.fingerprint.clone()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let challenge = crate::passkey::statement_challenge(&decision.statement);
        let entry = crate::passkey::verify_assertion(&mine, &challenge, &decision.signature)?;
        Ok(Verified {
            statement,
            fingerprint: entry.fingerprint(),
        })
    }

    /// Adds `name` with the public key in `key_text` to the file at `path`
    /// (created owner-only if missing).
    pub fn add(path: &Path, name: &str, key_text: &str) -> Result<SignerEntry, TrustError> {
        let (text, entry) = Self::added(&read_text(path)?, path, name, key_text)?;
        write_private(path, &text)?;
        Ok(entry)
    }

    /// `text` (allowed_signers, read from `origin`) with `name`'s public
    /// key in `key_text` added as a line of its own, and the entry added.
    /// A key listed already, for anyone, is refused: one key, one human.
    pub fn added(
        text: &str,
        origin: &Path,
        name: &str,
        key_text: &str,
    ) -> Result<(String, SignerEntry), TrustError> {
        IdentKind::Name
            .check(name)
            .map_err(|e| TrustError::Statement(e.to_string()))?;
        let key = PublicKey::from_openssh(key_text.trim())
            .map_err(|e| TrustError::PublicKey(e.to_string()))?;
        let current = Self::parse(text, origin)?;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if let Some(holder) = current
            .entries
            .iter()
            .find(|e| e.key.key_data() == key.key_data())
        {
            return Err(TrustError::PublicKey(format!(
                "key {fingerprint} is listed already, for {}: one key, one human",
                holder.names.join(",")
            )));
        }
        let mut key_line = key.clone();
        key_line.set_comment("");
        let encoded = key_line
            .to_openssh()
            .map_err(|e| TrustError::PublicKey(e.to_string()))?;
        let mut text = text.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "{name} namespaces=\"{NAMESPACE}\" {}\n",
            encoded.trim()
        ));
        let entry = SignerEntry {
            names: vec![name.to_string()],
            key,
            fingerprint,
        };
        Ok((text, entry))
    }

    /// Removes every key of `name`, of both kinds: the SSH keys of the
    /// allowed_signers file at `path` and the passkeys beside it. Returns
    /// how many.
    pub fn remove_human(path: &Path, name: &str) -> Result<usize, TrustError> {
        let ssh = Self::remove(path, name)?;
        Ok(ssh + Passkeys::remove(&crate::passkeys_path(path), name)?)
    }

    /// Removes every SSH key of `name`; returns how many.
    pub fn remove(path: &Path, name: &str) -> Result<usize, TrustError> {
        let (kept, removed) = Self::removed(&read_text(path)?, path, name)?;
        if removed > 0 {
            write_private(path, &kept)?;
        }
        Ok(removed)
    }

    /// `text` (allowed_signers, read from `origin`) without the lines of
    /// `name`'s keys, and how many there were.
    pub fn removed(text: &str, origin: &Path, name: &str) -> Result<(String, usize), TrustError> {
        Self::parse(text, origin)?;
        let mut removed = 0;
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let ours = parse_line(line.trim())
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.names.len() == 1 && e.names[0] == name);
                removed += usize::from(ours);
                !ours
            })
            .collect();
        let kept = kept.join("\n") + if kept.is_empty() { "" } else { "\n" };
        Ok((kept, removed))
    }
}

/// Whether a decision's signature is a passkey's assertion (JSON) rather
/// than an armored SSH signature.
fn is_assertion(signature: &str) -> bool {
    signature.trim_start().starts_with('{')
}

/// The text of the file at `path`, at most `max` bytes; a missing file is
/// empty.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<String, TrustError> {
    let io = |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io(e)),
        Ok(m) if m.len() > max => {
            return Err(io(std::io::Error::other(format!(
                "{} bytes, more than {max}",
                m.len()
            ))));
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path).map_err(io)
}

fn read_text(path: &Path) -> Result<String, TrustError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(TrustError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes owner-only, atomically (`runbox_core::files::write_private`).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), TrustError> {
    runbox_core::files::write_private(path, text).map_err(|source| TrustError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// One line: `None` when the key may not sign runbox statements at all
/// (`namespaces` without `runbox`).
fn parse_line(line: &str) -> Result<Option<SignerEntry>, String> {
    let (principals, rest) = line
        .split_once(char::is_whitespace)
        .ok_or("expected `NAME [options] KEYTYPE BASE64`")?;
    let names: Vec<String> = principals.split(',').map(str::to_string).collect();
    for name in &names {
        if name.contains(['*', '?', '!']) {
            return Err(format!(
                "principal pattern `{name}`: runbox takes exact names"
            ));
        }
        IdentKind::Name.check(name).map_err(|e| e.to_string())?;
    }
    let mut rest = rest.trim_start();
    let mut namespaces: Option<Vec<String>> = None;
    // Options come before the key type; key types start with a letter and
    // contain no `=`.
    while !rest.starts_with("ssh-") && !rest.starts_with("ecdsa-") && !rest.starts_with("sk-") {
        let (option, tail) = split_option(rest)?;
        match option.split_once('=') {
            Some(("namespaces", value)) => {
                let value = value.trim_matches('"');
                namespaces = Some(value.split(',').map(str::to_string).collect());
            }
            _ => {
                return Err(format!(
                    "option `{option}` is not supported: runbox reads `namespaces=\"runbox\"` only"
                ));
            }
        }
        rest = tail.trim_start();
    }
    let key = PublicKey::from_openssh(rest).map_err(|e| format!("bad public key: {e}"))?;
    if namespaces.is_some_and(|ns| !ns.iter().any(|n| n == NAMESPACE)) {
        return Ok(None);
    }
    Ok(Some(SignerEntry {
        names,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        key,
    }))
}

/// Splits the first option (which may hold a quoted value) off `text`.
fn split_option(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&text[..i], &text[i..])),
            _ => {}
        }
    }
    Err("expected a key after the options".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, sign_with_key};
    use ssh_key::{Algorithm, PrivateKey, rand_core::OsRng};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    fn statement(signer: &str) -> String {
        let audience = "0123456789abcdef0123456789abcdef";
        Statement::new(
            Action::Takeover,
            signer,
            std::time::Duration::from_secs(60),
            audience,
        )
        .unwrap()
        .to_text()
    }

    #[test]
    fn decisions_verify_only_for_the_signers_own_key_namespace_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed_signers");
        let (alice, bob) = (key(), key());
        AllowedSigners::add(&path, "alice", &alice.public_key().to_openssh().unwrap()).unwrap();
        AllowedSigners::add(&path, "bob", &bob.public_key().to_openssh().unwrap()).unwrap();
        let signers = AllowedSigners::read(&path).unwrap();
        let good = sign_with_key(&alice, &statement("alice")).unwrap();
        assert_eq!(signers.verify(&good).unwrap().statement.signer, "alice");
        // Bob's key signing alice's name.
        let forged = sign_with_key(&bob, &statement("alice")).unwrap();
        let err = signers.verify(&forged).unwrap_err().to_string();
        assert!(err.contains("not alice's, but listed for bob"), "{err}");
        // Unknown human.
        let err = signers.verify(&sign_with_key(&alice, &statement("carol")).unwrap());
        assert!(matches!(err, Err(TrustError::UnknownSigner { .. })));
        // The statement altered after signing.
        let mut altered = good.clone();
        altered.statement = altered.statement.replace("takeover", "handback");
        assert!(matches!(
            signers.verify(&altered),
            Err(TrustError::BadSignature(_))
        ));
        // Another namespace.
        let sig = alice
            .sign("git", ssh_key::HashAlg::Sha512, good.statement.as_bytes())
            .unwrap()
            .to_pem(ssh_key::LineEnding::LF)
            .unwrap();
        let other = Decision {
            signature: sig,
            ..good.clone()
        };
        assert!(matches!(
            signers.verify(&other),
            Err(TrustError::Namespace { .. })
        ));
        // Garbage.
        let junk = Decision {
            signature: "not a signature".into(),
            ..good
        };
        assert!(matches!(
            signers.verify(&junk),
            Err(TrustError::Signature(_))
        ));
        // Removing bob leaves alice.
        assert_eq!(AllowedSigners::remove(&path, "bob").unwrap(), 1);
        let left = AllowedSigners::read(&path).unwrap();
        assert_eq!(left.entries().len(), 1);
        assert_eq!(left.entries()[0].names, ["alice"]);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let k = key().public_key().to_openssh().unwrap();
        let cases = [
            format!("al*ce {k}"),
            format!("alice cert-authority {k}"),
            "alice ssh-ed25519 AAAAnotbase64".to_string(),
            format!("human:alice {k}"),
            "alice".to_string(),
        ];
        for line in cases {
            let text = format!("# ok\n\n{line}\n");
            let err = AllowedSigners::parse(&text, Path::new("as"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("as:3: "), "{line}: {err}");
        }
        let two = format!("# ok\n\nalice,bob {k}\n");
        let err = AllowedSigners::parse(&two, Path::new("as"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("as:3: one human per line"), "{err}");
        let twice = format!("alice {k}\nbob {k}\n");
        let err = AllowedSigners::parse(&twice, Path::new("as"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("as:2: ") && err.contains("listed already on line 1"),
            "{err}"
        );
        let other_ns = format!("alice namespaces=\"git,file\" {k}\n");
        assert!(
            AllowedSigners::parse(&other_ns, Path::new("as"))
                .unwrap()
                .is_empty()
        );
    }
}
