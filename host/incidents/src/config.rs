//! The fleet's configuration as it stands in a shared store, and its
//! timeline checked from the first change (see
//! [`runbox_core::fleet_config`]).
//!
//! A reader gets each document with a [`Fence`]: the version it read. A
//! commit that acts on what the document said (an approval counted, a call
//! counted against a limit) carries the fence, so it lands only if the
//! document is still the one read, as for shared values.

use std::collections::BTreeSet;
use std::path::Path;

use runbox_core::fleet_config::{
    CHANGES, ConfigChange, ConfigDoc, ConfigKind, HEAD, Head, PENDING_PASSKEYS, TOKEN_CONSENT,
    bounded_summary, pending_passkey_key, subject, text_sha256,
};
use runbox_core::limits::{Limit, LimitsFile};
use runbox_core::notify::Routing;
use runbox_core::route::Routes;
use runbox_store::{Shared, Store, StoreExt, decode};
use runbox_trust::{Action, AllowedSigners, Decision, PasskeyEntry, Passkeys};

use crate::{Incidents, ReadError, Result};

/// What errors call the fleet's signers document.
pub const SIGNERS_ORIGIN: &str = "the fleet's signers (store)";
/// What errors call the fleet's passkeys document.
pub const PASSKEYS_ORIGIN: &str = "the fleet's passkeys (store)";
/// What errors call the fleet's limits document.
pub const LIMITS_ORIGIN: &str = "the fleet's limits (store)";
/// What errors call the fleet's routes document.
pub const ROUTES_ORIGIN: &str = "the fleet's routes (store)";
/// What errors call the fleet's sinks document.
pub const SINKS_ORIGIN: &str = "the fleet's sinks (store)";

/// The version of a shared value a reader acted on: a commit carrying it
/// lands only while the value is still that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: String,
    version: Option<u64>,
}

impl Fence {
    /// Adds the expectation to `shared`.
    pub fn hold(&self, shared: &mut Shared) {
        shared.expect(&self.key, self.version);
    }

    /// The shared-plane key fenced.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A configuration document as read, with its fence.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The document (`None`: never written; its text is empty).
    pub doc: Option<ConfigDoc>,
    /// The version read.
    pub fence: Fence,
}

impl Stored {
    /// Its text (empty when never written).
    pub fn text(&self) -> &str {
        self.doc.as_ref().map_or("", |d| d.text.as_str())
    }
}

/// The shared value at `key`, decoded, with the version read.
fn read_fenced<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: String,
) -> Result<(Option<T>, Fence)> {
    let (value, version) = match store.shared_get(&key)? {
        Some(v) => (Some(decode::<T>(&key, &v.value)?), Some(v.version)),
        None => (None, None),
    };
    Ok((value, Fence { key, version }))
}

/// Reads the document of `kind`.
pub fn read(store: &dyn Store, kind: ConfigKind) -> Result<Stored> {
    let (doc, fence) = read_fenced(store, kind.key())?;
    Ok(Stored { doc, fence })
}

/// The fleet timeline's head, with its fence.
pub fn head(store: &dyn Store) -> Result<(Head, Fence)> {
    let (head, fence) = read_fenced(store, HEAD.to_string())?;
    Ok((head.unwrap_or_default(), fence))
}

/// A passkey made at the console that waits, on a shared store, for a
/// human's signed change to list it, with its fence.
pub fn pending_passkey(
    store: &dyn Store,
    fingerprint: &str,
) -> Result<Option<(PasskeyEntry, Fence)>> {
    let (entry, fence) = read_fenced(store, pending_passkey_key(fingerprint))?;
    Ok(entry.map(|e| (e, fence)))
}

/// Every passkey waiting to be listed, oldest key first.
pub fn pending_passkeys(store: &dyn Store) -> Result<Vec<PasskeyEntry>> {
    store
        .shared_scan_all(PENDING_PASSKEYS)?
        .into_iter()
        .map(|(key, v)| Ok(decode::<PasskeyEntry>(&key, &v.value)?))
        .collect()
}

