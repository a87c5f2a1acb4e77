//! Portico's benchmark: the gateway and a direct gRPC client against the same UserService, in one run.
//!
//! It starts `portico user-service` and `portico gateway` as separate processes, so that each one's CPU time can
//! be read from `/proc/<pid>/stat`, seeds users, and then drives four phases of fixed duration with a fixed
//! number of concurrent workers: REST GET and POST through the gateway, and gRPC GetUser and CreateUser straight
//! to the UserService. It prints a table and writes the same figures to `target/bench/gateway.json`.
//!
//! Run it with `scripts/bench.sh` or `cargo bench --bench gateway`. `scripts/bench.sh --help` lists the options,
//! and each can also be set by a `BENCH_*` environment variable. `PORTICO_*` variables reach both servers, so
//! `PORTICO_UPSTREAM_CONNECTIONS=8 scripts/bench.sh` works. Linux only, because it reads /proc.
//!
//! The figure that DESIGN.md's performance budget drives down is the gateway's CPU per GET relative to the
//! UserService's. The benchmark reports it and never asserts it: the load generator shares the machine's cores,
//! so the figures are noisy.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{CreateUserRequest, GetUserRequest};
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpSender = SendRequest<Full<Bytes>>;

/// Keeps the `listening` lines (target `portico`, in src/main.rs), which the benchmark parses for the ports, and
/// warnings. It silences the per-request lines of `portico::gateway` and `portico::user_service::layers`:
/// formatting and writing them would otherwise be measured as the servers' own CPU.
const DEFAULT_LOG_FILTER: &str = "warn,portico=info,portico::gateway=warn,portico::user_service=warn";
/// The default argon2id cost of the UserService (see src/user_service/password.rs), for the report.
const DEFAULT_HASH_COST: (u32, u32) = (19456, 2);
/// The key ratio's target: gateway CPU per GET at most this many times the UserService's.
const TARGET_RATIO: f64 = 1.5;
const PASSWORD: &str = "correct-horse-battery-staple";
/// A request slower than this counts as an error, so that a hung server cannot stall a phase forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Benchmark of the Portico gateway against direct gRPC calls to the UserService.
#[derive(Debug, Parser)]
#[command(name = "gateway-bench", bin_name = "scripts/bench.sh")]
struct Settings {
    /// Measured seconds per phase.
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 10.0)]
    seconds: f64,

    /// Unmeasured warm-up seconds before each phase, while connections open and caches fill.
    #[arg(long, env = "BENCH_WARMUP_SECONDS", default_value_t = 1.0)]
    warmup_seconds: f64,

    /// Concurrent workers, each with one request in flight.
    #[arg(long, env = "BENCH_WORKERS", default_value_t = 32)]
    workers: usize,

    /// Users created before the phases. The GET phases read them at random.
    #[arg(long, env = "BENCH_USERS", default_value_t = 1000)]
    users: usize,

    /// HTTP/2 connections shared by the direct gRPC workers. The default of 4 matches the gateway's default
    /// --upstream-connections, so both paths reach the UserService the same way.
    #[arg(long, env = "BENCH_GRPC_CONNECTIONS", default_value_t = 4)]
    grpc_connections: usize,

    /// Argon2id memory cost (KiB) for the UserService. The default of 19456 KiB with t=2 spends tens of
    /// milliseconds per create, which swamps everything else a POST does.
    #[arg(long, env = "BENCH_HASH_MEMORY_KIB", default_value_t = 1024)]
    hash_memory_kib: u32,

    /// Argon2id iterations for the UserService.
    #[arg(long, env = "BENCH_HASH_ITERATIONS", default_value_t = 1)]
    hash_iterations: u32,

    /// RUST_LOG for both servers. It must keep the `portico` target at info, because the benchmark reads the
    /// servers' addresses from their `listening` lines.
    #[arg(long, env = "BENCH_LOG_FILTER", default_value = DEFAULT_LOG_FILTER)]
    log_filter: String,

    /// Passed by `cargo bench` to every benchmark, and not by `cargo test --all-targets`, which then skips it.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Settings {
    fn validate(&self) -> Result<(), BoxError> {
        if !(self.seconds > 0.0 && self.warmup_seconds >= 0.0) {
            return Err("--seconds must be positive and --warmup-seconds not negative".into());
        }
        if self.workers == 0 || self.users == 0 || self.grpc_connections == 0 {
            return Err("--workers, --users and --grpc-connections must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RestGet,
    GrpcGet,
    RestPost,
    GrpcPost,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::RestGet, Phase::GrpcGet, Phase::RestPost, Phase::GrpcPost];

    fn label(self) -> &'static str {
        match self {
            Phase::RestGet => "REST GET /v1/users/{id}",
            Phase::GrpcGet => "gRPC GetUser (direct)",
            Phase::RestPost => "REST POST /v1/users",
            Phase::GrpcPost => "gRPC CreateUser (direct)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Phase::RestGet => "rest_get",
            Phase::GrpcGet => "grpc_get",
            Phase::RestPost => "rest_post",
            Phase::GrpcPost => "grpc_post",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    if !settings.bench {
        // `cargo test --all-targets` runs bench targets without `--bench`; a minute of load is not a test.
        eprintln!("gateway bench: skipped (no --bench); run it with scripts/bench.sh or cargo bench --bench gateway");
        return ExitCode::SUCCESS;
    }
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), BoxError> {
    settings.validate()?;
    // Fails early, and clearly, where there is no /proc.
    cpu_ticks("self").map_err(|e| format!("this benchmark reads CPU time from /proc (Linux only): {e}"))?;
    let (ticks_per_sec, ticks_source) = clock_ticks();

    // Declared before the servers, so that it is dropped (and deleted) after they have stopped.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let mut user_service = Server::start(
        "user-service",
        "user service listening",
        &[
            "user-service".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--db".into(),
            db.into_os_string(),
            "--password-hash-memory-kib".into(),
            settings.hash_memory_kib.to_string().into(),
            "--password-hash-iterations".into(),
            settings.hash_iterations.to_string().into(),
        ],
        &settings.log_filter,
    )?;
    let upstream = format!("http://{}", user_service.addr);
    let mut gateway = Server::start(
        "gateway",
        "gateway listening",
        &["gateway".into(), "--listen".into(), "127.0.0.1:0".into(), "--upstream".into(), upstream.clone().into()],
        &settings.log_filter,
    )?;

    let mut channels = Vec::with_capacity(settings.grpc_connections);
    for _ in 0..settings.grpc_connections {
        let channel = Channel::from_shared(upstream.clone())?.connect().await;
        channels.push(channel.map_err(|e| format!("cannot connect to the UserService at {upstream}: {e}"))?);
    }
    let ids = seed(&channels, settings.users, settings.workers).await?;
    wait_until_ready(gateway.addr).await?;

    let cores = thread::available_parallelism().map_or(0, usize::from);
    let password_note = if (settings.hash_memory_kib, settings.hash_iterations) == DEFAULT_HASH_COST {
        "the UserService's default cost".to_string()
    } else {
        format!(
            "reduced from the default m={} KiB t={}, which would swamp the POST phases",
            DEFAULT_HASH_COST.0, DEFAULT_HASH_COST.1
        )
    };
    println!("Portico gateway benchmark");
    println!("  cores: {cores} (the load generator shares them with both servers)");
    println!(
        "  phases: {} s measured after {} s warm-up, {} concurrent workers, {} seeded users, {} direct gRPC connections",
        settings.seconds,
        settings.warmup_seconds,
        settings.workers,
        ids.len(),
        settings.grpc_connections
    );
    println!(
        "  password hashing: argon2id m={} KiB t={} p=1 ({password_note})",
        settings.hash_memory_kib, settings.hash_iterations
    );
    println!("  CPU: utime+stime from /proc/<pid>/stat at {ticks_per_sec} ticks/s ({ticks_source})");
    println!("  server log filter: RUST_LOG={}", settings.log_filter);
    println!();
    println!("{:<26} {:>9} {:>7} {:>9} {:>8} {:>8} | {:>26}", "", "", "", "", "", "", "CPU seconds per 10k req");
    println!(
        "{:<26} {:>9} {:>7} {:>9} {:>8} {:>8} | {:>8} {:>8} {:>8}",
        "phase", "requests", "errors", "req/s", "p50 ms", "p99 ms", "gateway", "usersvc", "loadgen"
    );

    let target = Arc::new(Target {
        gateway: gateway.addr,
        host: HeaderValue::from_str(&gateway.addr.to_string())?,
        channels,
        ids,
        next_email: AtomicU64::new(0),
    });
    let pids = [gateway.pid(), user_service.pid(), "self".to_string()];
    let mut results = Vec::with_capacity(Phase::ALL.len());
    for phase in Phase::ALL {
        // A server that died would show up as a phase full of errors; say what happened instead.
        user_service.ensure_running()?;
        gateway.ensure_running()?;
        let result = run_phase(phase, &settings, &target, &pids, ticks_per_sec).await?;
        result.print_row();
        results.push(result);
    }
    println!();
    for result in results.iter().filter(|r| r.errors > 0) {
        println!("{}: first error: {}", result.phase.label(), result.first_error.as_deref().unwrap_or("?"));
    }

    // `results` follows `Phase::ALL`: REST GET, gRPC GET, REST POST, gRPC POST.
    let rest_get = &results[0];
    let grpc_get = &results[1];
    let key_ratio = ratio(rest_get.per_10k(Proc::Gateway), rest_get.per_10k(Proc::UserService));
    let verdict = match key_ratio {
        Some(r) if r <= TARGET_RATIO => "PASS",
        Some(_) => "FAIL",
        None => "n/a",
    };
    println!(
        "Key ratio (REST GET phase): gateway CPU per GET / UserService CPU per GET = {}, target ≤ {TARGET_RATIO}×: {verdict}",
        fmt_ratio(key_ratio)
    );
    println!("  (informational: the benchmark never fails on it; the load generator shares the {cores} cores)");
    // DESIGN.md words the budget against what a direct gRPC client spends; that is the load generator's CPU
    // in the gRPC GetUser phase.
    let client_ratio = ratio(rest_get.per_10k(Proc::Gateway), grpc_get.per_10k(Proc::LoadGenerator));
    println!(
        "Also: gateway CPU per REST GET / direct gRPC client (load generator) CPU per GetUser = {}",
        fmt_ratio(client_ratio)
    );

    let report = serde_json::json!({
        "benchmark": "gateway",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "git": git_describe(),
        "cores": cores,
        "clock_ticks_per_sec": ticks_per_sec,
        "clock_ticks_source": ticks_source,
        "settings": {
            "seconds": settings.seconds,
            "warmup_seconds": settings.warmup_seconds,
            "workers": settings.workers,
            "users": target.ids.len(),
            "grpc_connections": settings.grpc_connections,
            "password_hash": { "algorithm": "argon2id", "memory_kib": settings.hash_memory_kib,
                               "iterations": settings.hash_iterations, "parallelism": 1 },
            "server_log_filter": settings.log_filter,
        },
        "phases": results.iter().map(PhaseResult::to_json).collect::<Vec<_>>(),
        "key_ratio": { "name": "gateway CPU per REST GET / UserService CPU per REST GET", "value": key_ratio,
                       "target_max": TARGET_RATIO, "pass": key_ratio.map(|r| r <= TARGET_RATIO) },
        "gateway_to_direct_grpc_client_cpu_ratio": client_ratio,
    });
    let path = report_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("Wrote {}", path.display());

    // Close the client connections first, so that the servers' graceful drain on SIGTERM has nothing to wait for.
    drop(target);
    drop(gateway);
    drop(user_service);
    Ok(())
}

/// What the workers share.
struct Target {
    gateway: SocketAddr,
    host: HeaderValue,
    channels: Vec<Channel>,
    ids: Vec<i64>,
    /// Emails must be unique, so every create takes the next number.
    next_email: AtomicU64,
}

/// Creates `count` users over gRPC, `concurrency` at a time, and returns their ids.
async fn seed(channels: &[Channel], count: usize, concurrency: usize) -> Result<Vec<i64>, BoxError> {
    let mut ids: Vec<i64> = futures::stream::iter(0..count)
        .map(|i| {
            let mut client = UserServiceClient::new(channels[i % channels.len()].clone());
            let request = create_request(&format!("seed-{i}"));
            async move {
                let user = client.create_user(request).await.map_err(|e| format!("seeding users: {e}"))?;
                Ok::<_, BoxError>(user.into_inner().id)
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Waits until the gateway's /readyz says an upstream answers, so the first phase measures no connection setup.
async fn wait_until_ready(addr: SocketAddr) -> Result<(), BoxError> {
    let host = HeaderValue::from_str(&addr.to_string())?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let mut connection = None;
        match http_call(addr, &host, &mut connection, Method::GET, "/readyz", None).await {
            Ok(()) => return Ok(()),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the gateway never became ready: {last_error}").into())
}

fn create_request(tag: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: format!("Bench User {tag}"),
        email: format!("{tag}@bench.example.com"),
        password: PASSWORD.to_string(),
        roles: Vec::new(),
    }
}

/// Requests counted in one worker.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

async fn run_phase(
    phase: Phase,
    settings: &Settings,
    target: &Arc<Target>,
    pids: &[String; 3],
    ticks_per_sec: f64,
) -> Result<PhaseResult, BoxError> {
    let measure_from = Instant::now() + Duration::from_secs_f64(settings.warmup_seconds);
    let deadline = measure_from + Duration::from_secs_f64(settings.seconds);
    // One run of the workers covers warm-up and measurement, so that the measurement reuses the warmed
    // connections; only requests started after `measure_from` are counted.
    let workers: Vec<_> = (0..settings.workers)
        .map(|index| tokio::spawn(worker(phase, index, Arc::clone(target), measure_from, deadline)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_snapshot(pids)?;
    let started = Instant::now();
    let mut tally = Tally::default();
    for handle in workers {
        tally.merge(handle.await.map_err(|e| format!("a {} worker failed: {e}", phase.label()))?);
    }
    // Requests in flight at the deadline finish and are counted, so the elapsed time runs until the last one.
    let elapsed = started.elapsed();
    let cpu_after = cpu_snapshot(pids)?;
    let cpu_ticks = [0, 1, 2].map(|i| cpu_after[i].saturating_sub(cpu_before[i]));

    tally.latencies_us.sort_unstable();
    Ok(PhaseResult {
        phase,
        requests: tally.latencies_us.len() as u64,
        errors: tally.errors,
        elapsed,
        p50_ms: percentile_ms(&tally.latencies_us, 0.50),
        p99_ms: percentile_ms(&tally.latencies_us, 0.99),
        cpu_ticks,
        ticks_per_sec,
        first_error: tally.first_error,
    })
}

async fn worker(phase: Phase, index: usize, target: Arc<Target>, measure_from: Instant, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    // Each REST worker holds its own keep-alive connection, as a pool of browser or service clients would.
    let mut http: Option<HttpSender> = None;
    let mut grpc = UserServiceClient::new(target.channels[index % target.channels.len()].clone());
    let mut rng = fastrand::Rng::with_seed(index as u64);
    loop {
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let call = one_request(phase, &target, &mut http, &mut grpc, &mut rng);
        let result = tokio::time::timeout(REQUEST_TIMEOUT, call).await.unwrap_or_else(|_| Err("timed out".into()));
        if result.is_err() {
            // The connection may be mid-response or broken; the next request starts on a fresh one.
            http = None;
        }
        if started < measure_from {
            continue;
        }
        match result {
            Ok(()) => tally.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    tally
}

async fn one_request(
    phase: Phase,
    target: &Target,
    http: &mut Option<HttpSender>,
    grpc: &mut UserServiceClient<Channel>,
    rng: &mut fastrand::Rng,
) -> Result<(), BoxError> {
    match phase {
        Phase::RestGet => {
            let id = target.ids[rng.usize(..target.ids.len())];
            let path = format!("/v1/users/{id}");
            http_call(target.gateway, &target.host, http, Method::GET, &path, None).await
        }
        Phase::GrpcGet => {
            let id = target.ids[rng.usize(..target.ids.len())];
            let response = grpc.get_user(GetUserRequest { id }).await?;
            response.into_inner().user.map(|_| ()).ok_or_else(|| "GetUser returned no user".into())
        }
        Phase::RestPost => {
            let request = create_request(&format!("bench-{}", target.next_email.fetch_add(1, Ordering::Relaxed)));
            let body =
                serde_json::json!({ "name": request.name, "email": request.email, "password": request.password });
            http_call(target.gateway, &target.host, http, Method::POST, "/v1/users", Some(body.to_string())).await
        }
        Phase::GrpcPost => {
            let request = create_request(&format!("bench-{}", target.next_email.fetch_add(1, Ordering::Relaxed)));
            grpc.create_user(request).await?;
            Ok(())
        }
    }
}

/// One HTTP/1.1 request on the connection in `connection`, opened first if there is none. Any non-2xx is an
/// error. The whole body is read, because the connection can carry the next request only after it.
async fn http_call(
    addr: SocketAddr,
    host: &HeaderValue,
    connection: &mut Option<HttpSender>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(), BoxError> {
    let sender = match connection {
        Some(sender) => sender,
        None => connection.insert(connect(addr).await?),
    };
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, host.clone());
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        Err(format!("HTTP {status}: {text}").into())
    }
}

async fn connect(addr: SocketAddr) -> Result<HttpSender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // Small request/response pairs: without this, Nagle's algorithm adds delays that are not the gateway's.
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends when the sender is dropped or the server closes it, and the sender's
    // next request then fails and is retried on a new connection.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn percentile_ms(sorted_us: &[u32], quantile: f64) -> Option<f64> {
    // Nearest rank: the smallest latency that at least `quantile` of the requests did not exceed.
    let rank = (quantile * sorted_us.len() as f64).ceil() as usize;
    sorted_us.get(rank.saturating_sub(1)).map(|&us| f64::from(us) / 1000.0)
}

#[derive(Debug, Clone, Copy)]
enum Proc {
    Gateway = 0,
    UserService = 1,
    LoadGenerator = 2,
}

struct PhaseResult {
    phase: Phase,
    /// Successful requests; failures are in `errors`.
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// CPU clock ticks spent during the measurement by the gateway, the UserService and the load generator.
    cpu_ticks: [u64; 3],
    ticks_per_sec: f64,
    first_error: Option<String>,
}

impl PhaseResult {
    fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU seconds that `process` spent per 10,000 successful requests.
    fn per_10k(&self, process: Proc) -> Option<f64> {
        let seconds = self.cpu_ticks[process as usize] as f64 / self.ticks_per_sec;
        (self.requests > 0).then(|| seconds / self.requests as f64 * 10_000.0)
    }

    fn print_row(&self) {
        let cell = |value: Option<f64>, decimals: usize| value.map_or("-".to_string(), |v| format!("{v:.decimals$}"));
        println!(
            "{:<26} {:>9} {:>7} {:>9.0} {:>8} {:>8} | {:>8} {:>8} {:>8}",
            self.phase.label(),
            self.requests,
            self.errors,
            self.requests_per_sec(),
            cell(self.p50_ms, 2),
            cell(self.p99_ms, 2),
            cell(self.per_10k(Proc::Gateway), 3),
            cell(self.per_10k(Proc::UserService), 3),
            cell(self.per_10k(Proc::LoadGenerator), 3),
        );
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.phase.key(),
            "label": self.phase.label(),
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "requests_per_sec": self.requests_per_sec(),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cpu_ticks": { "gateway": self.cpu_ticks[0], "user_service": self.cpu_ticks[1],
                           "load_generator": self.cpu_ticks[2] },
            "cpu_sec_per_10k": { "gateway": self.per_10k(Proc::Gateway),
                                 "user_service": self.per_10k(Proc::UserService),
                                 "load_generator": self.per_10k(Proc::LoadGenerator) },
            "first_error": self.first_error,
        })
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("n/a (no CPU time measured)".to_string(), |r| format!("{r:.2}×"))
}

/// utime + stime of each process, in clock ticks.
fn cpu_snapshot(pids: &[String; 3]) -> Result<[u64; 3], BoxError> {
    Ok([cpu_ticks(&pids[0])?, cpu_ticks(&pids[1])?, cpu_ticks(&pids[2])?])
}

/// utime + stime of `pid` (or `self`), summed over all its threads, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2, the command name, is in parentheses and may hold spaces, so split after its closing one.
    let (_, rest) = stat.rsplit_once(')').ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime (field 14) and stime (field 15) are indexes 11 and 12.
    let field =
        |index: usize| -> Result<u64, BoxError> { Ok(fields.get(index).ok_or("short /proc stat")?.parse::<u64>()?) };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second for /proc times, from `getconf CLK_TCK`; 100, Linux's usual value, if that fails.
fn clock_ticks() -> (f64, &'static str) {
    let output = Command::new("getconf").arg("CLK_TCK").output();
    let parsed = output.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
    match parsed {
        Some(ticks) if ticks > 0.0 => (ticks, "getconf CLK_TCK"),
        _ => (100.0, "assumed: getconf CLK_TCK failed"),
    }
}

fn git_describe() -> Option<String> {
    let output = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `target/bench/gateway.json`, next to `target/tmp` (the only target path Cargo tells a benchmark).
fn report_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench").join("gateway.json")
}

/// A running `portico` child process and the address it listens on.
struct Server {
    process: ChildGuard,
    addr: SocketAddr,
}

impl Server {
    /// Starts `portico <args>` and waits for its `<marker> addr=…` log line. Its other log lines (warnings,
    /// with the default filter) are echoed to stderr with the server's name.
    fn start(name: &'static str, marker: &'static str, args: &[OsString], log_filter: &str) -> Result<Self, BoxError> {
        let child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(args)
            .env("RUST_LOG", log_filter)
            // The address is parsed from the text format.
            .env_remove("PORTICO_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start portico {name}: {e}"))?;
        // Guarded before anything else can fail, so that every early return stops the process.
        let mut process = ChildGuard { name, child };
        let stderr = process.child.stderr.take().ok_or("stderr is piped")?;
        let (addr_tx, addr_rx) = mpsc::channel();
        // Also keeps the pipe drained, so the server never blocks on a full stderr.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.contains(marker).then(|| line.split("addr=").nth(1)).flatten();
                match addr.and_then(|rest| rest.split_whitespace().next()).and_then(|a| a.parse().ok()) {
                    Some(addr) => {
                        let _ = addr_tx.send(addr);
                    }
                    None => eprintln!("[{name}] {line}"),
                }
            }
        });
        match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => Ok(Server { process, addr }),
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                let how = status.map_or("did not".to_string(), |s| format!("exited ({s}) and did not"));
                Err(format!("portico {name} {how} log `{marker} addr=…` (RUST_LOG={log_filter})").into())
            }
        }
    }

    fn pid(&self) -> String {
        self.process.child.id().to_string()
    }

    fn ensure_running(&mut self) -> Result<(), BoxError> {
        match self.process.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("portico {} has exited ({status})", self.process.name).into()),
        }
    }
}

/// Stops the child on drop, on the error and panic paths too: SIGTERM first, so it drains and exits as it would
/// in production, then SIGKILL if it is still running after 5 s.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // std cannot send SIGTERM, and the crate forbids the unsafe code a libc call needs; kill(1) can.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        eprintln!("portico {} did not stop within 5 s of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
