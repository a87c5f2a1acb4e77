//! The tracing phase (issue 10): what exporting every trace costs. The REST GET load runs twice, on a fresh
//! UserService and gateway each time, over one seeded database: first with tracing off, then with both
//! processes started with `--otlp-endpoint` at an OTLP/gRPC collector that the benchmark runs in-process and
//! `--trace-sample-ratio 1.0`, so every request is one exported trace of four spans (the gateway's server and
//! client spans, the UserService's server span, the store's span). It reports each process's CPU per request in
//! both modes, the ratio (the target is at most 1.25×), the spans the collector received, and the spans the
//! processes report as exported or dropped on their /metrics.
//!
//! Tracing off is simply no `--otlp-endpoint`: Portico has no other switch. Without an endpoint no exporter or
//! OpenTelemetry layer is built and nothing connects anywhere, so the off mode is also what every other phase
//! of this benchmark measures.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use super::{
    BoxError, Phase, PhaseResult, Proc, Server, Settings, Target, cell, cpu_snapshot, drive, fmt_ratio, http_call,
    print_table_header, ratio, seed, start_user_service_with, wait_until_ready,
};

/// Tracing on may cost at most this many times the CPU per request of tracing off, in each process.
pub const TARGET_RATIO: f64 = 1.25;
/// How long the collector must see no new span, after the traced servers stopped, before the count is final.
const QUIET: Duration = Duration::from_millis(1500);
/// The longest wait for the servers' last batches.
const FLUSH_LIMIT: Duration = Duration::from_secs(15);

/// An OTLP/gRPC trace collector that counts the spans it receives by `service.name`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<BTreeMap<String, u64>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = BTreeMap::<String, u64>::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "(no service.name)".to_string());
            let count: usize = resource_spans.scope_spans.iter().map(|scope| scope.spans.len()).sum();
            *received.entry(service).or_default() += count as u64;
        }
        // Counted outside the decoding above, so the lock is held for a few additions only.
        let mut spans = self.spans.lock().map_err(|_| tonic::Status::internal("the span count is poisoned"))?;
        for (service, count) in received {
            *spans.entry(service).or_default() += count;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves the collector on a free port of 127.0.0.1 for as long as the benchmark runs.
    async fn start() -> Result<(Self, SocketAddr), BoxError> {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(async move {
            if let Err(error) = server.await {
                eprintln!("gateway bench: the OTLP collector stopped: {error}");
            }
        });
        Ok((collector, addr))
    }

    fn by_service(&self) -> BTreeMap<String, u64> {
        self.spans.lock().map(|spans| spans.clone()).unwrap_or_default()
    }

    fn total(&self) -> u64 {
        self.by_service().values().sum()
    }

    /// Waits until no span has arrived for [`QUIET`] (or [`FLUSH_LIMIT`] has passed).
    async fn settled(&self) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + FLUSH_LIMIT;
        let mut last = self.total();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.total();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        self.by_service()
    }
}

/// What one traced process said on its /metrics about its exporter, read right after the measurement.
#[derive(Default)]
struct ExportCounters {
    exported: u64,
    dropped: u64,
}

/// `portico_trace_spans_exported_total` and the sum of `portico_trace_spans_dropped_total{reason=…}`.
async fn export_counters(admin: SocketAddr) -> Result<ExportCounters, BoxError> {
    let host = HeaderValue::from_str(&admin.to_string())?;
    let body = http_call(admin, &host, &mut None, Method::GET, "/metrics", None).await?;
    let text = String::from_utf8_lossy(&body);
    let mut counters = ExportCounters::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        if name == "portico_trace_spans_exported_total" {
            counters.exported += value;
        } else if name.starts_with("portico_trace_spans_dropped_total") {
            counters.dropped += value;
        }
    }
    Ok(counters)
}

/// The phase's figures.
pub struct TracingResult {
    off: PhaseResult,
    on: PhaseResult,
    collector: SocketAddr,
    /// Spans the collector received while the traced load was measured (batches leave every second, so
    /// this lags the requests by up to that).
    spans_in_window: u64,
    /// Everything the collector received from the traced pair, warm-up and the final flush included.
    spans_by_service: BTreeMap<String, u64>,
    gateway_export: ExportCounters,
    user_service_export: ExportCounters,
}

