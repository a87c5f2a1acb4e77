//! The tracing phase (issue 10): what exporting every trace costs. The REST GET load runs through two pairs of
//! a gateway and a UserService over one seeded database, alternating for `--tracing-rounds` rounds: one pair
//! with tracing off, the other with both processes started with `--otlp-endpoint` at an OTLP/gRPC collector
//! that the benchmark runs in-process and `--trace-sample-ratio 1.0`, so every request is one exported trace of four spans (the gateway's server and
//! client spans, the UserService's server span, the store's span). It reports each process's CPU per request in
//! both modes, the ratio (the target is at most 1.25×), the spans the collector received, and the spans the
//! processes report as exported or dropped on their /metrics.
//!
//! Tracing off is simply no `--otlp-endpoint`: Portico has no other switch. Without an endpoint no exporter or
//! tracer is built and nothing connects anywhere, so the off mode is also what every other phase
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
    BoxError, Phase, PhaseResult, Proc, Server, Settings, Tally, Target, cell, cpu_snapshot, drive, fmt_ratio,
    http_call, print_table_header, ratio, seed, start_user_service_with, wait_until_ready,
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
    /// Measurements of each mode, alternating off and on.
    rounds: usize,
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

/// Runs the REST GET load with tracing off and on, alternating for `--tracing-rounds`; see the module's comment.
pub async fn run(settings: &Settings, dir: &Path, ticks_per_sec: f64) -> Result<TracingResult, BoxError> {
    let (collector, collector_addr) = Collector::start().await?;
    let db = dir.join("tracing.db");

    // The untraced pair creates and seeds the database before the traced pair opens it (two processes
    // migrating one file at once would race). Both pairs stay up, so that the modes can alternate: an idle
    // pair costs nothing measurable, and alternating spreads the machine's drift over both modes.
    let mut off_pair = Pair::start(settings, &db, "tracing off", &[])?;
    let off_channels = off_pair.channels(settings.grpc_connections).await?;
    let ids = seed(&off_channels, settings.users, settings.workers).await?;
    let otlp: [OsString; 4] = [
        "--otlp-endpoint".into(),
        format!("http://{collector_addr}").into(),
        "--trace-sample-ratio".into(),
        "1.0".into(),
    ];
    let mut on_pair = Pair::start(settings, &db, "tracing on", &otlp)?;
    let on_channels = on_pair.channels(settings.grpc_connections).await?;
    wait_until_ready(off_pair.gateway.addr()).await?;
    wait_until_ready(on_pair.gateway.addr()).await?;
    let off_target = Arc::new(Target::new(off_pair.gateway.addr(), off_channels, ids.clone())?);
    let on_target = Arc::new(Target::new(on_pair.gateway.addr(), on_channels, ids)?);
    let (off_pids, on_pids) = (off_pair.pids(), on_pair.pids());

    let mut off = Totals::default();
    let mut on = Totals::default();
    let mut spans_in_window = 0;
    for _ in 0..settings.tracing_rounds {
        for server in
            [&mut off_pair.gateway, &mut off_pair.user_service, &mut on_pair.gateway, &mut on_pair.user_service]
        {
            server.ensure_running()?;
        }
        let run =
            drive(Phase::RestGetTracingOff, settings, &off_target, || std::future::ready(cpu_snapshot(&off_pids)))
                .await?;
        off.add(run.tally, run.elapsed, &run.before, &run.after);
        let run = drive(Phase::RestGetTracingOn, settings, &on_target, || {
            std::future::ready(cpu_snapshot(&on_pids).map(|cpu| (cpu, collector.total())))
        })
        .await?;
        on.add(run.tally, run.elapsed, &run.before.0, &run.after.0);
        spans_in_window += run.after.1.saturating_sub(run.before.1);
    }
    let gateway_export = export_counters(on_pair.gateway.addrs[1]).await?;
    let user_service_export = export_counters(on_pair.user_service.addrs[1]).await?;
    // As in the other phases: the client connections close before the servers drain. On SIGTERM each traced
    // process exports what it still holds before it exits.
    drop((off_target, on_target));
    drop((on_pair, off_pair));
    let spans_by_service = collector.settled().await;
    Ok(TracingResult {
        off: off.result(Phase::RestGetTracingOff, ticks_per_sec),
        on: on.result(Phase::RestGetTracingOn, ticks_per_sec),
        rounds: settings.tracing_rounds,
        collector: collector_addr,
        spans_in_window,
        spans_by_service,
        gateway_export,
        user_service_export,
    })
}

/// One mode's measurements summed over the rounds.
#[derive(Default)]
struct Totals {
    tally: Tally,
    elapsed: Duration,
    cpu_ticks: [u64; 3],
}

impl Totals {
    fn add(&mut self, tally: Tally, elapsed: Duration, before: &[u64; 3], after: &[u64; 3]) {
        self.tally.merge(tally);
        self.elapsed += elapsed;
        for (total, (b, a)) in self.cpu_ticks.iter_mut().zip(before.iter().zip(after)) {
            *total += a.saturating_sub(*b);
        }
    }

    fn result(self, phase: Phase, ticks_per_sec: f64) -> PhaseResult {
        PhaseResult::new(phase, self.tally, self.elapsed, self.cpu_ticks, ticks_per_sec)
    }
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
            "Tracing: REST GET with tracing off (no --otlp-endpoint) and on (--otlp-endpoint http://{} \
             --trace-sample-ratio 1.0, a collector inside the benchmark), {} alternating round(s) summed",
            self.collector, self.rounds
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
        println!("  (tracing off is no --otlp-endpoint: no exporter, no tracer, no connection)");
        for result in [&self.off, &self.on].into_iter().filter(|r| r.errors > 0) {
            println!("{}: first error: {}", result.phase.label(), result.first_error.as_deref().unwrap_or("?"));
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "note": "REST GET with tracing off (no --otlp-endpoint) and on (--otlp-endpoint at a collector in \
                     the benchmark, --trace-sample-ratio 1.0), through two gateway and UserService pairs over one \
                     database, alternating; each mode's figures are the sums over the rounds",
            "rounds": self.rounds,
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
