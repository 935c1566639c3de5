//! What an attempt saw, recorded so it can be replayed: its input, every KV
//! read, every tool call with the answer the step received, and every clock
//! reading and random byte it consumed from WASI (whose context is
//! otherwise empty). With the module's sha256 in the step record, that is
//! everything a sandboxed step's behaviour depends on, so a replay against
//! the recording runs it bit for bit, with no real tool and no store.
//!
//! A recording is bounded: past its limit it keeps what it has and says it
//! is not replayable, rather than growing without bound.

use serde::{Deserialize, Serialize};

use crate::attempt::KvWrite;
use crate::tools::ToolMode;

/// The `schema` of recordings this version writes.
pub const RECORDING_SCHEMA: &str = "runbox.recording/v1";

/// What one attempt saw, in the order it saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// [`RECORDING_SCHEMA`].
    pub schema: String,
    /// The input document.
    pub input: serde_json::Value,
    /// Every nondeterministic input, in order.
    pub events: Vec<Seen>,
    /// The KV writes the attempt staged, to compare a replay with.
    #[serde(default)]
    pub kv_writes: Vec<KvWrite>,
    /// Whether every input was kept: `false` past the recording limit.
    pub complete: bool,
    /// Why it is not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    /// The size of the events, as counted against the limits.
    pub bytes: u64,
}

impl Recording {
    /// An empty recording of an attempt given `input`.
    pub fn new(input: serde_json::Value) -> Self {
        Recording {
            schema: RECORDING_SCHEMA.to_string(),
            input,
            events: Vec::new(),
            kv_writes: Vec::new(),
            complete: true,
            incomplete: None,
            bytes: 0,
        }
    }

    /// Whether a replay can answer everything the attempt asked.
    pub fn replayable(&self) -> bool {
        self.complete && self.schema == RECORDING_SCHEMA
    }
}

/// One nondeterministic input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Seen {
    /// A committed KV read: the value, or absent.
    KvGet {
        /// The key.
        key: String,
        /// What the step received (`null` when absent).
        #[serde(with = "crate::attempt::value_text")]
        value: Option<Vec<u8>>,
    },
    /// A tool call and the answer the step received.
    Tool {
        /// The tool.
        name: String,
        /// `read` or `mutate`.
        mode: ToolMode,
        /// The arguments the step passed.
        args: serde_json::Value,
        /// The JSON the step received, or `null` when the call failed.
        answer: Option<serde_json::Value>,
        /// Why the call failed (the step received an error code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The failure was the step's arguments (it received `-4`, not `-6`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bad_args: bool,
    },
    /// A wall-clock reading, in ns since the epoch.
    WallClock {
        /// The reading.
        nanos: u64,
    },
    /// A monotonic-clock reading, in ns.
    MonotonicClock {
        /// The reading.
        nanos: u64,
    },
    /// Random bytes.
    Random {
        /// The bytes, in hex.
        hex: String,
    },
}

impl Seen {
    /// A short description for divergence reports.
    pub fn describe(&self) -> String {
        match self {
            Seen::KvGet { key, .. } => format!("KV read of `{key}`"),
            Seen::Tool { name, args, .. } => format!("call of tool `{name}` with {args}"),
            Seen::WallClock { .. } => "a wall-clock reading".to_string(),
            Seen::MonotonicClock { .. } => "a monotonic-clock reading".to_string(),
            Seen::Random { hex } => format!("{} random bytes", hex.len() / 2),
        }
    }

    /// Its size as counted against the recording limits.
    pub fn size(&self) -> u64 {
        serde_json::to_vec(self).map_or(0, |v| v.len() as u64)
    }
}
