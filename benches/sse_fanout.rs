//! The fan-out benchmark: how many SSE (or NDJSON) watchers one gateway holds, what each costs in memory, and
//! how fast one change reaches all of them.
//!
//! It starts `portico user-service` (SQLite in a temporary directory) and `portico gateway` as separate release
//! processes, records their idle memory, opens `--watchers` raw HTTP/1.1 keep-alive connections on
//! `GET /v1/users:watch` (`--opening` at a time, so the accept backlog is never overrun), waits until every one
//! has its stream open, records both servers' memory again, then creates `--events` users through the gateway,
//! one at a time, and measures for every watcher the delay from sending the create to the CREATED event's
//! arrival. It prints watchers connected, events received, p50/p99/max delay, each server's resident memory
//! idle and with the watchers (and what one watcher costs), and each server's CPU time; the same figures go to
//! `target/bench/sse_fanout.json`.
//!
//! Run it with `scripts/bench-sse.sh` (`--help` lists the options; each also reads a `BENCH_SSE_*` variable).
//! `PORTICO_*` variables reach both servers. Linux only: it reads /proc. It raises its own open-files limit to
//! the hard limit, as the servers do; with a hard limit below the watcher count it stops and says so.

#[path = "sse_fanout/procfs.rs"]
mod procfs;
#[path = "sse_fanout/servers.rs"]
mod servers;
#[path = "common/stop.rs"]
mod stop;
#[path = "sse_fanout/watchers.rs"]
mod watchers;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};

use procfs::Memory;
use servers::Server;
use watchers::{Format, Report, WatchTarget};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Keeps the `listening` lines, which give the ports, and warnings; silences the per-request lines.
const DEFAULT_LOG_FILTER: &str = "warn,portico=info,portico::gateway=warn,portico::user_service=warn";
/// Descriptors the benchmark needs besides one per watcher (runtime, stdio, the create's connection).
const SPARE_FILES: u64 = 64;

/// Fan-out benchmark: N watchers on /v1/users:watch through one gateway, then one create.
#[derive(Debug, Parser)]
#[command(name = "sse-fanout-bench", bin_name = "scripts/bench-sse.sh")]
struct Settings {
    /// Concurrent watchers, one HTTP/1.1 connection each.
    #[arg(long, env = "BENCH_SSE_WATCHERS", default_value_t = 10_000)]
    watchers: usize,

    /// Connections being opened at once (the rest wait), so the servers' accept backlogs are never overrun.
    #[arg(long, env = "BENCH_SSE_OPENING", default_value_t = 256)]
    opening: usize,

    /// Users created one after another once every watcher is open; each is one measured event.
    #[arg(long, env = "BENCH_SSE_EVENTS", default_value_t = 1)]
    events: usize,

    /// sse (Accept: text/event-stream) or ndjson.
    #[arg(long, env = "BENCH_SSE_FORMAT", value_enum, default_value_t = Format::Sse)]
    format: Format,

    /// Seconds to let the servers settle before each memory reading.
    #[arg(long, env = "BENCH_SSE_SETTLE_SECONDS", default_value_t = 2.0)]
    settle_seconds: f64,

    /// The longest wait for all watchers to receive one event.
    #[arg(long, env = "BENCH_SSE_EVENT_TIMEOUT_SECONDS", default_value_t = 30.0)]
    event_timeout_seconds: f64,

    /// RUST_LOG for both servers; it must keep the `portico` target at info (the `listening` lines).
    #[arg(long, env = "BENCH_SSE_LOG_FILTER", default_value = DEFAULT_LOG_FILTER)]
    log_filter: String,

    /// An extra flag for the gateway (repeatable), e.g. `--gateway-arg=--max-streams=20000`.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,

    /// A command the gateway runs under, split at spaces (a heap profiler: `--gateway-wrapper "heaptrack -o
    /// /tmp/gw"`). Its memory and CPU figures are then the wrapper's process's.
    #[arg(long, env = "BENCH_SSE_GATEWAY_WRAPPER", default_value = "")]
    gateway_wrapper: String,

    /// A command the UserService runs under, as `--gateway-wrapper`.
    #[arg(long, env = "BENCH_SSE_USER_SERVICE_WRAPPER", default_value = "")]
    user_service_wrapper: String,

    /// An extra flag for the UserService (repeatable).
    #[arg(long = "user-service-arg", allow_hyphen_values = true)]
    user_service_args: Vec<String>,

