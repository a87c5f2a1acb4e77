//! OpenTelemetry traces: the OTLP/gRPC exporter behind a bounded batch queue, a parent-based ratio sampler,
//! and the W3C trace context in and out (HTTP headers, gRPC metadata, the `traceresponse` header).
//!
//! Nothing here runs unless an OTLP endpoint is configured: without one there is no exporter, no connection
//! and no OpenTelemetry layer, so spans are plain `tracing` spans that only the log filter looks at.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::metrics;

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
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
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
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|source| TraceSetupError::Exporter { endpoint: config.endpoint.clone(), source })?;
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

/// The `tracing` layer that turns spans into OpenTelemetry spans for `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    ENABLED.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer().with_tracer(provider.tracer("portico"))
}

static ENABLED: AtomicBool = AtomicBool::new(false);

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

static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

fn propagator() -> &'static TraceContextPropagator {
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Makes `span` continue the W3C trace context in `headers` (a `traceparent` from an HTTP client or in gRPC
/// metadata), if there is one, and returns the span's trace id (lowercase hex) for the logs. Does nothing and
/// returns `None` when tracing is off.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let parent = propagator().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// The `traceresponse` header value for `span` (`00-{trace id}-{span id}-{flags}`), when tracing is on.
pub fn traceresponse(span: &tracing::Span) -> Option<http::HeaderValue> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel_span = context.span();
    let span_context: &SpanContext = otel_span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let value =
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8());
    http::HeaderValue::from_str(&value).ok()
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into outgoing gRPC metadata, replacing what
/// the client sent: the upstream's parent is this span. Leaves the metadata alone when tracing is off.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() || span.is_disabled() {
        return;
    }
    propagator().inject_context(&span.context(), &mut MetadataInjector(metadata));
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

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}
