//! Per-attempt host state: the `T` of each attempt's wasmtime `Store`.
//! Everything the host keeps on the guest's behalf lives here, counted
//! against the step's limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use runbox_core::attempt::{ErrorCategory, KvWrite, LogLine, Outcome, StepError, ToolCall};
use runbox_core::policy::{KeyPatterns, Limits};
use runbox_core::tools::ToolRegistry;

use crate::hooks::{KvSource, MutationGuard};
use crate::output::{CapturedStream, OutputBudget};
use crate::report::StepReport;

/// Arguments for a fresh attempt's state.
pub(crate) struct StepSetup {
    pub step: String,
    pub input: Vec<u8>,
    pub limits: Limits,
    pub read_patterns: KeyPatterns,
    pub write_patterns: KeyPatterns,
    pub granted_tools: Vec<String>,
    pub tools: Arc<ToolRegistry>,
    pub kv: Arc<dyn KvSource>,
    pub guard: Option<Box<dyn MutationGuard>>,
    /// Records or replays what the attempt sees.
    pub tape: crate::tape::Tape,
    /// A component (WASI 0.2 and the WIT interfaces), not a core module.
    pub component: bool,
}

/// Guest memory and table ceilings; remembers which one stopped the guest.
/// `memory_max` bounds all the step's memories together (a component may
/// have several), and the counts bound how many instances, memories and
/// tables its store may hold.
pub(crate) struct StepLimiter {
    memory_max: usize,
    memory_used: usize,
    table_max: usize,
    counts: StoreCounts,
    hit: Option<StepError>,
}

/// How many instances, memories and tables one attempt's store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StoreCounts {
    pub instances: usize,
    pub memories: usize,
    pub tables: usize,
}

impl StoreCounts {
    /// A core module: itself, one memory, up to four tables.
    pub(crate) const MODULE: StoreCounts = StoreCounts {
        instances: 1,
        memories: 1,
        tables: 4,
    };
    /// A component: its core instances (a language runtime brings a few:
    /// the program, libc, the WASI adapter, shims), their memories and
    /// tables. Sized well above what componentize-py and componentize-js
    /// produce, and matched by the pooled engine's slots.
    pub(crate) const COMPONENT: StoreCounts = StoreCounts {
        instances: 64,
        memories: 8,
        tables: 32,
    };
}

impl StepLimiter {
    pub(crate) fn hit(&self) -> Option<StepError> {
        self.hit.clone()
    }
}

impl StepLimiter {
    /// Allows growth up to `max`; past it, remembers why and traps the guest.
    /// `what` is (resource, unit, limit field), e.g. ("memory", "bytes", "limits.memory_mib").
    fn grow(
        &mut self,
        desired: usize,
        max: usize,
        category: ErrorCategory,
        (resource, unit, field): (&str, &str, &str),
    ) -> wasmtime::Result<bool> {
        if desired <= max {
            return Ok(true);
        }
        let message =
            format!("{resource} limit exceeded: wanted {desired} {unit}, {field} allows {max}");
        self.hit = Some(StepError::new(category, message.clone()));
        wasmtime::bail!(message)
    }
}

impl ResourceLimiter for StepLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // All memories together: with one memory this is its own size.
        let total = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        let max = self.memory_max;
        let allowed = self.grow(
            total,
            max,
            ErrorCategory::Memory,
            ("memory", "bytes", "limits.memory_mib"),
        )?;
        self.memory_used = total;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let max = self.table_max;
        self.grow(
            desired,
            max,
            ErrorCategory::Limit,
            ("table", "elements", "limits.table_elements"),
        )
    }

    fn instances(&self) -> usize {
        self.counts.instances
    }

    fn memories(&self) -> usize {
        self.counts.memories
    }

    fn tables(&self) -> usize {
        self.counts.tables
    }
}

impl wasmtime_wasi::WasiView for StepCtx {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiView::ctx(&mut self.wasi)
    }
}

/// Most violations kept per attempt; past this they are only counted.
const MAX_VIOLATIONS: usize = 32;

/// Per-attempt host state: the `T` of the wasmtime `Store`.
pub(crate) struct StepCtx {
    pub(super) wasi: WasiP1Ctx,
    pub(crate) limiter: StepLimiter,
    pub(super) setup: StepSetup,
    pub(super) stdout: CapturedStream,
    pub(super) stderr: CapturedStream,
    pub(super) output: Arc<OutputBudget>,
    pub(super) logs: Vec<LogLine>,
    pub(super) staged: BTreeMap<String, Option<Vec<u8>>>,
    pub(super) staged_bytes: usize,
    pub(super) kv_ops: u32,
    /// The KV budget (`kv_ops` or `kv_write_bytes`) that ran out, if one did.
    pub(super) kv_exhausted: Option<&'static str>,
    pub(super) tool_calls: Vec<ToolCall>,
    /// The live call whose answer has not come yet: if the step is stopped
    /// before it comes, the record keeps it, its outcome unknown.
    pub(super) unanswered: Option<ToolCall>,
    pub(super) tools_exhausted: bool,
    /// The most recent tool call's answer, for `last_tool_answer`; bounded
    /// by `limits.tool_output_bytes` like the answer itself.
    pub(super) last_answer: Option<Vec<u8>>,
    pub(super) mutation_announced: bool,
    pub(super) violations: Vec<StepError>,
    pub(super) violation_count: usize,
    pub(super) finished: Option<(Outcome, Option<serde_json::Value>, Option<String>)>,
    pub(super) stop: Option<StepError>,
}