/// Every change of the fleet timeline, oldest first.
pub fn changes(store: &dyn Store) -> Result<Vec<ConfigChange>> {
    store
        .shared_scan_all(CHANGES)?
        .into_iter()
        .map(|(key, v)| Ok(decode::<ConfigChange>(&key, &v.value)?))
        .collect()
}

/// The humans a signers document lists (by their SSH keys only).
pub fn signers_of(text: &str) -> Result<AllowedSigners> {
    Ok(AllowedSigners::parse(text, Path::new(SIGNERS_ORIGIN))?)
}

/// The passkeys a passkeys document lists.
pub fn passkeys_of(text: &str) -> Result<Passkeys> {
    Ok(Passkeys::parse(text, Path::new(PASSKEYS_ORIGIN))?)
}

/// Every human who may decide, by both kinds of keys, given the two
/// documents' texts.
pub fn registry_of(signers: &str, passkeys: &str) -> Result<AllowedSigners> {
    Ok(signers_of(signers)?.with_passkeys(passkeys_of(passkeys)?))
}

/// Every human who may decide as the store lists them, with the fences
/// of both documents.
pub fn registry(store: &dyn Store) -> Result<(AllowedSigners, Vec<Fence>)> {
    let signers = read(store, ConfigKind::Signers)?;
    let passkeys = read(store, ConfigKind::Passkeys)?;
    let registry = registry_of(signers.text(), passkeys.text())?;
    Ok((registry, vec![signers.fence, passkeys.fence]))
}

/// The limits a limits document declares.
pub fn limits_of(text: &str) -> Result<Vec<Limit>> {
    LimitsFile::parse(text, LIMITS_ORIGIN).map_err(|e| ReadError::Limit(e.to_string()))
}

/// The routes a routes document declares.
pub fn routes_of(text: &str) -> Result<Routes> {
    Routes::parse(text, ROUTES_ORIGIN).map_err(|e| ReadError::Config(e.to_string()))
}

/// The sinks a sinks document declares.
pub fn sinks_of(text: &str) -> Result<Routing> {
    Routing::parse(text, SINKS_ORIGIN).map_err(|e| ReadError::Config(e.to_string()))
}

/// Checks that `text` is a valid document of `kind`.
pub fn check(kind: ConfigKind, text: &str) -> Result<()> {
    match kind {
        ConfigKind::Signers => signers_of(text).map(drop),
        ConfigKind::Passkeys => passkeys_of(text).map(drop),
        ConfigKind::Limits => limits_of(text).map(drop),
        ConfigKind::Routes => routes_of(text).map(drop),
        ConfigKind::Sinks => sinks_of(text).map(drop),
    }
}

/// What changing `kind` from `old` to `new` does, in words: the same
/// words for the same two texts, so `verify` can make them again. Both
/// texts must be valid documents.
pub fn summarize(kind: ConfigKind, old: &str, new: &str) -> Result<String> {
    let text = match kind {
        ConfigKind::Signers => signers_summary(old, new)?,
        ConfigKind::Passkeys => passkeys_summary(old, new)?,
        ConfigKind::Limits => limits_summary(old, new)?,
        ConfigKind::Routes => {
            let count = |text| Ok::<_, ReadError>(routes_of(text)?.iter().count());
            let routes: Vec<String> = routes_of(new)?
                .iter()
                .map(|r| format!("{} opens {}", r.name, r.runbook))
                .collect();
            listed("routes", "route(s)", count(old)?, &routes)
        }
        ConfigKind::Sinks => {
            let sinks: Vec<String> = sinks_of(new)?
                .sinks()
                .iter()
                .map(|s| {
                    let events: Vec<&str> = s.events.iter().map(|e| e.as_str()).collect();
                    format!("{} ({}) on {}", s.name, s.kind, events.join(","))
                })
                .collect();
            listed("sinks", "sink(s)", sinks_of(old)?.sinks().len(), &sinks)
        }
    };
    Ok(bounded_summary(text))
}

