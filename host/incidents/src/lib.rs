//! # runbox-incidents: the read model
//!
//! Everything a person, an agent or a report reads about incidents, over a
//! [`runbox_store::Store`] alone: no sandbox, no writes, so it works on a
//! store opened read-only (beside a running `runbox serve`) and links no
//! wasmtime. The engine writes; this crate reads what it wrote.
//!
//! [`Incidents`] answers `status`, `timeline`, `list`, step records, KV and
//! the plan from here; [`verify`] checks that an incident's records agree;
//! [`fleet`] reads brakes and rate-limit counts across incidents;
//! [`config`] reads the fleet's configuration in a shared store and checks
//! its timeline;
//! [`Notification`]s are the outbox's entries and where each delivery stands; and
//! [`deployment`] reads the store's identity, which signed decisions name.
//!
//! ```
//! # fn demo() -> Result<(), runbox_incidents::ReadError> {
//! use std::sync::Arc;
//! use runbox_incidents::Incidents;
//! use runbox_store::MemoryStore;
//!
//! let incidents = Incidents::new(Arc::new(MemoryStore::new()));
//! for summary in incidents.list()? {
//!     println!("{} {} {}", summary.id, summary.status, summary.owner);
//! }
//! assert!(incidents.brakes()?.is_empty());
//! # Ok(()) }
//! # demo().unwrap();
//! ```

#![deny(missing_docs)]

mod alerts;
pub mod config;
pub mod deployment;
pub mod fleet;
mod outbox;
mod query;
mod tally;
pub mod verify;

pub use outbox::Notification;
pub use query::{
    Attempts, EventPages, Events, IncidentSummary, IncidentView, Incidents, LOOKBACK, NextStep,
    Standing, parse_id,
};
pub use tally::{OwnerKind, Tally};

use runbox_core::ident::IdentError;
use runbox_core::runbook::RunbookError;
use runbox_core::tools::ToolError;
use runbox_store::StoreError;

/// Why a read failed. Nothing is ever written by a read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed, or a record does not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such incident.
    #[error("unknown incident `{0}`")]
    UnknownIncident(String),
    /// An id or name is malformed.
    #[error("invalid {what} {:?}: {}", source.value, source.kind.rule())]
    InvalidName {
        /// What it names (`incident id`, …).
        what: &'static str,
        /// The rule it broke.
        #[source]
        source: IdentError,
    },
    /// The runbook recorded at open no longer parses.
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    /// The tool registry recorded at open no longer parses.
    #[error(transparent)]
    Tools(#[from] ToolError),
    /// The allowed_signers file cannot be read.
    #[error(transparent)]
    Trust(#[from] runbox_trust::TrustError),
    /// A rate limit cannot be read for these parameters.
    #[error("{0}")]
    Limit(String),
    /// A document of the fleet's configuration does not parse.
    #[error("{0}")]
    Config(String),
}

type Result<T, E = ReadError> = std::result::Result<T, E>;
