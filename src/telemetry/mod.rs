//! Telemetry: log lines (`logs.rs`), OpenTelemetry traces (`traces.rs`: the exporter and trace context;
//! `spans.rs`: the spans and the request span current on a task), Prometheus metrics (`metrics.rs`), and the
//! layers that produce them at well-defined points: the gateway's HTTP server layer (`http.rs`), the
//! UserService's gRPC server span (`grpc.rs`). The upstream call (one client span per attempt) and the store
//! (one span per statement) use the helpers of `grpc.rs` and `store.rs`.

pub mod access_log;
pub mod grpc;
pub mod http;
pub mod log_sink;
mod logs;
pub mod metrics;
pub mod otlp;
pub mod spans;
pub mod store;
pub mod traces;
pub mod upstream;

pub use logs::LogFormat;
pub use traces::{TraceConfig, TraceSetupError};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installed telemetry; flushes the spans still queued when dropped (at the end of `main`).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (within the exporter's timeout), off the async threads, and writes the
    /// log lines still buffered.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let finished = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = finished {
                tracing::warn!(%error, "trace export did not finish at shutdown");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace export did not finish at shutdown");
        }
        log_sink::flush();
    }
}

/// Installs the global subscriber: log lines filtered by `RUST_LOG` (default `info`), and, when `traces` is
/// set, the tracer and the layer that makes the warnings logged inside a request events of its span. Calling
/// it twice changes nothing the second time.
///
/// # Errors
///
/// Invalid trace settings.
pub fn init(format: LogFormat, traces: Option<&TraceConfig>) -> Result<Telemetry, TraceSetupError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = traces.map(traces::provider).transpose()?;
    if let Some(provider) = &provider {
        traces::install(provider);
    }
    let warnings = provider.as_ref().map(|_| spans::WarningsAsEvents);
    // Events the log filter drops do not become span events either.
    let _ = tracing_subscriber::registry().with(filter()).with(warnings).with(logs::layer(format)).try_init();
    Ok(Telemetry { provider })
}