fn signers_summary(old: &str, new: &str) -> Result<String> {
    let keys = |text: &str| -> Result<BTreeSet<HumanKey>> {
        Ok(signers_of(text)?
            .entries()
            .iter()
            .map(|e| {
                let what = format!("key {}", e.key.algorithm());
                (e.names.join(","), what, e.fingerprint.clone())
            })
            .collect())
    };
    Ok(keys_summary(
        "signers",
        &keys(old)?,
        &keys(new)?,
        "the file",
    ))
}

fn passkeys_summary(old: &str, new: &str) -> Result<String> {
    let keys = |text: &str| -> Result<BTreeSet<HumanKey>> {
        Ok(passkeys_of(text)?
            .entries()
            .iter()
            .map(|e| {
                let what = format!("passkey \"{}\"", e.label);
                (e.name.clone(), what, e.fingerprint())
            })
            .collect())
    };
    Ok(keys_summary(
        "passkeys",
        &keys(old)?,
        &keys(new)?,
        "the registry",
    ))
}

/// A human's key as a summary names it: (name, what it is, fingerprint).
type HumanKey = (String, String, String);

/// `KIND: add human:NAME WHAT FP; remove …`: the keys `after` lists and
/// `before` does not, then the other way round.
fn keys_summary(
    kind: &str,
    before: &BTreeSet<HumanKey>,
    after: &BTreeSet<HumanKey>,
    whole: &str,
) -> String {
    let line = |verb: &str, (name, what, fp): &HumanKey| format!("{verb} human:{name} {what} {fp}");
    let mut parts: Vec<String> = after.difference(before).map(|k| line("add", k)).collect();
    parts.extend(before.difference(after).map(|k| line("remove", k)));
    if parts.is_empty() {
        parts.push(format!("rewrite {whole}, same keys"));
    }
    format!("{kind}: {}", parts.join("; "))
}

fn limits_summary(old: &str, new: &str) -> Result<String> {
    let before = limits_of(old)?.len();
    let empty = Default::default();
    let described: Vec<String> = limits_of(new)?.iter().map(|l| l.describe(&empty)).collect();
    Ok(listed("limits", "rate limit(s)", before, &described))
}

/// `KIND: N THINGS, was M: each; …`.
fn listed(kind: &str, things: &str, before: usize, each: &[String]) -> String {
    format!(
        "{kind}: {} {things}, was {before}{}{}",
        each.len(),
        if each.is_empty() { "" } else { ": " },
        each.join("; ")
    )
}

/// What the fleet timeline's check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct FleetReport {
    /// Changes checked.
    pub changes: usize,
    /// What does not hold, one line each.
    pub violations: Vec<String>,
}

impl FleetReport {
    /// Whether everything holds.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl Incidents {
    /// The text of the store's `kind` document as it stands (empty when
    /// never written).
    pub fn config_text(&self, kind: ConfigKind) -> Result<String> {
        Ok(read(&**self.store(), kind)?.text().to_string())
    }

