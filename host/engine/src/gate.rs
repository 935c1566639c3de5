//! The gates a step passes before an attempt: a pure decision over inputs
//! the run loop gathers, one small rule per gate, checked in order.
//!
//! | gate | holds the step when |
//! |---|---|
//! | [`read_only`] | read-only mode and the step mutates or writes KV (blocked) |
//! | [`token`] | the step mutates and no valid mutation token was presented (blocked) |
//! | [`module`] | the module changed since open, or no longer loads (blocked) |
//! | [`preconditions`] | a precondition does not hold (escalates) |
//! | [`fleet`] | a brake covers the mutating step (escalates), or a rate limit it needs is full (waits, escalates or trips the brake, per the limit) |
//! | [`approval`] | a high-impact attempt has no approval (waits for a human), or was denied |
//! | [`cooldown`] | a destructive step committed too recently (waits) |
//! | [`backoff`] | the retry backoff has not elapsed (waits) |
//!
//! [`verdict`] returns the first gate's [`Verdict`] (what the gates say of a step; a human's signed decision is `runbox_trust::Decision`), or [`Verdict::Go`];
//! the run loop applies it (records the event, sets the status).

use runbox_core::event::EventKind;
use runbox_core::limits::OnFull;
use runbox_core::records::Approval;
use runbox_core::time::format_ms;

/// Whether a mutation token was presented, and whether it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// None presented.
    Absent,
    /// Presented, and it does not match the stored hash.
    Invalid,
    /// Presented and valid.
    Valid,
}

/// When a cooldown would end, and what it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    /// The last destructive step.
    pub last_step: String,
    /// When it committed.
    pub last_at_ms: u64,
    /// When this step may start.
    pub until_ms: u64,
    /// Whether the timeline already says this attempt is held by it.
    pub recorded: bool,
}

/// What holds a mutating step across incidents (see [`runbox_core::limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetHold {
    /// An engaged brake covers the step.
    Brake {
        /// Its scope.
        scope: String,
        /// The brake, described.
        brake: String,
    },
    /// A rate limit the step needs is full.
    Full {
        /// The limit, described.
        limit: String,
        /// Uses in the window.
        count: u32,
        /// When a use frees.
        frees_at_ms: u64,
        /// What the limit says to do.
        on_full: OnFull,
        /// The brake scope it trips (`on_full = "brake"`).
        scope: String,
        /// Whether the timeline already says this attempt is held by it.
        recorded: bool,
    },
}

/// Everything the gates look at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The incident.
    pub incident: &'a str,
    /// The step.
    pub step: &'a str,
    /// Its action name.
    pub action: &'a str,
    /// The attempt about to run.
    pub attempt: u32,
    /// Read-only (diagnosis) mode.
    pub read_only: bool,
    /// The step's grants reach a mutating tool.
    pub mutates: bool,
    /// The step's grants include KV writes.
    pub writes_kv: bool,
    /// The mutation token.
    pub token: Token,
    /// Why the step's module may not run (changed, unloadable), if so.
    pub module_refused: Option<String>,
    /// The first precondition that does not hold, if any.
    pub failed_precondition: Option<String>,
    /// The step has impact `high`.
    pub high_impact: bool,
    /// The decision recorded for this attempt, if any.
    pub approval: Option<Approval>,
    /// The incident already awaits approval (the request is recorded).
    pub awaiting_approval: bool,
    /// A brake or full rate limit that holds the (mutating) step, if any.
    pub fleet: Option<FleetHold>,
    /// The cooldown that applies, if the step is destructive and one does.
    pub cooldown: Option<Cooldown>,
    /// The retry backoff's end.
    pub not_before_ms: Option<u64>,
    /// Now.
    pub now_ms: u64,
}

