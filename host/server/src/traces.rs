//! Traces out: runbox's `tracing` spans as OpenTelemetry spans, sent over
//! OTLP/HTTP (protobuf) to a collector.
//!
//! Off by default; on when the standard variables name a collector:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is). The rest of the
//! standard set applies as the OpenTelemetry SDK reads it:
//! `OTEL_SERVICE_NAME` (default `runbox`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` and `_TIMEOUT`,
//! `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn them off again.
//!
//! Spans leave on the SDK's batch thread through runbox's own HTTP client
//! (`runbox_notify::HttpClient`: hyper over rustls with ring, the system's
//! roots), driven by the process's tokio runtime. Only runbox's own spans
//! are exported (targets `runbox*` at INFO and above), never a dependency's,
//! and no event: a log line may hold what a step logged, which stays in the
//! logs.
//!
//! A span's trace context is read and set in one place,
//! [`runbox_telemetry::traces`].

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::registry::LookupSpan;

/// How long an export may take when `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`
/// does not say (the OTLP spec's default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer a collector may give to an export (the SDK's own clients'
/// bound).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How long [`Traces::shutdown`] waits for the last spans to leave.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why traces cannot be sent as configured.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A protocol other than OTLP/HTTP with protobuf.
    #[error(
        "{var}={value}: runbox sends OTLP over HTTP as protobuf; set {var}=http/protobuf (a collector's port 4318) or unset it"
    )]
    Protocol {
        /// The variable that asked.
        var: &'static str,
        /// What it asked for.
        value: String,
    },
    /// An exporter other than OTLP.
    #[error("OTEL_TRACES_EXPORTER={0}: runbox exports traces with `otlp` (or `none`)")]
    Exporter(String),
    /// A timeout that is not a number of milliseconds.
    #[error("{var}={value}: not a number of milliseconds")]
    Timeout {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The SDK refused the configuration (an endpoint that is not a URL, a
    /// header that does not parse).
    #[error("cannot build the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The last spans could not be sent at shutdown.
    #[error("the last spans were not all sent: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// The exporter of a process that sends traces; [`Traces::shutdown`] sends
/// what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans still queued (waiting at most [`SHUTDOWN_WAIT`]) and
    /// stops exporting. Call it before the runtime it was given stops.
    pub fn shutdown(self) -> Result<(), TracesError> {
        Ok(self.provider.shutdown_with_timeout(SHUTDOWN_WAIT)?)
    }
}

/// The layer that hands spans to the exporter.
pub type SpanLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// A layer that exports spans, and its exporter, when the environment asks
/// for traces (`Ok(None)` when it does not). The exporter's requests run on
/// `runtime`.
pub fn from_env<S>(
    runtime: tokio::runtime::Handle,
) -> Result<Option<(SpanLayer<S>, Traces)>, TracesError>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    if !wanted()? {
        return Ok(None);
    }
    check_protocol()?;
    let client = OtlpClient {
        http: runbox_notify::HttpClient::new(),
        runtime,
        timeout: export_timeout()?,
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let layer = span_layer(provider.tracer("runbox"));
    runbox_telemetry::traces::set_exporting();
    Ok(Some((layer, Traces { provider })))
}

/// The layer that turns runbox's own spans into `tracer`'s.
fn span_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> SpanLayer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    // Spans only: an event (a log line) may carry what a step logged,
    // which stays in the logs and never leaves for a collector.
    let runbox_spans = Targets::new()
        .with_target("runbox", LevelFilter::INFO)
        .and(filter_fn(is_span));
    // No busy/idle timings (two clock reads each time an async span is
    // entered), no code locations, threads or levels: what a span says is
    // its name, its fields and its time.
    Box::new(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_filter(runbox_spans),
    )
}

/// Whether a callsite is a span's (a named function: the path
/// `Metadata::is_span` is not general enough over lifetimes for the filter).
fn is_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span()
}

/// A variable's value, when set to something other than blanks.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment names a collector and does not turn traces off.
fn wanted() -> Result<bool, TracesError> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => return Err(TracesError::Exporter(other.to_string())),
    }
    Ok(var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
}

/// The first of the protocol variables set must say `http/protobuf`.
fn check_protocol() -> Result<(), TracesError> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = var(name) {
            return match value.trim() {
                "http/protobuf" => Ok(()),
                _ => Err(TracesError::Protocol { var: name, value }),
            };
        }
    }
    Ok(())
}

/// The export timeout the variables give, in milliseconds.
fn export_timeout() -> Result<Duration, TracesError> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ] {
        if let Some(value) = var(name) {
            return match value.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(TracesError::Timeout { var: name, value }),
            };
        }
    }
    Ok(DEFAULT_EXPORT_TIMEOUT)
}

/// What the spans say of their process: the SDK's detectors
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `runbox` when
/// neither names the service, with runbox's version.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| name.as_str() != "unknown_service");
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name("runbox").build()
    }
}

/// The exporter's HTTP client: runbox's, on runbox's runtime.
#[derive(Debug)]
struct OtlpClient {
    http: runbox_notify::HttpClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (http, timeout) = (self.http.clone(), self.timeout);
        // The SDK's batch thread calls from outside any runtime: the
        // exchange runs on the process's, and this waits for its answer.
        let exchange = self
            .runtime
            .spawn(async move { http.send(request, timeout, MAX_ANSWER_BYTES).await });
        Ok(exchange.await??)
    }
}
