//! The crash campaigns' history: every observation the checker judges (a
//! committed record, a run of the mutating tool, a human's retry, a fence,
//! a runner cut off from the cluster), appended to `history.jsonl` in the
//! campaign's dir as it is made, and judged by one [`History::apply`] both
//! live and when the file is read again (`crash-campaign --check-history
//! FILE`). A failure is thus kept as the exact sequence that broke it.
//!
//! Invariants judged here:
//! 1. a committed record is never lost or changed (each snapshot of an
//!    incident's records holds every record seen before, same digest);
//! 2. a non-idempotent step's mutating tool runs at most once, plus once
//!    per human retry (counted from the tool's own log);
//! 3. an owner key's fence never decreases;
//! 4. a runner cut off from the cluster starts no mutating call later than
//!    its lease's TTL after the cut (its own clock calls the lease lapsed
//!    by then; docs/ha.md).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// One observation, as one line of the history file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The campaign's settings: the steps that must not run twice and the
    /// runners' lease.
    Began {
        /// The steps whose tool runs once per authorization.
        once: Vec<String>,
        /// The runners' lease TTL, ms.
        lease_ms: u64,
    },
    /// A fault was injected (for whoever reads the file).
    Fault {
        /// Its kind (`runner-kill`, `runner-partition`, …).
        kind: String,
        /// The runner or member it hit.
        victim: String,
    },
    /// A run of the mutating tool, from its own log line.
    ToolCall {
        /// `INCIDENT:STEP`.
        tag: String,
        /// The process that ran it (the runner).
        pid: u32,
        /// When it started, ns since the epoch.
        at_ns: u64,
    },
    /// The committed records of an incident now: each by step, attempt and
    /// digest.
    Records {
        /// The campaign's incident number.
        incident: u32,
        /// `(step, attempt, sha256 of the record)`.
        records: Vec<(String, u64, String)>,
    },
    /// A human retried the step: one more run is authorized.
    Retried {
        /// The campaign's incident number.
        incident: u32,
        /// The step.
        step: String,
    },
    /// An owner key's fence (its create revision) now.
    Fence {
        /// The owner key.
        key: String,
        /// Its create revision.
        revision: i64,
    },
    /// A runner process was cut off from the cluster and later joined.
    Cut {
        /// The runner's name.
        runner: String,
        /// Its process.
        pid: u32,
        /// When the link went down, ns since the epoch.
        from_ns: u64,
        /// When it came back.
        to_ns: u64,
    },
}

/// A tool run, kept to judge cuts that are recorded after it.
#[derive(Debug, Clone, Copy)]
struct Run {
    pid: u32,
    at_ns: u64,
}

/// A cut, kept to judge tool runs recorded after it.
#[derive(Debug, Clone, Copy)]
struct CutWindow {
    pid: u32,
    from_ns: u64,
    to_ns: u64,
}

/// What the history says so far.
#[derive(Default)]
pub struct History {
    file: Option<std::io::BufWriter<std::fs::File>>,
    once: BTreeSet<String>,
    lease_ns: u64,
    records: BTreeMap<(u32, String, u64), String>,
    runs: BTreeMap<String, u32>,
    authorized: BTreeMap<(u32, String), u32>,
    fences: BTreeMap<String, i64>,
    calls: Vec<Run>,
    cuts: Vec<CutWindow>,
    /// Events applied.
    pub events: u64,
    /// Of the mutating calls a cut-off runner started while cut off, the
    /// latest after its cut, ms (`None`: it started none).
    pub latest_call_after_cut_ms: Option<u64>,
}

impl History {
    /// A history written to `path` as it is applied.
    pub fn create(path: &Path) -> Result<History, String> {
        let file =
            std::fs::File::create(path).map_err(|e| format!("history {}: {e}", path.display()))?;
        Ok(History {
            file: Some(std::io::BufWriter::new(file)),
            ..History::default()
        })
    }