    /// Passed by `cargo bench`, and not by `cargo test --all-targets`, which then skips the benchmark.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    if !settings.bench {
        eprintln!("sse_fanout bench: skipped (no --bench); run it with scripts/bench-sse.sh");
        return ExitCode::SUCCESS;
    }
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sse_fanout bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), BoxError> {
    if settings.watchers == 0 || settings.opening == 0 || settings.events == 0 {
        return Err("--watchers, --opening and --events must be at least 1".into());
    }
    let files = raise_open_files_limit()?;
    if files < settings.watchers as u64 + SPARE_FILES {
        return Err(format!(
            "{} watchers need {} open files, and the hard limit is {files}: raise it (ulimit -Hn, limits.conf, \
             LimitNOFILE=) or ask for fewer watchers",
            settings.watchers,
            settings.watchers as u64 + SPARE_FILES
        )
        .into());
    }
    let ticks_per_second = procfs::ticks_per_second();
    let settle = Duration::from_secs_f64(settings.settle_seconds);

    // Declared before the servers, so that it is deleted after they have stopped.
    let dir = tempfile::tempdir()?;
    let mut user_service = start_user_service(&settings, &dir.path().join("fanout.db"))?;
    let mut gateway_args: Vec<OsString> = ["gateway", "--listen", "127.0.0.1:0", "--upstream"].map(Into::into).into();
    gateway_args.push(format!("http://{}", user_service.addr()).into());
    gateway_args.extend(settings.gateway_args.iter().map(Into::into));
    let mut gateway = Server::start(
        "gateway",
        "gateway listening",
        &words(&settings.gateway_wrapper),
        &gateway_args,
        &settings.log_filter,
    )?;
    let pids = [gateway.pid(), user_service.pid()];

    wait_until_ready(gateway.addr()).await?;
    // One listing, so the upstream connection and the route are warm; idle means "has served a request".
    http_call(gateway.addr(), Method::GET, "/v1/users", None).await?;
    tokio::time::sleep(settle).await;
    let idle = pids.map(procfs::memory).map(Result::ok);

    let cpu_before_open = cpu_snapshot(pids)?;
    let opening_started = Instant::now();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let target = WatchTarget::new(gateway.addr(), settings.format, Duration::from_secs(60));
    let opening = Arc::new(Semaphore::new(settings.opening));
    let tasks: Vec<_> = (0..settings.watchers)
        .map(|_| tokio::spawn(watchers::watch(target.clone(), Arc::clone(&opening), reports_tx.clone())))
        .collect();
    drop(reports_tx);
    // Aborts every watcher (closing its connection) on any return from here on.
    let _abort = AbortOnDrop(tasks);

    let (mut open, mut failed, mut first_failure, mut early) = (0usize, 0usize, None, Vec::new());
    while open + failed < settings.watchers {
        match reports.recv().await {
            Some(Report::Open) => open += 1,
            Some(Report::Failed(error)) => {
                failed += 1;
                first_failure.get_or_insert(error);
            }
            Some(created @ Report::Created { .. }) => early.push(created),
            None => break,
        }
    }
    let opening_took = opening_started.elapsed();
    let cpu_after_open = cpu_snapshot(pids)?;
    println!(
        "{open} of {} watchers open in {:.1} s{}",
        settings.watchers,
        opening_took.as_secs_f64(),
        first_failure.as_ref().map_or(String::new(), |e| format!("; {failed} failed, the first: {e}"))
    );
    tokio::time::sleep(settle).await;
    user_service.ensure_running()?;
    gateway.ensure_running()?;
    let loaded = pids.map(procfs::memory).map(Result::ok);

    let cpu_before_events = cpu_snapshot(pids)?;
    let event_timeout = Duration::from_secs_f64(settings.event_timeout_seconds);
    let mut delays_us: Vec<u64> = Vec::with_capacity(open * settings.events);
    let mut received = vec![0usize; settings.events];
    let mut create_ms = Vec::with_capacity(settings.events);
    for ordinal in 0..settings.events {
        let body = serde_json::json!({
            "name": format!("Fan-out {ordinal}"),
            "email": format!("fanout-{ordinal}@bench.example.com"),
            "password": "correct-horse-battery-staple",
        });
        let sent = Instant::now();
        http_call(gateway.addr(), Method::POST, "/v1/users", Some(body.to_string())).await?;
        create_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        let deadline = tokio::time::Instant::now() + event_timeout;
        while received[ordinal] < open {
            let report = match early.pop() {
                Some(report) => report,
                None => match tokio::time::timeout_at(deadline, reports.recv()).await {
                    Ok(Some(report)) => report,
                    Ok(None) | Err(_) => break,
                },
            };
            if let Report::Created { ordinal: of, at } = report
                && let Some(count) = received.get_mut(of)
            {
                *count += 1;
                delays_us.push(u64::try_from(at.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX));
            }
        }
    }
    let cpu_after_events = cpu_snapshot(pids)?;
    tokio::time::sleep(settle).await;
    let after_events = pids.map(procfs::memory).map(Result::ok);

    delays_us.sort_unstable();
    let report = Figures {
        settings: &settings,
        open,
        failed,
        first_failure,
        opening_took,
        received,
        create_ms,
        delays_us,
        memory: [idle, loaded, after_events],
        cpu_opening: diff(cpu_after_open, cpu_before_open, ticks_per_second),
        cpu_events: diff(cpu_after_events, cpu_before_events, ticks_per_second),
    };
    report.print();
    let path = report_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report.to_json())? + "\n")?;
    println!("Wrote {}", path.display());
    Ok(())
}

