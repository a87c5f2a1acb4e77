//! OpenTelemetry traces: the OTLP/gRPC exporter behind a bounded batch queue, a parent-based ratio sampler,
//! and the W3C trace context in and out (HTTP headers, gRPC metadata, the `traceresponse` header).
//!
//! Nothing here runs unless an OTLP endpoint is configured: without one there is no exporter, no connection
//! and no tracer, and `spans.rs` makes no spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use crate::telemetry::metrics;
use crate::telemetry::otlp::OtlpExporter;

/// Spans waiting for export at most; beyond this they are dropped and counted, so a collector that is down
/// costs a fixed amount of memory.
pub const MAX_QUEUED_SPANS: usize = 2048;
/// How often a failing collector is reported in the log at most.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// The share of new traces kept (0.0 to 1.0); a request that arrives with a trace context follows its
    /// parent's decision.
    pub sample_ratio: f64,
    /// `service.name`: `OTEL_SERVICE_NAME` when set, else the program's own name.
    pub service_name: String,
    /// Time one export may take.
    pub export_timeout: Duration,
    /// Time between exports of a partly filled batch.
    pub export_interval: Duration,
}

impl TraceConfig {
    /// Defaults for `endpoint`, sampling everything.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            sample_ratio: 1.0,
            service_name: service_name.into(),
            export_timeout: Duration::from_secs(10),
            export_interval: Duration::from_secs(1),
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("--trace-sample-ratio must be between 0 and 1, not {0}")]
    SampleRatio(f64),
    #[error(transparent)]
    Exporter(#[from] crate::telemetry::otlp::ExporterError),
}

/// Builds the tracer provider: the OTLP exporter (which connects lazily, on the first export), the bounded
/// queue and the sampler. Must run inside the Tokio runtime, which carries the exporter's connection.
///
/// # Errors
///
/// A ratio outside [0, 1] or an endpoint that is not a URL.
pub fn provider(config: &TraceConfig) -> Result<SdkTracerProvider, TraceSetupError> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TraceSetupError::SampleRatio(config.sample_ratio));
    }
    let exporter = OtlpExporter::new(&config.endpoint, config.export_timeout)?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queued: Arc::clone(&queued),
        last_warning: std::sync::Mutex::new(None),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_scheduled_delay(config.export_interval)
            .build(),
    )
    .build();
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host_name()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BoundedQueue { inner: batch, queued })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(resource)
        .build())
}

