//! `runbox human`: the humans who may decide, their SSH keys in the data
//! dir's allowed_signers. While another process owns the data dir, adding
//! and removing go through its control socket (which serializes edits).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use runbox_server::{HumanKey, Removed};
use runbox_trust::AllowedSigners;

use super::control::{self, Writer};
use super::sign::Consent;
use crate::context::Context;
use crate::output::outln;
use runbox_core::fleet_config::ConfigKind;
use runbox_server::client::route;

/// The largest public key file read: an OpenSSH public key is under 1 KiB
/// (RSA 16384 bits: about 2.8 KiB), and the control socket's bodies are
/// capped at 64 KiB.
const MAX_PUBKEY_BYTES: u64 = 16 * 1024;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Register a human's SSH public key in the data dir's allowed_signers,
    /// or (`--passkey`) print a one-time link that enrolls a passkey in
    /// the web console. Works while a server owns the data dir (through
    /// its control socket); a passkey needs `runbox serve`.
    Add {
        /// The human's name (what `--as` names).
        name: String,
        /// Their public key file (`~/.ssh/id_ed25519.pub`, an `sk-` key, …).
        #[arg(required_unless_present = "passkey", conflicts_with = "passkey")]
        pubkey: Option<PathBuf>,
        /// Enroll a passkey instead: prints a link (valid 15 minutes, used
        /// once) to open in a browser at the console.
        #[arg(long)]
        passkey: bool,
        /// What to call the passkey (`laptop`, `yubikey`).
        #[arg(long, requires = "passkey", default_value = "passkey")]
        label: String,
        /// On a store runners share: the console's address
        /// (`http://HOST:PORT` of any runner's `runbox serve`) the link
        /// opens at.
        #[arg(long, requires = "passkey")]
        console: Option<String>,
        #[command(flatten)]
        consent: Consent,
    },
    /// The humans who may decide, with their key fingerprints and passkeys.
    List,
    /// On a store runners share: list a passkey made at the console (it
    /// waits until then; `runbox human list` shows it), a change of the
    /// fleet timeline signed by one of its humans.
    Accept {
        /// The passkey's fingerprint (`passkey:CREDENTIAL-ID`).
        fingerprint: String,
        #[command(flatten)]
        consent: Consent,
    },
    /// Remove every key of a human: their decisions stop counting, and
    /// `verify` reports the ones already made as unverifiable. Works while
    /// a server owns the data dir (through its control socket).
    Remove {
        /// The human's name.
        name: String,
        #[command(flatten)]
        consent: Consent,
    },
}