fn start_user_service(settings: &Settings, db: &Path) -> Result<Server, BoxError> {
    let mut args: Vec<OsString> = ["user-service", "--listen", "127.0.0.1:0", "--db"].map(Into::into).into();
    args.push(db.into());
    // A cheap hash, so the create's delay is the fan-out's and not argon2's (the default cost takes tens of ms).
    args.extend(["--password-hash-memory-kib", "1024", "--password-hash-iterations", "1"].map(OsString::from));
    args.extend(settings.user_service_args.iter().map(Into::into));
    Server::start(
        "user-service",
        "user service listening",
        &words(&settings.user_service_wrapper),
        &args,
        &settings.log_filter,
    )
}

fn words(command: &str) -> Vec<String> {
    command.split_whitespace().map(str::to_string).collect()
}

/// Raises the soft open-files limit to the hard one and returns it. One watcher takes one descriptor here.
fn raise_open_files_limit() -> Result<u64, BoxError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })
            .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    }
    Ok(limit.maximum.unwrap_or(u64::MAX))
}

/// Waits until the gateway's /readyz says its upstream answers.
async fn wait_until_ready(addr: SocketAddr) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_call(addr, Method::GET, "/readyz", None).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("the gateway never became ready: {error}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One HTTP/1.1 request on a connection of its own; any status but 2xx is an error.
async fn http_call(addr: SocketAddr, method: Method, path: &str, body: Option<String>) -> Result<Bytes, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, addr.to_string());
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let response = sender.send_request(request.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])).into())
    }
}

fn cpu_snapshot(pids: [u32; 2]) -> Result<[u64; 2], BoxError> {
    Ok([procfs::cpu_ticks(pids[0])?, procfs::cpu_ticks(pids[1])?])
}

/// CPU seconds of each server between two snapshots.
fn diff(after: [u64; 2], before: [u64; 2], ticks_per_second: f64) -> [f64; 2] {
    [0, 1].map(|i| after[i].saturating_sub(before[i]) as f64 / ticks_per_second)
}

/// Aborts the watcher tasks (closing their connections) when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// What one run measured. Index 0 of each pair is the gateway, 1 the UserService.
struct Figures<'a> {
    settings: &'a Settings,
    open: usize,
    failed: usize,
    first_failure: Option<String>,
    opening_took: Duration,
    /// Watchers that received each event.
    received: Vec<usize>,
    create_ms: Vec<f64>,
    /// Every (watcher, event) delay, sorted.
    delays_us: Vec<u64>,
    /// Idle, with the watchers open, after the events; None where /proc could not be read.
    memory: [[Option<Memory>; 2]; 3],
    cpu_opening: [f64; 2],
    cpu_events: [f64; 2],
}

const NAMES: [&str; 2] = ["gateway", "UserService"];

