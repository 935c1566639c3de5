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
}

/// Guest memory and table ceilings; remembers which one stopped the guest.
pub(crate) struct StepLimiter {
    memory_max: usize,
    table_max: usize,
    hit: Option<StepError>,
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
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let max = self.memory_max;
        self.grow(
            desired,
            max,
            ErrorCategory::Memory,
            ("memory", "bytes", "limits.memory_mib"),
        )
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
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
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
            .allow_ip_name_lookup(false);
        // Clocks and randomness are the step's only other inputs: on tape
        // they are recorded (or answered from a recording).
        if setup.tape.is_on() {
            let (wall, monotonic, random) = setup.tape.wasi_sources();
            builder
                .wall_clock(wall)
                .monotonic_clock(monotonic)
                .secure_random(random);
        }
        let wasi = builder.build_p1();
        StepCtx {
            wasi,
            limiter: StepLimiter {
                memory_max: setup.limits.memory_bytes(),
                table_max: setup.limits.table_elements as usize,
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
        let (recording, divergence) = self.setup.tape.finish(&kv_writes);
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
            tool_calls: self.tool_calls,
            duration_ms: 0,
            recording,
            divergence,
        }
    }
}