impl StepCtx {
    pub(crate) fn new(setup: StepSetup) -> Self {
        let output = OutputBudget::new(setup.limits.output_bytes as usize);
        let stdout = CapturedStream::new(output.clone());
        let stderr = CapturedStream::new(output.clone());
        // Empty WASI context: no preopens, no env, no network; argv is just
        // the step name; stdout and stderr are captured, stdin is empty.
        let mut builder = WasiCtxBuilder::new();
        builder
            .arg(&setup.step)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // WASI 0.2 sockets ask this before any address is used: none is.
            .socket_addr_check(|_, _| Box::pin(async { false }));
        // Clocks and randomness are the step's only other inputs: on tape
        // they are recorded (or answered from a recording).
        if setup.tape.is_on() {
            let (wall, monotonic, random) = setup.tape.wasi_sources();
            builder
                .wall_clock(wall)
                .monotonic_clock(monotonic)
                .secure_random(random);
            // WASI 0.2's insecure random and seed are inputs too (a
            // language runtime seeds its hashing with them); core modules
            // never see them, so their recordings stay as they were.
            if setup.component {
                let (_, _, insecure) = setup.tape.wasi_sources();
                builder
                    .insecure_random(insecure)
                    .insecure_random_seed(setup.tape.seed());
            }
        }
        let wasi = builder.build_p1();
        StepCtx {
            wasi,
            limiter: StepLimiter {
                memory_max: setup.limits.memory_bytes(),
                memory_used: 0,
                table_max: setup.limits.table_elements as usize,
                counts: if setup.component {
                    StoreCounts::COMPONENT
                } else {
                    StoreCounts::MODULE
                },
                hit: None,
            },
            stdout,
            stderr,
            output,
            setup,
            logs: Vec::new(),
            staged: BTreeMap::new(),
            staged_bytes: 0,
            kv_ops: 0,
            kv_exhausted: None,
            tool_calls: Vec::new(),
            unanswered: None,
            tools_exhausted: false,
            last_answer: None,
            mutation_announced: false,
            violations: Vec::new(),
            violation_count: 0,
            finished: None,
            stop: None,
        }
    }

    /// The intentional stop that ended the guest, if any. `Some(None)` means
    /// the guest finished normally through `finish`.
    pub(crate) fn stop_reason(&self) -> Option<Option<StepError>> {
        if let Some(stop) = &self.stop {
            return Some(Some(stop.clone()));
        }
        self.finished.as_ref().map(|_| None)
    }

    pub(crate) fn output_overflowed(&self) -> bool {
        self.output.overflowed()
    }

    pub(super) fn violate(&mut self, category: ErrorCategory, message: String) {
        tracing::warn!(step = %self.setup.step, %category, %message, "policy violation");
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(StepError::new(category, message));
        }
    }

    /// Records an intentional stop and returns the error that unwinds the guest.
    pub(super) fn halt(&mut self, category: ErrorCategory, message: String) -> wasmtime::Error {
        let error = StepError::new(category, message);
        let unwind = wasmtime::format_err!("{error}");
        self.stop.get_or_insert(error);
        unwind
    }

    /// Turns the attempt's state into its report.
    pub(crate) fn into_report(self, stop: Option<StepError>) -> StepReport {
        let writes: Vec<KvWrite> = self
            .staged
            .into_iter()
            .map(|(key, value)| KvWrite { key, value })
            .collect();
        let (step_outcome, output, reason) = match self.finished {
            Some((o, output, reason)) => (Some(o), output, reason),
            None => (None, None, None),
        };
        let stopped = stop.is_some();
        let error = stop.or_else(|| self.violations.first().cloned());
        let outcome = match (error.is_some(), step_outcome) {
            (false, Some(o)) => o,
            _ => Outcome::Escalate,
        };
        let (kv_writes, discarded_kv_writes) = if stopped {
            (Vec::new(), writes)
        } else {
            (writes, Vec::new())
        };
        let (mut recording, divergence) = self.setup.tape.finish(&kv_writes);
        let mut tool_calls = self.tool_calls;
        if let Some(call) = self.unanswered {
            if let Some(r) = recording.as_mut().filter(|r| r.complete) {
                // No answer to replay the call with.
                r.complete = false;
                r.incomplete = Some(format!(
                    "the step was stopped while tool `{}` ran: there is no answer to replay",
                    call.name
                ));
            }
            tool_calls.push(call);
        }
        StepReport {
            outcome,
            step_outcome,
            output,
            reason,
            error,
            violations: self.violations,
            logs: self.logs,
            stdout: self.stdout.contents(),
            stderr: self.stderr.contents(),
            kv_writes,
            discarded_kv_writes,
            tool_calls,
            duration_ms: 0,
            recording,
            divergence,
        }
    }
}