/// What the gates decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run the attempt.
    Go {
        /// The human whose approval it runs under.
        approved_by: Option<String>,
    },
    /// A safety rule keeps the step from running in this mode: record it, stop.
    Block {
        /// Why.
        reason: String,
    },
    /// Hand the incident to a human.
    Escalate {
        /// Why.
        reason: String,
    },
    /// Wait for a human's approval; `record` when it is not yet requested.
    RequestApproval {
        /// Whether to record the request (and set the status).
        record: bool,
        /// The request's message.
        message: String,
    },
    /// The attempt was denied: stop without running.
    Denied {
        /// Who denied which attempt.
        reason: String,
    },
    /// Wait until a time; `record` is the timeline event when the hold is
    /// new.
    Wait {
        /// Until when.
        until_ms: u64,
        /// For what.
        reason: String,
        /// The event to record, when it is not recorded yet.
        record: Option<(EventKind, String)>,
    },
    /// A brake holds the step: record it, escalate.
    Braked {
        /// The brake's scope.
        scope: String,
        /// Which brake, and why it is engaged.
        reason: String,
    },
    /// A full limit trips the brake for `scope`, then the step is braked.
    TripBrake {
        /// The brake scope.
        scope: String,
        /// The limit and its count.
        reason: String,
    },
}

