//! How a human decision leaves the command line: a statement bound to the
//! incident, signed with the human's SSH key through `ssh-keygen -Y sign`
//! (ssh-agent, passphrases and FIDO keys work as they do for git), or a
//! statement and signature made on another machine. `Humans::decide`
//! verifies it against the data dir's allowed_signers before anything is
//! written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use runbox_core::attempt::Outcome;
use runbox_core::fleet_config::{ConfigChange, ConfigKind};
use runbox_engine::Engine;
use runbox_engine::config::{ConfigAuth, Proposal};
use runbox_engine::decision::Request;
use runbox_server::client::route;
use runbox_server::{StatementArgs, StatementText};
use runbox_trust::{Action, Decision, Statement};

use super::control;
use crate::context::Context;

/// How a human signs a decision.
#[derive(Debug, clap::Args)]
pub(crate) struct Signing {
    /// The human deciding: a name in the data dir's allowed_signers
    /// (`runbox human add`).
    #[arg(long = "as")]
    pub(crate) actor: String,
    /// Sign with this SSH key through `ssh-keygen -Y sign -n runbox`: a
    /// private key file, or the `.pub` of a key held by ssh-agent.
    #[arg(long, env = "RUNBOX_SIGNING_KEY")]
    key: Option<PathBuf>,
    /// A statement made with --statement-out and signed elsewhere.
    #[arg(long, requires = "signature", conflicts_with = "key")]
    statement: Option<PathBuf>,
    /// Its signature: `ssh-keygen -Y sign -n runbox -f KEY STATEMENT`
    /// writes STATEMENT.sig.
    #[arg(long, requires = "statement")]
    signature: Option<PathBuf>,
    /// Write the statement to sign to this file and stop: sign it on the
    /// human's machine, then pass --statement and --signature.
    #[arg(long, conflicts_with_all = ["statement", "key"])]
    statement_out: Option<PathBuf>,
    /// How long the decision counts, at most 24h (`10m`, `2h`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    expires: Duration,
}

/// What the command decides.
pub(crate) struct Wanted<'a> {
    pub(crate) action: Action,
    pub(crate) incident: &'a str,
    pub(crate) step: Option<&'a str>,
    pub(crate) outcome: Option<Outcome>,
}

impl Signing {
    /// A signing for `rotate-token`, whose flags are optional there.
    pub(crate) fn for_token(
        actor: String,
        key: Option<PathBuf>,
        statement: Option<PathBuf>,
        signature: Option<PathBuf>,
    ) -> Self {
        Signing {
            actor,
            key,
            statement,
            signature,
            statement_out: None,
            expires: runbox_engine::decision::DEFAULT_TTL,
        }
    }

    /// The human's name, without an optional `human:` prefix.
    pub(crate) fn name(&self) -> &str {
        self.actor.strip_prefix("human:").unwrap_or(&self.actor)
    }

    /// Signs (or reads) the decision and hands it to the engine: this
    /// process's own, or, while another runbox process owns the data dir,
    /// that process's through its control socket. `None` when only the
    /// statement was written (`--statement-out`).
    pub(crate) async fn decide(
        &self,
        ctx: &Context,
        wanted: &Wanted<'_>,
    ) -> Result<Option<ExitCode>> {
        runbox_core::ident::Name::new(self.name())
            .map_err(|e| anyhow!("invalid human name {:?}: {}", e.value, e.kind.rule()))?;
        if let Some(url) = ctx.server() {
            let owner = control::server(url)?;
            return self.decide_through_owner(&owner, wanted).await;
        }
        let engine = match control::here_or_owner(ctx.engine(), ctx.data_dir())? {
            control::Writer::Here(engine) => engine,
            control::Writer::Owner(owner) => {
                return self.decide_through_owner(&owner, wanted).await;
            }
        };
        let decision = match self.made_elsewhere()? {
            Some(decision) => decision,
            None => {
                let statement = engine.humans().statement(&Request {
                    action: wanted.action,
                    incident: wanted.incident,
                    step: wanted.step,
                    outcome: wanted.outcome,
                    signer: self.name(),
                    ttl: self.expires,
                })?;
                match self.sign(&statement.to_text())? {
                    Some(decision) => decision,
                    None => return Ok(Some(ExitCode::SUCCESS)),
                }
            }
        };
        self.check_matches(&decision, wanted)?;
        engine.humans().decide(&decision)?;
        let engine = std::sync::Arc::new(engine);
        super::notify::deliver_before_exit(&engine, ctx).await;
        Ok(None)
    }