pub(crate) async fn run(command: Command, ctx: &Context) -> Result<ExitCode> {
    if ctx.shared_store() {
        return in_store(command, ctx).await;
    }
    let path = ctx.signers_path();
    if let Command::Add { consent, .. } | Command::Remove { consent, .. } = &command {
        consent.not_here()?;
    }

    match command {
        Command::Add {
            name,
            passkey: true,
            label,
            console,
            ..
        } => {
            if console.is_some() {
                anyhow::bail!(
                    "--console names where a shared store's link opens; here the link is the console's that owns the data dir"
                );
            }
            enroll(ctx, name, label).await?;
        }
        Command::Add { name, pubkey, .. } => {
            let text = read_pubkey(pubkey)?;
            let added = match owner_of(ctx)? {
                Writer::Here(_lock) => {
                    let entry = AllowedSigners::add(&path, &name, &text)?;
                    HumanKey {
                        name: name.clone(),
                        fingerprint: entry.fingerprint,
                        algorithm: entry.key.algorithm().to_string(),
                    }
                }
                Writer::Owner(owner) => {
                    let args = runbox_server::HumanArgs {
                        name: name.clone(),
                        key: text.clone(),
                    };
                    owner.post(&route::at(route::ADMIN_HUMANS), &args).await?
                }
            };
            outln!(
                "human:{name} may decide with key {} ({})",
                added.fingerprint,
                added.algorithm
            );
        }
        Command::List => list(&AllowedSigners::read_with_passkeys(&path)?)?,
        Command::Accept { .. } => anyhow::bail!(
            "here a passkey made at the console is listed at once: `human accept` is for a store runners share"
        ),
        Command::Remove { name, .. } => {
            let removed = match owner_of(ctx)? {
                Writer::Here(_lock) => AllowedSigners::remove_human(&path, &name)?,
                Writer::Owner(owner) => {
                    let args = runbox_server::NameArgs { name: name.clone() };
                    let answer: Removed = owner
                        .post(&route::at(route::ADMIN_HUMANS_REMOVE), &args)
                        .await?;
                    answer.removed
                }
            };
            if removed == 0 {
                anyhow::bail!("no key of `{name}` in {}", path.display());
            }
            outln!("removed {removed} key(s) of human:{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The humans, with their keys.
fn list(signers: &AllowedSigners) -> Result<()> {
    for e in signers.entries() {
        outln!(
            "{:<20} {} {}",
            e.names.join(","),
            e.fingerprint,
            e.key.algorithm()
        );
    }
    for p in signers.passkeys().entries() {
        outln!(
            "{:<20} {} {} \"{}\" ({})",
            p.name,
            p.fingerprint(),
            p.algorithm(),
            p.label,
            p.origin
        );
    }
    Ok(())
}

/// A public key file's text, refusing anything larger than a key.
fn read_pubkey(pubkey: Option<PathBuf>) -> Result<String> {
    let pubkey = pubkey.context("a public key file, or --passkey")?;
    runbox_core::files::read_capped(&pubkey, MAX_PUBKEY_BYTES)
        .with_context(|| format!("cannot read {}", pubkey.display()))
}

/// On a store runners share, the humans are the fleet's signers document:
/// each change a signed change of the fleet timeline (the first human's,
/// the mutation token holder's).
async fn in_store(command: Command, ctx: &Context) -> Result<ExitCode> {
    let origin = Path::new(runbox_incidents::config::SIGNERS_ORIGIN);
    match command {
        Command::Add {
            name,
            passkey: true,
            label,
            console,
            ..
        } => {
            let console = console.context(
                "on a store runners share, name the console the link opens at: --console http://HOST:PORT (any runner's `runbox serve`)",
            )?;
            let token = ctx
                .engine_for_config()?
                .fleet()
                .enrollment_link(&name, &label)?;
            eprintln!(
                "runbox: open this link in a browser to enroll a passkey for human:{name} (once, within {} min); it counts once one of the fleet's humans lists it: `runbox human accept FINGERPRINT --as NAME --key KEY` (`runbox human list` shows it)",
                runbox_core::fleet_config::ENROLLMENT_TTL_MS / 60_000
            );
            outln!("{}/ui/enroll#{token}", console.trim_end_matches('/'));
        }
        Command::Add {
            name,
            pubkey,
            consent,
            ..
        } => {
            let key = read_pubkey(pubkey)?;
            let engine = ctx.engine_for_config()?;
            let current = engine.fleet().config_text(ConfigKind::Signers)?;
            let (text, entry) = AllowedSigners::added(&current, origin, &name, &key)?;
            if let Some(change) = consent.change(&engine, ConfigKind::Signers, text)? {
                outln!(
                    "human:{name} may decide with key {} ({}): fleet change {} by {}",
                    entry.fingerprint,
                    entry.key.algorithm(),
                    change.seq,
                    change.by
                );
            }
        }
        Command::Accept {
            fingerprint,
            consent,
        } => {
            let engine = ctx.engine_for_config()?;
            let proposal = engine.fleet().passkey_proposal(&fingerprint)?;
            if let Some(change) = consent.make(&engine, proposal)? {
                outln!(
                    "passkey {fingerprint} listed: fleet change {} by {}",
                    change.seq,
                    change.by
                );
            }
        }
        Command::List => {
            let incidents = ctx.reader()?;
            list(&incidents.signers()?)?;
            for p in runbox_incidents::config::pending_passkeys(&**incidents.store())? {
                outln!(
                    "{:<20} {} {} \"{}\" ({}) waits: runbox human accept {}",
                    p.name,
                    p.fingerprint(),
                    p.algorithm(),
                    p.label,
                    p.origin,
                    p.fingerprint()
                );
            }
        }
        Command::Remove { name, consent } => remove_from_store(ctx, &name, &consent)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes `name`'s SSH keys and passkeys from the store: a signed change
/// for each document that lists any.
fn remove_from_store(ctx: &Context, name: &str, consent: &Consent) -> Result<()> {
    let engine = ctx.engine_for_config()?;
    let mut removed_any = false;
    for kind in [ConfigKind::Signers, ConfigKind::Passkeys] {
        let current = engine.fleet().config_text(kind)?;
        let (text, removed) = match kind {
            ConfigKind::Signers => AllowedSigners::removed(
                &current,
                Path::new(runbox_incidents::config::SIGNERS_ORIGIN),
                name,
            )?,
            _ => runbox_trust::Passkeys::removed(
                &current,
                Path::new(runbox_incidents::config::PASSKEYS_ORIGIN),
                name,
            )?,
        };
        if removed == 0 {
            continue;
        }
        removed_any = true;
        if let Some(change) = consent.change(&engine, kind, text)? {
            outln!(
                "removed {removed} {} of human:{name}: fleet change {} by {}",
                if kind == ConfigKind::Signers {
                    "key(s)"
                } else {
                    "passkey(s)"
                },
                change.seq,
                change.by
            );
        }
    }
    if !removed_any {
        anyhow::bail!("no key of `{name}` in the fleet's signers or passkeys");
    }
    Ok(())
}

/// Asks the server that owns the data dir for a passkey enrollment link.
async fn enroll(ctx: &Context, name: String, label: String) -> Result<()> {
    let Writer::Owner(owner) = owner_of(ctx)? else {
        anyhow::bail!(
            "a passkey is made in a browser, at the console of `runbox serve`: start it on this data dir, then run this again"
        );
    };
    let args = runbox_server::PasskeyArgs {
        name: name.clone(),
        label: Some(label),
    };
    let link: runbox_server::PasskeyLink =
        owner.post(&route::at(route::ADMIN_PASSKEYS), &args).await?;
    outln!(
        "open this link in a browser to enroll a passkey for human:{name} (once, within {} min):\n{}",
        link.expires_in_s / 60,
        link.url
    );
    Ok(())
}

/// Who edits allowed_signers: this process, holding the data dir's lock
/// (so no owner edits it at the same time), or the owner, through its
/// control socket.
fn owner_of(ctx: &Context) -> Result<Writer<runbox_store_rocksdb::DirLock>> {
    control::here_or_owner(ctx.lock_data_dir(), ctx.data_dir())
}
