//! Changing the fleet's configuration in a shared store (see
//! [`runbox_core::fleet_config`]): the humans who may decide and the
//! fleet-wide limits. Every change is a human's signed `configure`
//! statement but one, the first human's enrollment into an empty store,
//! which the mutation token's holder consents to. Each lands as one
//! conditional write of the document, the fleet timeline's next change
//! and its head, on the versions the change was checked against.

use std::time::Duration;

use runbox_core::fleet_config::{
    ConfigChange, ConfigDoc, ConfigKind, ENROLLMENT_TTL_MS, ENROLLMENTS, EnrollmentLink, HEAD,
    Head, MAX_CONFIG_BYTES, MAX_ENROLLMENTS, TOKEN_CONSENT, change_key, enrollment_key,
    pending_passkey_key, subject, text_sha256,
};
use runbox_core::records::Signed;
use runbox_core::time::now_ms;
use runbox_incidents::config::{self, Fence};
use runbox_store::{Shared, StoreError, StoreExt};
use runbox_trust::{Action, Decision, Statement};

use crate::fleet::Fleet;
use crate::{Engine, EngineError, Result};

/// The most passkeys made at the console that wait, on a shared store,
/// for a human's signed change to list them.
pub const MAX_PENDING_PASSKEYS: usize = 16;

/// What consents to a change of the fleet's configuration.
#[derive(Debug, Clone, Copy)]
pub enum ConfigAuth<'a> {
    /// The current mutation token: enough only to enroll the first human
    /// of an empty store.
    Token(&'a str),
    /// A human's signed `configure` statement for exactly this change.
    Human(&'a Decision),
}

/// A change as it would land now: what a statement binds.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The document changed.
    pub kind: ConfigKind,
    /// Its place in the fleet timeline.
    pub seq: u64,
    /// The text it replaces.
    pub base: String,
    /// The text it writes.
    pub text: String,
    /// What it does, in words.
    pub summary: String,
    doc: Fence,
    head: Fence,
    /// A passkey waiting to be listed that the change lists: deleted with
    /// it, while it is still the one read.
    consumes: Option<Fence>,
}

impl Proposal {
    /// What a `configure` statement for it binds.
    pub fn subject(&self) -> String {
        subject(
            self.kind,
            self.seq,
            &text_sha256(&self.base),
            &text_sha256(&self.text),
        )
    }
}

fn refused(message: impl Into<String>) -> EngineError {
    EngineError::Fleet(message.into())
}

impl Engine {
    /// The passkeys document with `entry` added: refused when its names
    /// break the rules or its credential is listed already.
    fn passkeys_with(&self, entry: runbox_trust::PasskeyEntry) -> Result<String> {
        let current = self.fleet().config_text(ConfigKind::Passkeys)?;
        let origin = std::path::Path::new(config::PASSKEYS_ORIGIN);
        Ok(runbox_trust::Passkeys::added(&current, origin, entry)?)
    }

    fn commit_config(&self, proposal: &Proposal, change: &ConfigChange) -> Result<()> {
        let doc = ConfigDoc {
            kind: change.kind,
            seq: change.seq,
            text: change.text.clone(),
        };
        let mut shared = Shared::default();
        proposal.doc.hold(&mut shared);
        proposal.head.hold(&mut shared);
        if let Some(pending) = &proposal.consumes {
            pending.hold(&mut shared);
            shared.delete(pending.key());
        }
        shared
            .put(change.kind.key(), json(&doc))
            .put(HEAD, json(&Head { seq: change.seq }))
            .expect(change_key(change.seq), None)
            .put(change_key(change.seq), json(change));
        match self.store.commit_shared(shared) {
            Err(StoreError::SharedConflict { .. }) => Err(refused(
                "the fleet's configuration changed while this change was checked: look again (`runbox human list`, `runbox limits show`) and sign a fresh statement",
            )),
            other => Ok(other?),
        }
    }

    /// Every human who may decide were `kind`'s document `text`, the
    /// other one as it stands.
    fn registry_with(&self, kind: ConfigKind, text: &str) -> Result<runbox_trust::AllowedSigners> {
        let (signers, passkeys) = match kind {
            ConfigKind::Passkeys => (
                self.fleet().config_text(ConfigKind::Signers)?,
                text.to_string(),
            ),
            _ => (
                text.to_string(),
                self.fleet().config_text(ConfigKind::Passkeys)?,
            ),
        };
        Ok(config::registry_of(&signers, &passkeys)?)
    }