    /// [`Signing::decide`] through the process that owns the data dir (its
    /// control socket, or a `runbox serve`): it binds the statement to the
    /// incident as it stands there, the human signs it here, and it
    /// verifies and commits.
    async fn decide_through_owner(
        &self,
        owner: &control::Owner,
        wanted: &Wanted<'_>,
    ) -> Result<Option<ExitCode>> {
        let decision = match self.made_elsewhere()? {
            Some(decision) => decision,
            None => {
                let args = StatementArgs {
                    step: wanted.step.map(str::to_string),
                    outcome: wanted.outcome,
                    ttl_s: Some(self.expires.as_secs()),
                    ..StatementArgs::new(wanted.action, self.name())
                };
                let path = route::of(route::STATEMENTS, wanted.incident);
                let answer: StatementText = owner.post(&path, &args).await?;
                match self.sign(&answer.statement)? {
                    Some(decision) => decision,
                    None => return Ok(Some(ExitCode::SUCCESS)),
                }
            }
        };
        self.check_matches(&decision, wanted)?;
        let path = route::of(route::DECISIONS, wanted.incident);
        let _: serde_json::Value = owner.post(&path, &decision).await?;
        Ok(None)
    }

    /// A decision for `rotate-token`: it names no incident, and binds the
    /// token it replaces (`subject`, from `Fleet::token_subject`) in the
    /// deployment `audience`.
    pub(crate) fn token_decision(
        &self,
        subject: String,
        audience: &str,
    ) -> Result<Option<Decision>> {
        if let Some(decision) = self.made_elsewhere()? {
            return Ok(Some(decision));
        }
        let mut statement =
            Statement::new(Action::RotateToken, self.name(), self.expires, audience)?;
        statement.subject_sha256 = Some(subject);
        self.sign(&statement.to_text())
    }

    /// How long the decision counts (`--expires`).
    pub(crate) fn expires(&self) -> Duration {
        self.expires
    }

    /// A decision on `text`, a statement that names no incident (a brake's
    /// release): signed here, made elsewhere, or (`None`) written out.
    pub(crate) fn decision_on(&self, text: &str) -> Result<Option<Decision>> {
        if let Some(decision) = self.made_elsewhere()? {
            let s = Statement::parse(&decision.statement)?;
            let asked = Statement::parse(text)?;
            if (s.action, s.scope.as_deref(), s.signer.as_str())
                != (asked.action, asked.scope.as_deref(), self.name())
            {
                bail!(
                    "the statement is a `{}` of {:?} by {}, but this command is a `{}` of {:?} by {}",
                    s.action,
                    s.scope,
                    s.signer,
                    asked.action,
                    asked.scope,
                    self.name()
                );
            }
            return Ok(Some(decision));
        }
        self.sign(text)
    }

    fn made_elsewhere(&self) -> Result<Option<Decision>> {
        let (Some(statement), Some(signature)) = (&self.statement, &self.signature) else {
            return Ok(None);
        };
        Ok(Some(Decision {
            statement: read_small(statement)?,
            signature: read_small(signature)?,
        }))
    }

    /// Signs `text` with --key, or writes it to --statement-out (`None`).
    fn sign(&self, text: &str) -> Result<Option<Decision>> {
        if let Some(out) = &self.statement_out {
            std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "runbox: statement written to {0}; sign it where {1}'s key is:\n  ssh-keygen -Y sign -n runbox -f KEY {0}\nthen run this command again with --statement {0} --signature {0}.sig",
                out.display(),
                self.name()
            );
            return Ok(None);
        }
        let key = self.key.as_ref().ok_or_else(|| {
            anyhow!(
                "a decision by {} must be signed with their SSH key: --key ~/.ssh/id_ed25519 (or the .pub of a key in ssh-agent), or --statement-out FILE to sign it elsewhere",
                self.name()
            )
        })?;
        let signature = runbox_trust::sign_with_ssh_keygen(key, text)?;
        Ok(Some(Decision {
            statement: text.to_string(),
            signature,
        }))
    }

    /// A statement made elsewhere must be the decision this command names.
    fn check_matches(&self, decision: &Decision, wanted: &Wanted<'_>) -> Result<()> {
        let s = Statement::parse(&decision.statement)?;
        let named = (
            s.action,
            s.incident.as_deref(),
            s.step.as_deref(),
            s.signer.as_str(),
        );
        let asked = (
            wanted.action,
            Some(wanted.incident),
            wanted.step,
            self.name(),
        );
        if named != asked {
            bail!(
                "the statement is a `{}` of {} step {} by {}, but this command is a `{}` of {} step {} by {}",
                s.action,
                s.incident.as_deref().unwrap_or("-"),
                s.step.as_deref().unwrap_or("-"),
                s.signer,
                wanted.action,
                wanted.incident,
                wanted.step.unwrap_or("-"),
                self.name()
            );
        }
        if wanted.outcome.is_some() && s.outcome != wanted.outcome.map(|o| o.to_string()) {
            bail!(
                "the statement states outcome {:?}, not {:?}",
                s.outcome,
                wanted.outcome
            );
        }
        Ok(())
    }
}