/// A UserService and a gateway in front of it, both with an admin listener (for /metrics), plus `extra`
/// arguments for both (the OTLP flags, or none).
struct Pair {
    gateway: Server,
    user_service: Server,
}

impl Pair {
    fn start(settings: &Settings, db: &Path, mode: &str, extra: &[OsString]) -> Result<Self, BoxError> {
        let admin: [OsString; 2] = ["--admin-listen".into(), "127.0.0.1:0".into()];
        let mut args = admin.to_vec();
        args.extend_from_slice(extra);
        let user_service = start_user_service_with(
            &format!("user-service ({mode})"),
            &["user service listening", "admin listening"],
            settings,
            "127.0.0.1:0".parse()?,
            db,
            &args,
        )?;
        let mut gateway_args: Vec<OsString> = vec![
            "gateway".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            format!("http://{}", user_service.addr()).into(),
        ];
        gateway_args.extend(args);
        let gateway = Server::start(
            &format!("gateway ({mode})"),
            &["gateway listening", "admin listening"],
            &gateway_args,
            &settings.log_filter,
        )?;
        Ok(Self { gateway, user_service })
    }

    fn pids(&self) -> [String; 3] {
        [self.gateway.pid(), self.user_service.pid(), "self".to_string()]
    }

    async fn channels(&self, count: usize) -> Result<Vec<Channel>, BoxError> {
        let upstream = format!("http://{}", self.user_service.addr());
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Channel::from_shared(upstream.clone())?.connect().await;
            channels.push(channel.map_err(|e| format!("cannot connect to the UserService at {upstream}: {e}"))?);
        }
        Ok(channels)
    }
}

/// Runs the REST GET load with tracing off and then on; see the module's comment.
pub async fn run(settings: &Settings, dir: &Path, ticks_per_sec: f64) -> Result<TracingResult, BoxError> {
    let (collector, collector_addr) = Collector::start().await?;
    let db = dir.join("tracing.db");

    // Tracing off: the pair seeds the database that the traced pair reads after it.
    let mut off_pair = Pair::start(settings, &db, "tracing off", &[])?;
    let channels = off_pair.channels(settings.grpc_connections).await?;
    let ids = seed(&channels, settings.users, settings.workers).await?;
    wait_until_ready(off_pair.gateway.addr()).await?;
    off_pair.user_service.ensure_running()?;
    off_pair.gateway.ensure_running()?;
    let target = Arc::new(Target::new(off_pair.gateway.addr(), channels, ids.clone())?);
    let pids = off_pair.pids();
    let run = drive(Phase::RestGetTracingOff, settings, &target, || std::future::ready(cpu_snapshot(&pids))).await?;
    let off = phase_result(Phase::RestGetTracingOff, run.tally, run.elapsed, &run.before, &run.after, ticks_per_sec);
    // As in the other phases: the client connections close before the servers drain.
    drop(target);
    drop(off_pair);
    let received_untraced = collector.total();
    if received_untraced > 0 {
        return Err(format!("the collector received {received_untraced} spans from the untraced servers").into());
    }

    let otlp: [OsString; 4] = [
        "--otlp-endpoint".into(),
        format!("http://{collector_addr}").into(),
        "--trace-sample-ratio".into(),
        "1.0".into(),
    ];
    let mut on_pair = Pair::start(settings, &db, "tracing on", &otlp)?;
    let channels = on_pair.channels(settings.grpc_connections).await?;
    wait_until_ready(on_pair.gateway.addr()).await?;
    on_pair.user_service.ensure_running()?;
    on_pair.gateway.ensure_running()?;
    let target = Arc::new(Target::new(on_pair.gateway.addr(), channels, ids)?);
    let pids = on_pair.pids();
    let run = drive(Phase::RestGetTracingOn, settings, &target, || {
        std::future::ready(cpu_snapshot(&pids).map(|cpu| (cpu, collector.total())))
    })
    .await?;
    let on = phase_result(Phase::RestGetTracingOn, run.tally, run.elapsed, &run.before.0, &run.after.0, ticks_per_sec);
    let spans_in_window = run.after.1.saturating_sub(run.before.1);
    let gateway_export = export_counters(on_pair.gateway.addrs[1]).await?;
    let user_service_export = export_counters(on_pair.user_service.addrs[1]).await?;
    drop(target);
    // SIGTERM: each process exports what it still holds before it exits.
    drop(on_pair);
    let spans_by_service = collector.settled().await;
    Ok(TracingResult {
        off,
        on,
        collector: collector_addr,
        spans_in_window,
        spans_by_service,
        gateway_export,
        user_service_export,
    })
}