    /// The first human's enrollment: only into an empty registry, with the
    /// current mutation token.
    fn token_consent(&self, proposal: &Proposal, token: &str) -> Result<Option<Signed>> {
        let empty = config::registry(&*self.store)?.0.is_empty();
        if !proposal.kind.lists_humans() || !empty {
            return Err(refused(format!(
                "the fleet has humans: changing its {} needs one's signature (`--as NAME --key KEY`)",
                proposal.kind
            )));
        }
        if !self.token_valid(token)? {
            return Err(refused(
                "enrolling the fleet's first human needs the current mutation token (RUNBOX_MUTATION_TOKEN or --token-file; `runbox token init` creates it)",
            ));
        }
        Ok(None)
    }

    /// A human's signed statement for exactly this change, checked against
    /// the signers as they stand.
    fn human_consent(
        &self,
        proposal: &Proposal,
        decision: &Decision,
    ) -> Result<(String, Option<Signed>)> {
        let signers = self.incidents.signers()?;
        let v = self.verify_unbound(&signers, decision, Action::Configure, refused)?;
        let s = &v.statement;
        if s.scope.as_deref() != Some(proposal.kind.as_str())
            || s.subject_sha256.as_deref() != Some(proposal.subject().as_str())
            || s.change.as_deref() != Some(proposal.summary.as_str())
        {
            return Err(refused(format!(
                "the statement was made for another change than `{}` as change {} of the fleet timeline: sign a fresh one",
                proposal.summary, proposal.seq
            )));
        }
        let signed = Signed {
            statement: decision.statement.clone(),
            signature: decision.signature.clone(),
            fingerprint: v.fingerprint.clone(),
        };
        Ok((format!("human:{}", s.signer), Some(signed)))
    }

    /// Refuses unless the fleet's configuration lives in the store.
    fn in_store(&self, kind: ConfigKind) -> Result<()> {
        if self.incidents.config_in_store() {
            return Ok(());
        }
        Err(refused(format!(
            "the fleet's {kind} live in the store only on a store runners share (`--store etcd://…`); here they are the data dir's {}",
            kind.file()
        )))
    }
}

