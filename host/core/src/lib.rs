//! # runbox-core: the domain
//!
//! Everything runbox's other crates agree on, with no I/O beyond reading the
//! user's files: what a runbook, a step policy and a tool are, what an
//! incident's records look like, which identifiers are valid, how `{param}`
//! templates fill in, and where each record is kept.
//!
//! | module | what |
//! |---|---|
//! | [`ident`] | identifier rules and the [`ident::IncidentId`] and [`ident::Name`] newtypes |
//! | [`template`] | the one `{param}` substitution rule |
//! | [`policy`] | a step's grants and limits; key patterns |
//! | [`tools`] | the tool registry and how a call becomes an argv |
//! | [`runbook`] | runbooks: steps, safety rules, transitions |
//! | [`attempt`] | what an attempt did: outcome, errors, tool calls, KV writes |
//! | [`recording`] | what an attempt saw, for replay |
//! | [`records`] | the incident's records: status, owner, checkpoint, step records, timeline |
//! | [`event`] | the kinds of timeline events |
//! | [`alert`] | Alertmanager's webhook payload, its limits, and the records alerts leave |
//! | [`route`] | `routes.toml`: which alert group opens which runbook |
//! | [`limits`] | rate limits and brakes across incidents; the shared plane's layout |
//! | [`fleet_config`] | the fleet's configuration (humans, limits) as versioned documents of a shared store, and its timeline |
//! | [`notify`] | where escalations go (`notify.toml`) and the outbox entries commits write |
//! | [`time`] | timestamps |
//! | [`errors`] | an error chain on one line |
//! | [`files`] | reading user files with a size cap |
//! | [`case`] | the other files users write: `runbox test` cases and KV seeds |
//! | [`text`] | counted nouns in printed text |
//! | [`sync`] | the one poison-tolerant way to take a mutex |
//!
//! ```
//! use runbox_core::ident::IncidentId;
//!
//! let id: IncidentId = "INC-7".parse()?;
//! assert_eq!(id.as_str(), "INC-7");
//! assert!("INC:7".parse::<IncidentId>().is_err());
//! # Ok::<(), runbox_core::ident::IdentError>(())
//! ```

#![deny(missing_docs)]

pub mod alert;
pub mod attempt;
pub mod case;
pub mod errors;
pub mod event;
pub mod files;
pub mod fleet_config;
pub mod ident;
pub mod inert;
pub mod limits;
pub mod notify;
pub mod policy;
pub mod recording;
pub mod records;
pub mod route;
pub mod runbook;
pub mod sync;
pub mod template;
pub mod text;
pub mod time;

/// JSON Schemas of the files users write (runbooks, step policies, tools
/// files, fleet limits, notification sinks, `runbox test` cases, KV seeds, alert routes), generated from the types that parse them, by file name. Editors
/// use them to complete and check TOML (see `docs/runbook.md` and
/// `docs/testing.md`).
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let value = |s: schemars::Schema| serde_json::to_value(s).unwrap_or_default();
    vec![
        (
            "runbook.schema.json",
            value(schemars::schema_for!(runbook::Runbook)),
        ),
        (
            "policy.schema.json",
            value(schemars::schema_for!(policy::StepPolicy)),
        ),
        (
            "tools.schema.json",
            value(schemars::schema_for!(tools::ToolsFile)),
        ),
        (
            "limits.schema.json",
            value(schemars::schema_for!(limits::LimitsFile)),
        ),
        (
            "notify.schema.json",
            value(schemars::schema_for!(notify::NotifyFile)),
        ),
        ("case.schema.json", value(schemars::schema_for!(case::Case))),
        (
            "kv-seed.schema.json",
            value(schemars::schema_for!(case::KvSeed)),
        ),
        (
            "routes.schema.json",
            value(schemars::schema_for!(route::RoutesFile)),
        ),
    ]
}
pub mod tools;
