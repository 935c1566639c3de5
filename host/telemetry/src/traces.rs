//! Trace context: where a span's trace comes from and what it is called.
//!
//! runbox's spans are `tracing` spans; when the binary exports traces
//! (`runbox_server::traces`, turned on by `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! `tracing-opentelemetry` gives each one an OpenTelemetry span. This
//! module is the one place that reads or sets that context, so the crates
//! that do the work never name an OpenTelemetry type:
//!
//! - [`continue_trace`] makes a span continue the W3C `traceparent` an agent
//!   sent (an HTTP header, or an MCP request's `_meta`), so the agent's own
//!   trace goes on into runbox;
//! - [`trace_id`] reads the trace a span is in, which each step record
//!   keeps so an SRE can go from the postmortem to the trace.
//!
//! With traces off both return at once after one atomic load.
//!
//! ```
//! let span = tracing::info_span!("request");
//! runbox_telemetry::traces::continue_trace(
//!     &span,
//!     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
//!     None,
//! );
//! // Traces are off here (nothing exports them): no trace id.
//! assert_eq!(runbox_telemetry::traces::trace_id(&span), None);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported ([`set_exporting`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says that spans are exported from now on: the exporter's installer calls
/// it once the layer is in place.
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The id of the trace `span` is in (32 lowercase hex digits), when spans
/// are exported and this one is sampled.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !exporting() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let span_context = otel.span_context();
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| span_context.trace_id().to_string())
}

/// Makes `span` continue the W3C trace context of `traceparent` (and
/// `tracestate`): call it before the span is entered. A header that does not
/// parse (wrong version, length, digits, or an all-zero id) is ignored, as
/// the W3C Trace Context spec asks: the span then starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| exporting()) else {
        return;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when the span is already built or disabled: then it
        // keeps the trace it has.
        let _ = span.set_parent(parent);
    }
}
