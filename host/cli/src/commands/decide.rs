//! The seven human verbs (`approve`, `deny`, `takeover`, `handback`,
//! `resolve`, `retry`, `skip`): one path, [`run`], over an [`Action`].
//! Each verb keeps its own arguments (what it names); signing, sending to
//! the data dir's owner and checking a statement made elsewhere are
//! `sign::Signing`'s.

use std::process::ExitCode;

use anyhow::Result;
use runbox_core::attempt::Outcome;
use runbox_trust::Action;

use super::sign::{Signing, Wanted};
use crate::context::Context;
use crate::output::outln;

/// `approve` and `deny`: the step awaiting approval.
#[derive(Debug, clap::Args)]
pub(crate) struct OnStep {
    /// Incident id.
    id: String,
    /// The step awaiting approval.
    step: String,
    #[command(flatten)]
    signing: Signing,
}

/// `takeover` and `handback`: the incident as a whole.
#[derive(Debug, clap::Args)]
pub(crate) struct OnIncident {
    /// Incident id.
    id: String,
    #[command(flatten)]
    signing: Signing,
}

/// `retry` and `skip`: the step a human settles.
#[derive(Debug, clap::Args)]
pub(crate) struct Settle {
    /// Incident id.
    id: String,
    /// The step.
    #[arg(long)]
    step: String,
    #[command(flatten)]
    signing: Signing,
}

/// `resolve`: the step and the outcome the human states.
#[derive(Debug, clap::Args)]
pub(crate) struct Resolve {
    /// Incident id.
    id: String,
    /// The step.
    #[arg(long)]
    step: String,
    /// ok, retry, escalate or fail.
    #[arg(long)]
    outcome: Outcome,
    #[command(flatten)]
    signing: Signing,
}

/// A verb's arguments, as one decision.
pub(crate) struct Verb<'a> {
    action: Action,
    id: &'a str,
    step: Option<&'a str>,
    outcome: Option<Outcome>,
    signing: &'a Signing,
}

impl OnStep {
    pub(crate) fn verb(&self, action: Action) -> Verb<'_> {
        Verb::new(action, &self.id, Some(&self.step), None, &self.signing)
    }
}

impl OnIncident {
    pub(crate) fn verb(&self, action: Action) -> Verb<'_> {
        Verb::new(action, &self.id, None, None, &self.signing)
    }
}

impl Settle {
    pub(crate) fn verb(&self, action: Action) -> Verb<'_> {
        Verb::new(action, &self.id, Some(&self.step), None, &self.signing)
    }
}

impl Resolve {
    pub(crate) fn verb(&self) -> Verb<'_> {
        let outcome = Some(self.outcome);
        Verb::new(
            Action::Resolve,
            &self.id,
            Some(&self.step),
            outcome,
            &self.signing,
        )
    }
}

impl<'a> Verb<'a> {
    fn new(
        action: Action,
        id: &'a str,
        step: Option<&'a str>,
        outcome: Option<Outcome>,
        signing: &'a Signing,
    ) -> Self {
        Verb {
            action,
            id,
            step,
            outcome,
            signing,
        }
    }

    /// What the command says once the decision is committed.
    fn said(&self) -> String {
        let (id, name) = (self.id, self.signing.name());
        let step = self.step.unwrap_or("-");
        match self.action {
            Action::Approve => format!("{id}: approved `{step}` as human:{name} (signed)"),
            Action::Deny => format!("{id}: denied `{step}`; escalated to human:{name} (signed)"),
            Action::Takeover => format!("{id}: now owned by human:{name}"),
            Action::Handback => format!("{id}: handed back to agent:runbox"),
            Action::Resolve => format!(
                "{id}: `{step}` settled as {} by human:{name}",
                self.outcome
                    .map_or_else(|| "-".to_string(), |o| o.to_string())
            ),
            Action::Retry => format!("{id}: `{step}` will run again"),
            Action::Skip => format!("{id}: `{step}` skipped"),
            Action::RotateToken | Action::ReleaseBrake | Action::Configure => {
                format!("{id}: {}", self.action)
            }
        }
    }
}

/// Signs (or reads) the decision, hands it to the data dir's owner, and
/// says what it did; with `--statement-out`, only writes the statement.
pub(crate) async fn run(verb: Verb<'_>, ctx: &Context) -> Result<ExitCode> {
    let wanted = Wanted {
        action: verb.action,
        incident: verb.id,
        step: verb.step,
        outcome: verb.outcome,
    };
    if let Some(code) = verb.signing.decide(ctx, &wanted).await? {
        return Ok(code);
    }
    outln!("{}", verb.said());
    Ok(ExitCode::SUCCESS)
}