impl Figures<'_> {
    fn percentile_ms(&self, quantile: f64) -> Option<f64> {
        // Nearest rank: the smallest delay that at least `quantile` of the deliveries did not exceed.
        let rank = (quantile * self.delays_us.len() as f64).ceil() as usize;
        self.delays_us.get(rank.saturating_sub(1)).map(|&us| us as f64 / 1000.0)
    }

    /// KiB of resident memory per open watcher, from idle to loaded.
    fn per_watcher_kib(&self, server: usize) -> Option<f64> {
        let (idle, loaded) = (self.memory[0][server]?, self.memory[1][server]?);
        (self.open > 0).then(|| (loaded.rss_kib as f64 - idle.rss_kib as f64) / self.open as f64)
    }

    fn print(&self) {
        let settings = self.settings;
        let mib = |m: Option<Memory>| m.map_or("?".into(), |m| format!("{:.1}", m.rss_kib as f64 / 1024.0));
        let anon = |m: Option<Memory>| m.map_or("?".into(), |m| format!("{:.1}", m.anon_kib as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        println!();
        println!(
            "SSE fan-out: {} watchers ({:?}, {} opening at a time), {} event(s), cores: {}",
            settings.watchers,
            settings.format,
            settings.opening,
            settings.events,
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        println!(
            "  watchers connected:   {} ({} failed) in {:.1} s",
            self.open,
            self.failed,
            self.opening_took.as_secs_f64()
        );
        if let Some(failure) = &self.first_failure {
            println!("  first failure:        {failure}");
        }
        let received: Vec<String> = self.received.iter().map(usize::to_string).collect();
        println!("  got the event:        {} of {} (per event)", received.join(", "), self.open);
        println!(
            "  delay from the create: p50 {} ms, p99 {} ms, max {} ms (the create itself: {} ms)",
            ms(self.percentile_ms(0.50)),
            ms(self.percentile_ms(0.99)),
            ms(self.delays_us.last().map(|&us| us as f64 / 1000.0)),
            self.create_ms.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "  {:<12} {:>9} {:>14} {:>13} {:>13} {:>12} {:>13}",
            "RSS MiB", "idle", "with watchers", "after events", "KiB/watcher", "CPU open s", "CPU events s"
        );
        for (server, name) in NAMES.iter().enumerate() {
            println!(
                "  {:<12} {:>9} {:>14} {:>13} {:>13} {:>12.2} {:>13.3}",
                name,
                mib(self.memory[0][server]),
                mib(self.memory[1][server]),
                mib(self.memory[2][server]),
                self.per_watcher_kib(server).map_or("?".into(), |k| format!("{k:.1}")),
                self.cpu_opening[server],
                self.cpu_events[server]
            );
        }
        println!(
            "  (heap and stacks, RssAnon MiB: gateway {} → {}, UserService {} → {})",
            anon(self.memory[0][0]),
            anon(self.memory[1][0]),
            anon(self.memory[0][1]),
            anon(self.memory[1][1])
        );
    }

    fn to_json(&self) -> serde_json::Value {
        let memory = |m: Option<Memory>| m.map(|m| serde_json::json!({ "rss_kib": m.rss_kib, "anon_kib": m.anon_kib }));
        let server = |i: usize| {
            serde_json::json!({
                "idle": memory(self.memory[0][i]),
                "with_watchers": memory(self.memory[1][i]),
                "after_events": memory(self.memory[2][i]),
                "kib_per_watcher": self.per_watcher_kib(i),
                "cpu_seconds_opening": self.cpu_opening[i],
                "cpu_seconds_events": self.cpu_events[i],
            })
        };
        serde_json::json!({
            "benchmark": "sse_fanout",
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "settings": {
                "watchers": self.settings.watchers,
                "opening": self.settings.opening,
                "events": self.settings.events,
                "format": format!("{:?}", self.settings.format),
                "gateway_args": self.settings.gateway_args,
            },
            "open": self.open,
            "failed": self.failed,
            "first_failure": self.first_failure,
            "opening_seconds": self.opening_took.as_secs_f64(),
            "received": self.received,
            "create_ms": self.create_ms,
            "delay_ms": { "p50": self.percentile_ms(0.5), "p99": self.percentile_ms(0.99),
                          "max": self.delays_us.last().map(|&us| us as f64 / 1000.0) },
            "gateway": server(0),
            "user_service": server(1),
        })
    }
}

/// `target/bench/sse_fanout.json`, next to `target/tmp` (the only target path Cargo tells a benchmark).
fn report_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench").join("sse_fanout.json")
}