    /// Reads the history at `path` again and judges every event in order.
    pub fn replay(path: &Path) -> Result<History, String> {
        let file =
            std::fs::File::open(path).map_err(|e| format!("history {}: {e}", path.display()))?;
        let mut history = History::default();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            let event: Event = serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not an event: {e}", path.display(), n + 1))?;
            history
                .apply(event)
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        }
        Ok(history)
    }

    /// Records `event` (written first, so the file holds the event that
    /// broke an invariant) and judges it.
    pub fn apply(&mut self, event: Event) -> Result<(), String> {
        if let Some(file) = &mut self.file {
            let line = serde_json::to_string(&event).map_err(|e| e.to_string())?;
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .map_err(|e| format!("history: {e}"))?;
        }
        self.events += 1;
        match event {
            Event::Began { once, lease_ms } => {
                self.once = once.into_iter().collect();
                self.lease_ns = lease_ms * 1_000_000;
                Ok(())
            }
            Event::Fault { .. } => Ok(()),
            Event::ToolCall { tag, pid, at_ns } => self.tool_call(tag, Run { pid, at_ns }),
            Event::Records { incident, records } => self.snapshot(incident, records),
            Event::Retried { incident, step } => {
                *self.authorized.entry((incident, step)).or_insert(1) += 1;
                Ok(())
            }
            Event::Fence { key, revision } => {
                let before = self.fences.insert(key.clone(), revision).unwrap_or(0);
                if revision < before {
                    return Err(format!(
                        "the fence of {key} went down: {before} -> {revision}"
                    ));
                }
                Ok(())
            }
            Event::Cut {
                pid,
                from_ns,
                to_ns,
                ..
            } => {
                let cut = CutWindow {
                    pid,
                    from_ns,
                    to_ns,
                };
                self.cuts.push(cut);
                for i in 0..self.calls.len() {
                    let after = self.judge(cut, self.calls[i])?;
                    self.note_after_cut(after);
                }
                Ok(())
            }
        }
    }

    fn tool_call(&mut self, tag: String, run: Run) -> Result<(), String> {
        self.calls.push(run);
        for i in 0..self.cuts.len() {
            let after = self.judge(self.cuts[i], run)?;
            self.note_after_cut(after);
        }
        let ran = self.runs.entry(tag.clone()).or_insert(0);
        *ran += 1;
        let ran = *ran;
        let Some((incident, step)) = tag.split_once(':') else {
            return Err(format!("tool log line `{tag}` names no incident and step"));
        };
        if !self.once.contains(step) {
            return Ok(());
        }
        let incident: u32 = incident
            .parse()
            .map_err(|_| format!("tool log line `{tag}`: no incident number"))?;
        let allowed = self
            .authorized
            .get(&(incident, step.to_string()))
            .copied()
            .unwrap_or(1);
        if ran > allowed {
            return Err(format!(
                "incident {incident}: non-idempotent `{step}` ran {ran} times, {allowed} authorized"
            ));
        }
        Ok(())
    }

    /// Invariant 4 for one cut and one tool run: how long after the cut
    /// the run started, when its runner was cut off then.
    fn judge(&self, cut: CutWindow, run: Run) -> Result<Option<u64>, String> {
        if run.pid != cut.pid || run.at_ns < cut.from_ns || run.at_ns > cut.to_ns {
            return Ok(None);
        }
        let after_ms = (run.at_ns - cut.from_ns) / 1_000_000;
        if run.at_ns - cut.from_ns > self.lease_ns {
            return Err(format!(
                "runner pid {} started a mutating call {after_ms} ms after it was cut off, past its {} ms lease",
                run.pid,
                self.lease_ns / 1_000_000
            ));
        }
        Ok(Some(after_ms))
    }

    fn note_after_cut(&mut self, after_ms: Option<u64>) {
        self.latest_call_after_cut_ms = self.latest_call_after_cut_ms.max(after_ms);
    }

    /// Invariant 1: every record seen before is still there, unchanged.
    fn snapshot(
        &mut self,
        incident: u32,
        records: Vec<(String, u64, String)>,
    ) -> Result<(), String> {
        let now: BTreeMap<(String, u64), String> = records
            .into_iter()
            .map(|(step, attempt, digest)| ((step, attempt), digest))
            .collect();
        for ((_, step, attempt), digest) in self
            .records
            .range((incident, String::new(), 0)..)
            .take_while(|((inc, _, _), _)| *inc == incident)
        {
            match now.get(&(step.clone(), *attempt)) {
                Some(d) if d == digest => {}
                Some(_) => {
                    return Err(format!(
                        "incident {incident}: committed record {step}#{attempt} changed"
                    ));
                }
                None => {
                    return Err(format!(
                        "incident {incident}: committed record {step}#{attempt} was lost"
                    ));
                }
            }
        }
        for ((step, attempt), digest) in now {
            self.records.insert((incident, step, attempt), digest);
        }
        Ok(())
    }

    /// Tool runs seen per `INCIDENT:STEP` tag.
    pub fn runs(&self, tag: &str) -> u32 {
        self.runs.get(tag).copied().unwrap_or(0)
    }

    /// Runs authorized for `step` of `incident` (one, plus human retries).
    pub fn authorized(&self, incident: u32, step: &str) -> u32 {
        self.authorized
            .get(&(incident, step.to_string()))
            .copied()
            .unwrap_or(1)
    }

    /// Mutating tool runs seen.
    pub fn tool_calls(&self) -> u32 {
        self.runs.values().sum()
    }
}

/// The digest a record is compared by.
pub fn digest(record: &serde_json::Value) -> String {
    hex::encode(sha2::Sha256::digest(record.to_string().as_bytes()))
}