    /// Replays the fleet timeline from an empty store: changes numbered
    /// from 1 without gaps up to the head; each one's base the text the
    /// one before left; each signed by a human the signers document listed
    /// before it, for this deployment (or one its store was copied from),
    /// bound to exactly that change, within its validity; the first
    /// human's enrollment alone unsigned; each document as the last change
    /// of its kind left it.
    pub fn verify_fleet(&self) -> Result<FleetReport> {
        let store = &**self.store();
        let changes = changes(store)?;
        let audiences = self.known_deployments()?;
        let mut report = FleetReport {
            changes: changes.len(),
            ..FleetReport::default()
        };
        let mut texts: std::collections::BTreeMap<ConfigKind, String> = Default::default();
        for (i, change) in changes.iter().enumerate() {
            let at = format!("fleet change {}", change.seq);
            if change.seq != i as u64 + 1 {
                report
                    .violations
                    .push(format!("{at}: expected change {} here (a gap)", i + 1));
            }
            let before = texts.get(&change.kind).cloned().unwrap_or_default();
            let text_of = |kind| texts.get(&kind).map_or("", String::as_str);
            let signers = registry_of(text_of(ConfigKind::Signers), text_of(ConfigKind::Passkeys));
            for why in check_change(change, &before, signers, &audiences) {
                report
                    .violations
                    .push(format!("{at} ({}): {why}", change.kind));
            }
            texts.insert(change.kind, change.text.clone());
        }
        let (head, _) = head(store)?;
        if head.seq != changes.len() as u64 {
            report.violations.push(format!(
                "the fleet timeline's head says {} change(s), {} are recorded",
                head.seq,
                changes.len()
            ));
        }
        for kind in ConfigKind::ALL {
            let stored = read(store, kind)?;
            let last = changes.iter().rev().find(|c| c.kind == kind);
            let expected = last.map(|c| (c.seq, c.text.as_str()));
            let found = stored.doc.as_ref().map(|d| (d.seq, d.text.as_str()));
            if expected != found {
                report.violations.push(format!(
                    "the fleet's {kind} document is not what its last change wrote (change {:?}, document from change {:?})",
                    last.map(|c| c.seq),
                    stored.doc.as_ref().map(|d| d.seq)
                ));
            }
        }
        Ok(report)
    }
}

/// What is wrong with one change, given the text it replaced and the
/// humans as they stood before it.
fn check_change(
    change: &ConfigChange,
    before: &str,
    signers: Result<AllowedSigners>,
    audiences: &[String],
) -> Vec<String> {
    let mut why = Vec::new();
    if change.base_sha256 != text_sha256(before) {
        why.push("its base is not the text the change before it left".into());
    }
    match summarize(change.kind, before, &change.text) {
        Ok(summary) if summary != change.summary => {
            why.push(format!(
                "its summary says {:?}, the change does {summary:?}",
                change.summary
            ));
        }
        Ok(_) => {}
        Err(e) => why.push(format!("its text is not a valid document: {e}")),
    }
    let signers = match signers {
        Ok(s) => s,
        Err(e) => {
            why.push(format!("the signers before it do not parse: {e}"));
            return why;
        }
    };
    let Some(signed) = &change.signed else {
        if !(change.kind.lists_humans() && signers.is_empty() && change.by == TOKEN_CONSENT) {
            why.push(format!(
                "unsigned by {}, but only the first human's enrollment may be",
                change.by
            ));
        }
        return why;
    };
    if let Err(e) = check_signed(change, signed, &signers, audiences) {
        why.push(e);
    }
    why
}

/// Whether `signed` is a human's statement for exactly `change`.
fn check_signed(
    change: &ConfigChange,
    signed: &runbox_core::records::Signed,
    signers: &AllowedSigners,
    audiences: &[String],
) -> std::result::Result<(), String> {
    let v = signers
        .verify(&Decision::from(signed))
        .map_err(|e| format!("its signature does not verify against the signers before it: {e}"))?;
    let s = &v.statement;
    let bound = subject(
        change.kind,
        change.seq,
        &change.base_sha256,
        &text_sha256(&change.text),
    );
    if s.action != Action::Configure
        || s.scope.as_deref() != Some(change.kind.as_str())
        || s.subject_sha256.as_deref() != Some(bound.as_str())
        || s.change.as_deref() != Some(change.summary.as_str())
    {
        return Err("its statement was made for another change".into());
    }
    if !s.audience.as_ref().is_some_and(|a| audiences.contains(a)) {
        return Err(format!("its statement is for deployment {:?}", s.audience));
    }
    if !(s.issued_at_ms..=s.expires_at_ms).contains(&change.at_ms) {
        return Err("it was committed outside its statement's validity".into());
    }
    if change.by != format!("human:{}", s.signer) {
        return Err(format!(
            "it says it is by {}, but {} signed it",
            change.by, s.signer
        ));
    }
    Ok(())
}