fn phase_result(
    phase: Phase,
    tally: super::Tally,
    elapsed: Duration,
    before: &[u64; 3],
    after: &[u64; 3],
    ticks_per_sec: f64,
) -> PhaseResult {
    let cpu_ticks = [0, 1, 2].map(|i| after[i].saturating_sub(before[i]));
    PhaseResult::new(phase, tally, elapsed, cpu_ticks, ticks_per_sec)
}

impl TracingResult {
    fn cpu_ratio(&self, process: Proc) -> Option<f64> {
        ratio(self.on.per_10k(process), self.off.per_10k(process))
    }

    fn verdict(ratio: Option<f64>) -> &'static str {
        match ratio {
            Some(r) if r <= TARGET_RATIO => "PASS",
            Some(_) => "FAIL",
            None => "n/a",
        }
    }

    fn spans_total(&self) -> u64 {
        self.spans_by_service.values().sum()
    }

    pub fn print(&self) {
        println!();
        println!(
            "Tracing: REST GET with tracing off (no --otlp-endpoint), then on (--otlp-endpoint http://{} \
             --trace-sample-ratio 1.0, a collector inside the benchmark)",
            self.collector
        );
        print_table_header("usersvc");
        self.off.print_row();
        self.on.print_row();
        for (label, process) in [("gateway", Proc::Gateway), ("UserService", Proc::UserService)] {
            let ratio = self.cpu_ratio(process);
            println!(
                "{label} CPU per GET, tracing on / off = {}, target ≤ {TARGET_RATIO}×: {}",
                fmt_ratio(ratio),
                Self::verdict(ratio)
            );
        }
        let per_request =
            |spans: u64| (self.on.requests > 0).then(|| spans as f64 / (self.on.requests + self.on.errors) as f64);
        let services: Vec<String> =
            self.spans_by_service.iter().map(|(service, count)| format!("{service} {count}")).collect();
        println!(
            "Spans received by the collector: {} in the measured {:.1} s ({} per request), {} in all ({})",
            self.spans_in_window,
            self.on.elapsed.as_secs_f64(),
            cell(per_request(self.spans_in_window), 2),
            self.spans_total(),
            services.join(", "),
        );
        println!(
            "  exporters' /metrics after the load: gateway {} exported, {} dropped; UserService {} exported, {} \
             dropped",
            self.gateway_export.exported,
            self.gateway_export.dropped,
            self.user_service_export.exported,
            self.user_service_export.dropped
        );
        println!("  (tracing off is no --otlp-endpoint: no exporter, no OpenTelemetry layer, no connection)");
        for result in [&self.off, &self.on].into_iter().filter(|r| r.errors > 0) {
            println!("{}: first error: {}", result.phase.label(), result.first_error.as_deref().unwrap_or("?"));
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "note": "REST GET with tracing off (no --otlp-endpoint) and on (--otlp-endpoint at a collector in \
                     the benchmark, --trace-sample-ratio 1.0), each on a fresh gateway and UserService over one \
                     database",
            "off": self.off.to_json(),
            "on": self.on.to_json(),
            "cpu_ratio_on_to_off": { "gateway": self.cpu_ratio(Proc::Gateway),
                                     "user_service": self.cpu_ratio(Proc::UserService),
                                     "target_max": TARGET_RATIO },
            "spans_received_in_window": self.spans_in_window,
            "spans_received_total": self.spans_total(),
            "spans_received_by_service": self.spans_by_service,
            "exporter_metrics": {
                "gateway": { "exported": self.gateway_export.exported, "dropped": self.gateway_export.dropped },
                "user_service": { "exported": self.user_service_export.exported,
                                  "dropped": self.user_service_export.dropped },
            },
        })
    }
}