/// Reads a statement or signature file, refusing anything large.
fn read_small(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > 64 * 1024 {
        bail!(
            "{} is {} bytes: not a statement or signature",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Who consents to a change of the fleet's configuration in a shared
/// store: a human's signature, or, for the first human of an empty store,
/// the mutation token.
#[derive(Debug, clap::Args)]
pub(crate) struct Consent {
    /// On a store runners share: the human consenting to the change, a
    /// name in the fleet's signers (the first human is enrolled with the
    /// mutation token instead).
    #[arg(long = "as")]
    actor: Option<String>,
    /// Sign with this SSH key through `ssh-keygen -Y sign -n runbox`.
    #[arg(long, env = "RUNBOX_SIGNING_KEY", requires = "actor")]
    key: Option<PathBuf>,
    /// A `configure` statement made with --statement-out and signed
    /// elsewhere (with --signature).
    #[arg(long, requires_all = ["signature", "actor"], conflicts_with = "key")]
    statement: Option<PathBuf>,
    /// Its signature.
    #[arg(long, requires = "statement")]
    signature: Option<PathBuf>,
    /// Write the statement to sign to this file and stop.
    #[arg(long, requires = "actor", conflicts_with_all = ["statement", "key"])]
    statement_out: Option<PathBuf>,
    /// How long the statement counts, at most 24h (`10m`, `2h`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    expires: Duration,
    /// File holding the mutation token (else RUNBOX_MUTATION_TOKEN): the
    /// consent to enroll the first human of an empty store.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Consent {
    /// Refuses a consent given where the configuration is the data dir's
    /// files, which whoever holds the data dir edits.
    pub(crate) fn not_here(&self) -> Result<()> {
        if self.actor.is_some() || self.token_file.is_some() {
            bail!(
                "--as and --token-file consent to a change of a shared store's configuration (`--store etcd://…`); here the data dir's files are edited directly"
            );
        }
        Ok(())
    }

    fn signing(&self) -> Option<Signing> {
        Some(Signing {
            actor: self.actor.clone()?,
            key: self.key.clone(),
            statement: self.statement.clone(),
            signature: self.signature.clone(),
            statement_out: self.statement_out.clone(),
            expires: self.expires,
        })
    }

    /// Writes `text` as the fleet's `kind` document, with this consent:
    /// says what the change does, signs (or reads) the statement for it,
    /// and makes it. `None` when only the statement was written.
    pub(crate) fn change(
        &self,
        engine: &Engine,
        kind: ConfigKind,
        text: String,
    ) -> Result<Option<ConfigChange>> {
        self.make(engine, engine.fleet().config_proposal(kind, text)?)
    }

    /// Makes `proposal`, with this consent (see [`Consent::change`]).
    pub(crate) fn make(&self, engine: &Engine, proposal: Proposal) -> Result<Option<ConfigChange>> {
        let kind = proposal.kind;
        eprintln!(
            "runbox: fleet change {}: {}",
            proposal.seq,
            // Names in routes and sinks are the file's: shown inert.
            runbox_core::inert::inert(&proposal.summary)
        );
        let Some(signing) = self.signing() else {
            let token = super::read_token(self.token_file.as_deref())?.ok_or_else(|| {
                anyhow!(
                    "a change of the fleet's {kind} is signed by one of its humans (--as NAME --key KEY); the first human is enrolled with the mutation token (RUNBOX_MUTATION_TOKEN or --token-file)"
                )
            })?;
            return Ok(Some(
                engine
                    .fleet()
                    .configure(proposal, ConfigAuth::Token(&token))?,
            ));
        };
        let statement =
            engine
                .fleet()
                .config_statement(&proposal, signing.name(), signing.expires)?;
        let Some(decision) = signing.decision_on(&statement.to_text())? else {
            return Ok(None);
        };
        Ok(Some(
            engine
                .fleet()
                .configure(proposal, ConfigAuth::Human(&decision))?,
        ))
    }
}