/// One gate: `None` lets the step pass.
pub type Gate = fn(&Inputs<'_>) -> Option<Verdict>;

/// The gates, in the order they are checked.
pub const GATES: [Gate; 8] = [
    read_only,
    token,
    module,
    preconditions,
    fleet,
    approval,
    cooldown,
    backoff,
];

/// The first gate that holds the step, or [`Verdict::Go`].
pub fn verdict(inputs: &Inputs<'_>) -> Verdict {
    GATES
        .iter()
        .find_map(|gate| gate(inputs))
        .unwrap_or_else(|| Verdict::Go {
            approved_by: inputs
                .approval
                .as_ref()
                .filter(|a| inputs.high_impact && a.approved)
                .map(|a| a.by.clone()),
        })
}

/// Read-only mode links neither mutating tools nor KV writes.
pub fn read_only(i: &Inputs<'_>) -> Option<Verdict> {
    if !i.read_only || !(i.mutates || i.writes_kv) {
        return None;
    }
    let reason = if i.mutates {
        format!(
            "read-only mode: step `{}` needs a mutating tool, which read-only mode never links",
            i.step
        )
    } else {
        format!(
            "read-only mode: step `{}` needs KV writes, which read-only mode never links ({})",
            i.step,
            runbox_core::policy::READ_ONLY_KV_HINT
        )
    };
    Some(Verdict::Block { reason })
}

/// A mutating step needs the valid mutation token.
pub fn token(i: &Inputs<'_>) -> Option<Verdict> {
    let why = match (i.mutates, i.token) {
        (false, _) | (true, Token::Valid) => return None,
        (true, Token::Invalid) => "the mutation token presented does not match",
        (true, Token::Absent) => {
            "no mutation token presented (RUNBOX_MUTATION_TOKEN or --token-file)"
        }
    };
    Some(Verdict::Block {
        reason: format!("step `{}` calls a mutating tool: {why}", i.step),
    })
}

/// The module must be the one recorded at open, and load.
pub fn module(i: &Inputs<'_>) -> Option<Verdict> {
    i.module_refused
        .clone()
        .map(|reason| Verdict::Block { reason })
}

/// Every precondition must hold.
pub fn preconditions(i: &Inputs<'_>) -> Option<Verdict> {
    i.failed_precondition
        .as_ref()
        .map(|reason| Verdict::Escalate {
            reason: format!("precondition of `{}` does not hold: {reason}", i.step),
        })
}

/// Across incidents: a brake stops a mutating step, and a full rate limit
/// holds it as the limit says. Checked before approval, so no human is
/// asked to approve what cannot run.
pub fn fleet(i: &Inputs<'_>) -> Option<Verdict> {
    match i.fleet.as_ref()? {
        FleetHold::Brake { scope, brake } => Some(Verdict::Braked {
            scope: scope.clone(),
            reason: format!("step `{}` is held: {brake}", i.step),
        }),
        FleetHold::Full {
            limit,
            count,
            frees_at_ms,
            on_full,
            scope,
            recorded,
        } => {
            let reason = format!(
                "rate limit full for `{}`: {count} used, {limit}; a use frees at {}",
                i.step,
                format_ms(*frees_at_ms)
            );
            Some(match on_full {
                OnFull::Wait => Verdict::Wait {
                    until_ms: *frees_at_ms,
                    record: (!recorded)
                        .then(|| (EventKind::Limited, format!("{reason}; the step waits"))),
                    reason,
                },
                OnFull::Escalate => Verdict::Escalate { reason },
                OnFull::Brake => Verdict::TripBrake {
                    scope: scope.clone(),
                    reason,
                },
            })
        }
    }
}

/// A high-impact attempt runs only with a named human's approval.
pub fn approval(i: &Inputs<'_>) -> Option<Verdict> {
    if !i.high_impact {
        return None;
    }
    match &i.approval {
        Some(a) if a.approved => None,
        // A denial escalates at once, so this is only reached if the status
        // was changed by hand; refuse to run either way.
        Some(a) => Some(Verdict::Denied {
            reason: format!("{} denied attempt {} of `{}`", a.by, a.attempt, i.step),
        }),
        None => Some(Verdict::RequestApproval {
            record: !i.awaiting_approval,
            message: format!(
                "step `{}` ({}) has impact high: attempt {} needs a named human's approval (`runbox approve {} {} --as NAME --key KEY`)",
                i.step, i.action, i.attempt, i.incident, i.step
            ),
        }),
    }
}

/// A destructive step waits out its cooldown after the last destructive step.
pub fn cooldown(i: &Inputs<'_>) -> Option<Verdict> {
    let c = i.cooldown.as_ref().filter(|c| i.now_ms < c.until_ms)?;
    let reason = format!(
        "cooldown of `{}`: the last destructive step `{}` committed at {}",
        i.step,
        c.last_step,
        format_ms(c.last_at_ms)
    );
    Some(Verdict::Wait {
        until_ms: c.until_ms,
        record: (!c.recorded).then(|| {
            let message = format!("{reason}; it may start at {}", format_ms(c.until_ms));
            (EventKind::Cooldown, message)
        }),
        reason,
    })
}

/// A retry waits out its backoff.
pub fn backoff(i: &Inputs<'_>) -> Option<Verdict> {
    let until = i.not_before_ms.filter(|&t| i.now_ms < t)?;
    Some(Verdict::Wait {
        until_ms: until,
        reason: format!("backoff before attempt {} of `{}`", i.attempt, i.step),
        record: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs<'static> {
        Inputs {
            incident: "INC-1",
            step: "restart",
            action: "restart the service",
            attempt: 1,
            read_only: false,
            mutates: true,
            writes_kv: false,
            token: Token::Valid,
            module_refused: None,
            failed_precondition: None,
            high_impact: false,
            approval: None,
            awaiting_approval: false,
            fleet: None,
            cooldown: None,
            not_before_ms: None,
            now_ms: 1_000,
        }
    }

    #[test]
    fn brakes_escalate_and_full_limits_do_what_they_say_before_approval() {
        let braked = Inputs {
            high_impact: true,
            fleet: Some(FleetHold::Brake {
                scope: "all".into(),
                brake: "brake `all` engaged".into(),
            }),
            ..inputs()
        };
        assert!(
            matches!(verdict(&braked), Verdict::Braked { scope, reason } if scope == "all" && reason.contains("`all`"))
        );
        let full = |on_full, recorded| Inputs {
            fleet: Some(FleetHold::Full {
                limit: "at most 3 calls".into(),
                count: 3,
                frees_at_ms: 5_000,
                on_full,
                scope: "tool=t".into(),
                recorded,
            }),
            ..inputs()
        };
        assert!(matches!(
            verdict(&full(OnFull::Wait, false)),
            Verdict::Wait {
                until_ms: 5_000,
                record: Some((EventKind::Limited, _)),
                ..
            }
        ));
        assert!(matches!(
            verdict(&full(OnFull::Wait, true)),
            Verdict::Wait { record: None, .. }
        ));
        assert!(matches!(
            verdict(&full(OnFull::Escalate, false)),
            Verdict::Escalate { .. }
        ));
        assert!(matches!(
            verdict(&full(OnFull::Brake, false)),
            Verdict::TripBrake { scope, .. } if scope == "tool=t"
        ));
    }

    fn approval(approved: bool) -> Approval {
        Approval {
            step: "restart".into(),
            attempt: 1,
            by: "human:alice".into(),
            at_ms: 0,
            approved,
            signed: None,
            voided: None,
        }
    }

    #[test]
    fn a_clean_step_goes() {
        assert_eq!(verdict(&inputs()), Verdict::Go { approved_by: None });
    }

    #[test]
    fn read_only_blocks_before_the_token_is_even_looked_at() {
        let i = Inputs {
            read_only: true,
            token: Token::Absent,
            ..inputs()
        };
        assert!(matches!(verdict(&i), Verdict::Block { reason } if reason.contains("read-only")));
    }

    #[test]
    fn a_mutating_step_needs_a_valid_token() {
        for (token, says) in [
            (Token::Absent, "no mutation token"),
            (Token::Invalid, "does not match"),
        ] {
            let i = Inputs { token, ..inputs() };
            assert!(matches!(verdict(&i), Verdict::Block { reason } if reason.contains(says)));
        }
        let reader = Inputs {
            mutates: false,
            token: Token::Absent,
            ..inputs()
        };
        assert_eq!(verdict(&reader), Verdict::Go { approved_by: None });
    }

    #[test]
    fn high_impact_asks_once_runs_approved_and_stops_denied() {
        let ask = Inputs {
            high_impact: true,
            ..inputs()
        };
        assert!(matches!(
            verdict(&ask),
            Verdict::RequestApproval { record: true, .. }
        ));
        let asked = Inputs {
            awaiting_approval: true,
            ..ask.clone()
        };
        assert!(matches!(
            verdict(&asked),
            Verdict::RequestApproval { record: false, .. }
        ));
        let approved = Inputs {
            approval: Some(approval(true)),
            ..ask.clone()
        };
        assert_eq!(
            verdict(&approved),
            Verdict::Go {
                approved_by: Some("human:alice".into())
            }
        );
        let denied = Inputs {
            approval: Some(approval(false)),
            ..ask
        };
        assert!(matches!(verdict(&denied), Verdict::Denied { .. }));
    }

    #[test]
    fn preconditions_escalate_before_approval_is_asked() {
        let i = Inputs {
            high_impact: true,
            failed_precondition: Some("KV `x` is absent".into()),
            ..inputs()
        };
        assert!(matches!(verdict(&i), Verdict::Escalate { reason } if reason.contains("`x`")));
    }

    #[test]
    fn cooldown_waits_and_records_once_then_backoff_waits_silently() {
        let cooling = Inputs {
            cooldown: Some(Cooldown {
                last_step: "restart".into(),
                last_at_ms: 500,
                until_ms: 2_000,
                recorded: false,
            }),
            ..inputs()
        };
        assert!(matches!(
            verdict(&cooling),
            Verdict::Wait {
                until_ms: 2_000,
                record: Some(_),
                ..
            }
        ));
        let over = Inputs {
            now_ms: 2_000,
            not_before_ms: Some(3_000),
            ..cooling
        };
        assert!(matches!(
            verdict(&over),
            Verdict::Wait {
                until_ms: 3_000,
                record: None,
                ..
            }
        ));
    }
}