impl Fleet<'_> {
    /// The document of `kind` as it stands (empty text when never written).
    pub fn config_text(&self, kind: ConfigKind) -> Result<String> {
        self.engine.in_store(kind)?;
        Ok(self.engine.incidents.config_text(kind)?)
    }

    /// Checks that writing `text` as the document of `kind` is a change
    /// that may land, and what it would be.
    pub fn config_proposal(&self, kind: ConfigKind, text: String) -> Result<Proposal> {
        self.engine.in_store(kind)?;
        if text.len() > MAX_CONFIG_BYTES {
            return Err(refused(format!(
                "the fleet's {kind} would be {} bytes; at most {MAX_CONFIG_BYTES}",
                text.len()
            )));
        }
        config::check(kind, &text)?;
        let store = &*self.engine.store;
        let stored = config::read(store, kind)?;
        let (head, head_fence) = config::head(store)?;
        let base = stored.text().to_string();
        if base == text {
            return Err(refused(format!(
                "the fleet's {kind} are this already: nothing to change"
            )));
        }
        if kind.lists_humans() && self.engine.registry_with(kind, &text)?.is_empty() {
            return Err(refused(
                "the fleet's last human cannot be removed: add another first (an empty registry would let the mutation token's holder enroll anyone)",
            ));
        }
        let summary = config::summarize(kind, &base, &text)?;
        Ok(Proposal {
            kind,
            seq: head.seq + 1,
            base,
            text,
            summary,
            doc: stored.fence,
            head: head_fence,
            consumes: None,
        })
    }

    /// The change that lists the passkey waiting under `fingerprint`
    /// (`passkey:CREDENTIAL-ID`) with its human's other passkeys.
    pub fn passkey_proposal(&self, fingerprint: &str) -> Result<Proposal> {
        self.engine.in_store(ConfigKind::Passkeys)?;
        let (entry, pending) = config::pending_passkey(&*self.engine.store, fingerprint)?
            .ok_or_else(|| {
                refused(format!(
                    "no passkey `{fingerprint}` waits to be listed (`runbox human list` shows those that do)"
                ))
            })?;
        let text = self.engine.passkeys_with(entry)?;
        let proposal = self.config_proposal(ConfigKind::Passkeys, text)?;
        Ok(Proposal {
            consumes: Some(pending),
            ..proposal
        })
    }

    /// Keeps a passkey made at the console until a human's signed change
    /// lists it (`runbox human accept`): on a shared store the console
    /// adds no signer by itself. At most [`MAX_PENDING_PASSKEYS`] wait.
    pub fn pend_passkey(&self, entry: runbox_trust::PasskeyEntry) -> Result<()> {
        // Checks its names, and that it is not listed already.
        self.engine.passkeys_with(entry.clone())?;
        if config::pending_passkeys(&*self.engine.store)?.len() >= MAX_PENDING_PASSKEYS {
            return Err(refused(format!(
                "{MAX_PENDING_PASSKEYS} passkeys wait to be listed already: accept or remove some first (`runbox human list`)"
            )));
        }
        let key = pending_passkey_key(&entry.fingerprint());
        let mut shared = Shared::default();
        shared.expect(&key, None).put(&key, json(&entry));
        match self.engine.store.commit_shared(shared) {
            Err(StoreError::SharedConflict { .. }) => {
                Err(refused("this passkey waits to be listed already"))
            }
            other => Ok(other?),
        }
    }

    /// A one-time link token that enrolls a passkey for `human` at any
    /// runner's console, for [`ENROLLMENT_TTL_MS`]. What it makes counts
    /// only once a human lists it, so making one needs no consent. Links
    /// past their time are cleared here; at most [`MAX_ENROLLMENTS`] live.
    pub fn enrollment_link(&self, human: &str, label: &str) -> Result<String> {
        self.engine.in_store(ConfigKind::Passkeys)?;
        for name in [human, label] {
            runbox_core::ident::Name::new(name)?;
        }
        let now = now_ms();
        let mut live = 0;
        for (key, v) in self.engine.store.shared_scan_all(ENROLLMENTS)? {
            let link: EnrollmentLink = runbox_store::decode(&key, &v.value)?;
            if link.expires_ms > now {
                live += 1;
                continue;
            }
            let mut gone = Shared::default();
            gone.expect(&key, Some(v.version)).delete(&key);
            // Taken or cleared by someone else meanwhile: as good.
            let _ = self.engine.store.commit_shared(gone);
        }
        if live >= MAX_ENROLLMENTS {
            return Err(refused(format!(
                "{MAX_ENROLLMENTS} enrollment links are live already: use them, or wait for them to expire"
            )));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| refused(format!("no randomness: {e}")))?;
        let token = hex::encode(raw);
        let link = EnrollmentLink {
            human: human.to_string(),
            label: label.to_string(),
            expires_ms: now + ENROLLMENT_TTL_MS,
        };
        let key = enrollment_key(&token);
        let mut shared = Shared::default();
        shared.expect(&key, None).put(&key, json(&link));
        self.engine.store.commit_shared(shared)?;
        Ok(token)
    }

    /// Takes the enrollment link `token` names, once: `None` when there is
    /// none, it was taken, or its time is up.
    pub fn take_enrollment_link(&self, token: &str) -> Result<Option<EnrollmentLink>> {
        let key = enrollment_key(token);
        let Some(v) = self.engine.store.shared_get(&key)? else {
            return Ok(None);
        };
        let link: EnrollmentLink = runbox_store::decode(&key, &v.value)?;
        let mut taken = Shared::default();
        taken.expect(&key, Some(v.version)).delete(&key);
        match self.engine.store.commit_shared(taken) {
            Err(StoreError::SharedConflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
            Ok(()) => Ok((link.expires_ms > now_ms()).then_some(link)),
        }
    }

    /// The statement `signer` signs to make `proposal`.
    pub fn config_statement(
        &self,
        proposal: &Proposal,
        signer: &str,
        ttl: Duration,
    ) -> Result<Statement> {
        let mut s = Statement::new(
            Action::Configure,
            signer,
            ttl,
            &self.engine.deployment_id()?,
        )?;
        s.scope = Some(proposal.kind.to_string());
        s.subject_sha256 = Some(proposal.subject());
        s.change = Some(proposal.summary.clone());
        Ok(s)
    }

    /// Makes `proposal`, if `auth` consents to exactly it and nothing moved
    /// since it was made: the document, the fleet timeline's next change
    /// and its head in one conditional write. A refusal writes nothing.
    pub fn configure(&self, proposal: Proposal, auth: ConfigAuth<'_>) -> Result<ConfigChange> {
        let (by, signed) = match auth {
            ConfigAuth::Token(token) => (
                TOKEN_CONSENT.to_string(),
                self.engine.token_consent(&proposal, token)?,
            ),
            ConfigAuth::Human(decision) => self.engine.human_consent(&proposal, decision)?,
        };
        let change = ConfigChange {
            seq: proposal.seq,
            kind: proposal.kind,
            at_ms: now_ms(),
            by,
            summary: proposal.summary.clone(),
            base_sha256: text_sha256(&proposal.base),
            text: proposal.text.clone(),
            signed,
        };
        self.engine.commit_config(&proposal, &change)?;
        tracing::info!(seq = change.seq, kind = %change.kind, by = %change.by, "fleet configuration changed");
        Ok(change)
    }
}

/// A record a change writes, as JSON.
fn json<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("fleet records always serialize")
}