/// Makes `provider`'s tracer the one every span of the process is made with (see `spans.rs`), and turns trace
/// context handling on. A process builds one provider; a second call changes nothing.
pub fn install(provider: &SdkTracerProvider) {
    if TRACER.set(provider.tracer("portico")).is_ok() {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer every span is made with (see `spans.rs`); `None` while traces are not exported.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get().filter(|_| enabled())
}

/// The context of a request's server span, in the request's extensions, so the spans of the calls it makes
/// can name it as their parent without looking it up through `tracing`.
#[derive(Debug, Clone)]
pub struct ServerSpanContext(pub SpanContext);

/// Whether spans are exported: only then is trace context read, written and reported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

/// Keeps at most [`MAX_QUEUED_SPANS`] spans waiting and counts the rest as dropped, so the drop count is
/// ours to report (the SDK's own queue drops silently after its first warning).
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    /// Spans handed to the batch processor and not yet taken by an export.
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_QUEUED_SPANS).then_some(n + 1))
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            metrics::trace_export().dropped.get_or_create(&metrics::DropLabels { reason: "queue_full" }).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the collector took and what it did not, and warns (at most every [`WARN_INTERVAL`]) when
/// exports fail.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        // The batch left the queue: room for as many new spans.
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(spans)));
        let result = self.inner.export(batch).await;
        let counters = metrics::trace_export();
        match &result {
            Ok(()) => {
                counters.exported.inc_by(spans as u64);
            }
            Err(error) => {
                counters.dropped.get_or_create(&metrics::DropLabels { reason: "export_failed" }).inc_by(spans as u64);
                let mut last = self.last_warning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                    *last = Some(Instant::now());
                    tracing::warn!(%error, spans, "trace export failed; spans dropped (see portico_trace_spans_dropped_total)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The W3C trace context in `headers` (a `traceparent` from an HTTP client or in gRPC metadata, with its
/// `tracestate`), as the remote parent of a server span; `None` when there is none or it does not parse, or
/// while traces are not exported.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(headers.get("traceparent")?.as_bytes())?;
    // tracestate travels with its traceparent; one that does not parse is dropped, as W3C asks.
    let state = headers
        .get("tracestate")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// A W3C `traceparent` (trace context level 1): `version-traceid-parentid-flags` in lowercase hex, the ids not
/// all zeros, version `ff` invalid; a later version may append `-…` fields, which are ignored. Of the flags
/// only "sampled" is kept. Parsed by hand: the propagator's parser splits the value into a vector and parses
/// each part as a number, on every call the UserService gets.
fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_value(&value[..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) || (version > 0 && value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = TraceId::from(hex_value(&value[3..35])?);
    let span_id = SpanId::from(u64::try_from(hex_value(&value[36..52])?).ok()?);
    let flags = TraceFlags::new(u8::try_from(hex_value(&value[53..55])?).ok()?) & TraceFlags::SAMPLED;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((trace_id, span_id, flags))
}

/// The number written by `digits` in lowercase hex (at most 32 of them).
fn hex_value(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// A trace id in lowercase hex, as W3C trace context and the logs write it, without allocating.
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn new(span_context: &SpanContext) -> Self {
        let mut hex = [0u8; 32];
        write_hex(&mut hex, &span_context.trace_id().to_bytes());
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The `traceresponse` header value for a server span (`00-{trace id}-{span id}-{flags}`), as the
/// `traceparent` the span would send.
pub fn traceresponse(span_context: &SpanContext) -> http::HeaderValue {
    // Hex digits and dashes only: always a valid header value.
    http::HeaderValue::from_bytes(&traceparent(span_context)).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// Writes `span_context` as `traceparent` (and `tracestate`, when there is one) into outgoing gRPC
/// metadata, replacing what the client sent: the upstream's parent is this span. An invalid context (no
/// span: tracing is off) leaves the metadata alone. `traceparent` differs on every call, so it is sent never-indexed, like `x-request-id`
/// (see `gateway/metadata.rs`).
pub fn inject(span_context: &SpanContext, metadata: &mut tonic::metadata::MetadataMap) {
    if !span_context.is_valid() {
        return;
    }
    static TRACEPARENT: LazyLock<AsciiMetadataKey> = LazyLock::new(|| AsciiMetadataKey::from_static("traceparent"));
    static TRACESTATE: LazyLock<AsciiMetadataKey> = LazyLock::new(|| AsciiMetadataKey::from_static("tracestate"));
    if let Ok(mut traceparent) = AsciiMetadataValue::try_from(&traceparent(span_context)[..]) {
        traceparent.set_sensitive(true);
        metadata.insert(TRACEPARENT.clone(), traceparent);
    }
    // Most traces carry no state: nothing to write, and a client's own `tracestate` (forwarded with its
    // `traceparent`) must not travel on with ours.
    let state = span_context.trace_state();
    let value = if *state == TraceState::NONE {
        None
    } else {
        AsciiMetadataValue::try_from(state.header().as_str()).ok().filter(|value| !value.is_empty())
    };
    match value {
        Some(value) => {
            metadata.insert(TRACESTATE.clone(), value);
        }
        None => {
            metadata.remove(&*TRACESTATE);
        }
    }
}

/// `00-{trace id}-{span id}-{flags}` (W3C trace context, version 00), written by hand: the header is on every
/// traced call, and the propagator's formatting machinery costs more than the rest of building the call.
fn traceparent(span_context: &SpanContext) -> [u8; 55] {
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&mut value[3..35], &span_context.trace_id().to_bytes());
    write_hex(&mut value[36..52], &span_context.span_id().to_bytes());
    write_hex(&mut value[53..55], &[span_context.trace_flags().to_u8() & 0x01]);
    value
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;
    use opentelemetry::trace::TraceContextExt;

    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

    fn propagator() -> &'static TraceContextPropagator {
        PROPAGATOR.get_or_init(TraceContextPropagator::new)
    }

    struct HeaderExtractor<'a>(&'a http::HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    /// What the SDK's propagator makes of a `traceparent`.
    fn propagator_parse(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_str(value).ok()?);
        let context = propagator().extract(&HeaderExtractor(&headers));
        let span = context.span();
        let parsed = span.span_context();
        parsed.is_valid().then(|| (parsed.trace_id(), parsed.span_id(), parsed.trace_flags()))
    }

    #[test]
    fn traceparent_parses_as_the_w3c_propagator_reads_it() {
        let valid = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-00000000000000000000000000000001-0000000000000001-03",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-fields",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in valid {
            let ours = parse_traceparent(value.as_bytes());
            assert!(ours.is_some(), "{value}");
            assert_eq!(ours, propagator_parse(value), "{value}");
        }
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ];
        for value in invalid {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value}");
        }
    }

    /// The propagator's own `traceparent` for a span context.
    fn propagator_traceparent(span_context: &SpanContext) -> String {
        let context = Context::new().with_remote_span_context(span_context.clone());
        let mut carrier = HashMap::new();
        propagator().inject_context(&context, &mut carrier);
        carrier.remove("traceparent").unwrap_or_default()
    }

    #[test]
    fn traceparent_is_written_as_the_w3c_propagator_writes_it() {
        let cases = [
            (0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128, 0x00f0_67aa_0ba9_02b7_u64, TraceFlags::SAMPLED),
            (1, 1, TraceFlags::default()),
            (u128::MAX, u64::MAX, TraceFlags::new(0xff)),
            (0x0a00_0000_0000_0000_0000_0000_0000_00b0, 0x0c00_0000_0000_00d0, TraceFlags::new(0x02)),
        ];
        for (trace, span, flags) in cases {
            let span_context =
                SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, false, TraceState::default());
            let ours = traceparent(&span_context);
            assert_eq!(std::str::from_utf8(&ours).ok(), Some(propagator_traceparent(&span_context).as_str()));
            assert_eq!(traceresponse(&span_context).as_bytes(), &ours[..]);
            assert_eq!(TraceIdHex::new(&span_context).as_str(), format!("{:032x}", trace));
        }
    }
}
