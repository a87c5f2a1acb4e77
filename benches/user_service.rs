//! The UserService's own benchmark: what a GetUser and a CreateUser cost it, next to an in-memory floor, and
//! what 10,000 concurrent WatchUsers streams cost it in memory.
//!
//! It starts two servers as separate processes, so that each one's CPU time can be read from `/proc/<pid>/stat`:
//!
//! - `portico user-service` (release build) on a SQLite file in a temp directory, with its default settings,
//!   the per-call log line included (its stderr is read and discarded by the benchmark);
//! - the floor: this same binary re-executed with `--floor-server`, a tonic server implementing the same
//!   `user.UserService` GetUser and CreateUser over a `HashMap`, with nothing else around it.
//!
//! Load: direct gRPC, `--workers` concurrent requests over `--connections` HTTP/2 connections, GetUser on random
//! seeded ids, then CreateUser. Both servers hash CreateUser's password with the same argon2id code
//! (`portico::user_service::password`) at the same tiny cost (`--hash-memory-kib`, default 8 KiB, argon2's
//! minimum, and one pass), so the hash costs both sides the same few microseconds and the comparison shows the
//! rest of the work: the "CreateUser without the password hash".
//!
//! With `--watchers N` it then opens N WatchUsers streams to the UserService over `--watch-connections`
//! connections, waits until each has its snapshot, reads the UserService's RSS, creates one user and measures how
//! long each stream took to receive it.
//!
//! Run it with `scripts/bench-user-service.sh` (or `cargo bench --bench user_service -- …`). Linux only (/proc).
//! It reports figures and never asserts them: the load generator shares the machine's cores.

#[path = "common/stop.rs"]
mod stop;
#[path = "common/tally.rs"]
mod tally;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{Stream, StreamExt as _};
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::user_service_server::{UserService, UserServiceServer};
use portico::proto::user::{
    BatchCreateUsersResponse, CreateUserRequest, DeleteUserRequest, GetUserRequest, GetUserResponse, ListUsersRequest,
    ListUsersResponse, UpdateUserRequest, User, UserEvent, UserEventType, UserStatus, WatchUsersRequest,
};
use portico::user_service::password::{HashCost, PasswordHasher};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use tally::{Tally, percentile_ms};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The target: GetUser on SQLite at most this many times the in-memory floor's CPU.
const TARGET_RATIO: f64 = 2.0;
/// The floor's line that carries its address, as the UserService's `user service listening addr=…`.
const FLOOR_MARKER: &str = "floor listening";

/// Benchmark of the UserService on SQLite against an in-memory floor, and of many watchers.
#[derive(Debug, Parser)]
#[command(name = "user-service-bench", bin_name = "scripts/bench-user-service.sh")]
struct Settings {
    /// Measured seconds per phase.
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 8.0)]
    seconds: f64,

    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, env = "BENCH_WARMUP_SECONDS", default_value_t = 1.0)]
    warmup_seconds: f64,

    /// Concurrent requests, each worker with one in flight.
    #[arg(long, env = "BENCH_WORKERS", default_value_t = 32)]
    workers: usize,

    /// HTTP/2 connections the workers share.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 4)]
    connections: usize,

    /// Users created before the GetUser phase, read at random.
    #[arg(long, env = "BENCH_USERS", default_value_t = 1000)]
    users: usize,

    /// Argon2id memory cost (KiB) of both servers; 8 is argon2's minimum.
    #[arg(long, env = "BENCH_HASH_MEMORY_KIB", default_value_t = 8)]
    hash_memory_kib: u32,

    /// Argon2id passes of both servers.
    #[arg(long, env = "BENCH_HASH_ITERATIONS", default_value_t = 1)]
    hash_iterations: u32,

    /// RUST_LOG of the UserService. The default is the server's own default (`info`): the per-call log line is
    /// part of what is measured.
    #[arg(long, env = "BENCH_LOG_FILTER", default_value = "info")]
    log_filter: String,

    /// Skip the CPU phases (only the watch phase runs).
    #[arg(long)]
    no_cpu: bool,

    /// WatchUsers streams to open in the watch phase; 0 skips it. Needs `ulimit -n` above the connections used.
    #[arg(long, env = "BENCH_WATCHERS", default_value_t = 0)]
    watchers: usize,

    /// HTTP/2 connections the watch streams share.
    #[arg(long, env = "BENCH_WATCH_CONNECTIONS", default_value_t = 8)]
    watch_connections: usize,

    /// The portico binary to measure; by default the one this benchmark was built with. Another build (an
    /// older commit's, say) gives before/after figures from the same load.
    #[arg(long, env = "BENCH_PORTICO")]
    portico: Option<std::path::PathBuf>,

    /// Runs the in-memory floor server instead of the benchmark (the benchmark starts it this way).
    #[arg(long, hide = true)]
    floor_server: bool,

    /// Passed by `cargo bench`, not by `cargo test --all-targets`, which then skips the benchmark.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let settings = Settings::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("user-service bench: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if settings.floor_server {
        runtime.block_on(floor::serve(settings.hash_cost()))
    } else if !settings.bench {
        eprintln!("user-service bench: skipped (no --bench); run it with scripts/bench-user-service.sh");
        Ok(())
    } else {
        runtime.block_on(run(settings))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("user-service bench: {error}");
            ExitCode::FAILURE
        }
    }
}

impl Settings {
    fn hash_cost(&self) -> HashCost {
        HashCost { memory_kib: self.hash_memory_kib, iterations: self.hash_iterations }
    }
}

async fn run(settings: Settings) -> Result<(), BoxError> {
    if settings.workers == 0 || settings.connections == 0 || settings.users == 0 || settings.watch_connections == 0 {
        return Err("--workers, --connections, --users and --watch-connections must be at least 1".into());
    }
    cpu_ticks("self").map_err(|e| format!("this benchmark reads /proc (Linux only): {e}"))?;
    let ticks_per_sec = clock_ticks();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let user_service = Server::start(
        "user-service",
        "user service listening",
        Command::new(settings.portico.as_deref().unwrap_or(Path::new(env!("CARGO_BIN_EXE_portico"))))
            .args(user_service_args(&settings, &db)),
        &settings.log_filter,
    )?;
    let floor = Server::start(
        "floor",
        FLOOR_MARKER,
        Command::new(std::env::current_exe()?).args(floor_args(&settings)),
        "warn",
    )?;
    println!("UserService benchmark (SQLite, release build) against an in-memory tonic floor");
    println!("  cores: {}", thread::available_parallelism().map_or(0, usize::from));
    println!(
        "  load: {} s after {} s warm-up per phase, {} concurrent requests over {} HTTP/2 connections, {} users",
        settings.seconds, settings.warmup_seconds, settings.workers, settings.connections, settings.users
    );
    println!(
        "  password hash (both servers): argon2id m={} KiB t={} p=1",
        settings.hash_memory_kib, settings.hash_iterations
    );
    println!("  UserService RUST_LOG={} (the per-call log line is on at info)", settings.log_filter);
    println!("  idle RSS: UserService {} KiB, floor {} KiB", rss_kib(user_service.pid)?, rss_kib(floor.pid)?);

    if !settings.no_cpu {
        let mut rows = Vec::new();
        for server in [&user_service, &floor] {
            let channels = connect_all(server.addr, settings.connections).await?;
            let ids = seed(&channels, settings.users, settings.workers, server.name).await?;
            let target = Arc::new(Target { channels, ids, next_email: AtomicU64::new(0), tag: server.name });
            for phase in [Phase::Get, Phase::Create] {
                let run = drive(phase, &settings, &target, &[server.pid, std::process::id()]).await?;
                rows.push(Row::new(server.name, phase, run, ticks_per_sec));
            }
        }
        println!();
        println!(
            "{:<13} {:<11} {:>9} {:>7} {:>9} {:>8} {:>8} | {:>12} {:>12}",
            "server", "rpc", "requests", "errors", "req/s", "p50 ms", "p99 ms", "server µs/req", "client µs/req"
        );
        for row in &rows {
            row.print();
        }
        println!();
        for phase in [Phase::Get, Phase::Create] {
            let find = |name: &str| rows.iter().find(|r| r.server == name && r.phase == phase);
            if let (Some(sqlite), Some(floor)) = (find("user-service"), find("floor")) {
                let ratio = ratio(sqlite.server_us(), floor.server_us());
                let verdict = match (phase, ratio) {
                    (Phase::Get, Some(r)) if r <= TARGET_RATIO => format!(" (target ≤ {TARGET_RATIO}×: PASS)"),
                    (Phase::Get, Some(_)) => format!(" (target ≤ {TARGET_RATIO}×: FAIL)"),
                    _ => String::new(),
                };
                println!(
                    "{}: UserService CPU per request / floor's = {}{verdict}",
                    phase.label(),
                    ratio.map_or("n/a".into(), |r| format!("{r:.2}×"))
                );
            }
        }
        for row in rows.iter().filter(|r| r.errors > 0) {
            println!(
                "{} {}: first error: {}",
                row.server,
                row.phase.label(),
                row.first_error.as_deref().unwrap_or("?")
            );
        }
        println!(
            "  RSS after the load: UserService {} KiB, floor {} KiB",
            rss_kib(user_service.pid)?,
            rss_kib(floor.pid)?
        );
    }
    drop(floor);

    if settings.watchers > 0 {
        watch_phase(&settings, &user_service).await?;
    }
    Ok(())
}

fn user_service_args(settings: &Settings, db: &Path) -> Vec<OsString> {
    vec![
        "user-service".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.into(),
        "--password-hash-memory-kib".into(),
        settings.hash_memory_kib.to_string().into(),
        "--password-hash-iterations".into(),
        settings.hash_iterations.to_string().into(),
    ]
}

fn floor_args(settings: &Settings) -> Vec<OsString> {
    vec![
        "--floor-server".into(),
        "--hash-memory-kib".into(),
        settings.hash_memory_kib.to_string().into(),
        "--hash-iterations".into(),
        settings.hash_iterations.to_string().into(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Get,
    Create,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Get => "GetUser",
            Phase::Create => "CreateUser",
        }
    }
}

struct Target {
    channels: Vec<Channel>,
    ids: Vec<i64>,
    next_email: AtomicU64,
    tag: &'static str,
}

async fn connect_all(addr: SocketAddr, count: usize) -> Result<Vec<Channel>, BoxError> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        // One HTTP/2 connection per channel.
        let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await;
        channels.push(channel.map_err(|e| format!("cannot connect to {addr}: {e}"))?);
    }
    Ok(channels)
}

fn create_request(tag: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: format!("Bench User {tag}"),
        email: format!("{tag}@bench.example.com"),
        password: "correct-horse-battery-staple".into(),
        roles: vec!["reader".into()],
    }
}

async fn seed(channels: &[Channel], count: usize, concurrency: usize, tag: &str) -> Result<Vec<i64>, BoxError> {
    let results: Vec<Result<i64, BoxError>> = futures::stream::iter(0..count)
        .map(|i| {
            let mut client = UserServiceClient::new(channels[i % channels.len()].clone());
            let request = create_request(&format!("seed-{tag}-{i}"));
            async move { Ok(client.create_user(request).await.map_err(|e| format!("seeding: {e}"))?.into_inner().id) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

struct Run {
    tally: Tally,
    elapsed: Duration,
    /// CPU ticks of the server and of this process over the measurement.
    ticks: [u64; 2],
}

async fn drive(phase: Phase, settings: &Settings, target: &Arc<Target>, pids: &[u32; 2]) -> Result<Run, BoxError> {
    let measure_from = Instant::now() + Duration::from_secs_f64(settings.warmup_seconds);
    let deadline = measure_from + Duration::from_secs_f64(settings.seconds);
    let workers: Vec<_> = (0..settings.workers)
        .map(|index| tokio::spawn(worker(phase, index, Arc::clone(target), measure_from, deadline)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = [cpu_ticks(&pids[0].to_string())?, cpu_ticks(&pids[1].to_string())?];
    let started = Instant::now();
    let mut tally = Tally::default();
    for handle in workers {
        tally.merge(handle.await?);
    }
    let elapsed = started.elapsed();
    let after = [cpu_ticks(&pids[0].to_string())?, cpu_ticks(&pids[1].to_string())?];
    Ok(Run { tally, elapsed, ticks: [after[0] - before[0], after[1] - before[1]] })
}

async fn worker(phase: Phase, index: usize, target: Arc<Target>, measure_from: Instant, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut client = UserServiceClient::new(target.channels[index % target.channels.len()].clone());
    let mut rng = fastrand::Rng::with_seed(index as u64);
    loop {
        let started = Instant::now();
        if started >= deadline {
            return tally;
        }
        let call = async {
            match phase {
                Phase::Get => {
                    let id = target.ids[rng.usize(..target.ids.len())];
                    let user = client.get_user(GetUserRequest { id }).await?.into_inner().user;
                    user.map(drop).ok_or_else(|| BoxError::from("GetUser returned no user"))
                }
                Phase::Create => {
                    let n = target.next_email.fetch_add(1, Ordering::Relaxed);
                    client.create_user(create_request(&format!("{}-{n}", target.tag))).await?;
                    Ok(())
                }
            }
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, call).await.unwrap_or_else(|_| Err("timed out".into()));
        if started < measure_from {
            continue;
        }
        tally.record(started, result);
    }
}

struct Row {
    server: &'static str,
    phase: Phase,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    ticks: [u64; 2],
    ticks_per_sec: f64,
    first_error: Option<String>,
}

impl Row {
    fn new(server: &'static str, phase: Phase, mut run: Run, ticks_per_sec: f64) -> Self {
        run.tally.latencies_us.sort_unstable();
        Row {
            server,
            phase,
            requests: run.tally.latencies_us.len() as u64,
            errors: run.tally.errors,
            elapsed: run.elapsed,
            p50_ms: percentile_ms(&run.tally.latencies_us, 0.50),
            p99_ms: percentile_ms(&run.tally.latencies_us, 0.99),
            ticks: run.ticks,
            ticks_per_sec,
            first_error: run.tally.first_error,
        }
    }

    fn us_per_request(&self, which: usize) -> Option<f64> {
        (self.requests > 0).then(|| self.ticks[which] as f64 / self.ticks_per_sec / self.requests as f64 * 1e6)
    }

    fn server_us(&self) -> Option<f64> {
        self.us_per_request(0)
    }

    fn print(&self) {
        let cell = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
        println!(
            "{:<13} {:<11} {:>9} {:>7} {:>9.0} {:>8} {:>8} | {:>12} {:>12}",
            self.server,
            self.phase.label(),
            self.requests,
            self.errors,
            self.requests as f64 / self.elapsed.as_secs_f64(),
            cell(self.p50_ms, 2),
            cell(self.p99_ms, 2),
            cell(self.server_us(), 1),
            cell(self.us_per_request(1), 1),
        );
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// Opens `--watchers` streams, then one create, and reports the RSS and the delivery delays.
async fn watch_phase(settings: &Settings, server: &Server) -> Result<(), BoxError> {
    let channels = connect_all(server.addr, settings.watch_connections).await?;
    let before = rss_kib(server.pid)?;
    let opened = Instant::now();
    // Each stream is opened and read up to its snapshot's end, 256 at a time, then handed to a reader task that
    // waits for the one create.
    let (created_tx, created_rx) = tokio::sync::watch::channel(None::<(i64, Instant)>);
    let streams: Vec<Result<Streaming<UserEvent>, BoxError>> = futures::stream::iter(0..settings.watchers)
        .map(|i| {
            let mut client = UserServiceClient::new(channels[i % channels.len()].clone());
            async move {
                let request = WatchUsersRequest { filter: String::new(), since_revision: 0 };
                let mut stream = client.watch_users(request).await?.into_inner();
                loop {
                    let event = stream.next().await.ok_or("stream ended during the snapshot")??;
                    if event.r#type == UserEventType::SnapshotComplete as i32 {
                        return Ok(stream);
                    }
                }
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let streams = streams.into_iter().collect::<Result<Vec<_>, _>>()?;
    let open_secs = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_watchers = rss_kib(server.pid)?;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let mut created = created_rx.clone();
            tokio::spawn(async move {
                let event = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.ok()??.ok()?;
                let arrived = Instant::now();
                let (id, sent) = (*created.wait_for(Option::is_some).await.ok()?)?;
                (event.user.map(|u| u.id) == Some(id)).then(|| arrived.duration_since(sent))
            })
        })
        .collect();
    let mut client = UserServiceClient::new(channels[0].clone());
    let sent = Instant::now();
    let user = client.create_user(create_request("watched")).await?.into_inner();
    created_tx.send_replace(Some((user.id, sent)));
    let mut delays = Vec::with_capacity(readers.len());
    for reader in readers {
        if let Some(delay) = reader.await? {
            delays.push(delay);
        }
    }
    delays.sort_unstable();
    let at = |q: f64| {
        let rank = (q * delays.len() as f64).ceil() as usize;
        delays.get(rank.saturating_sub(1)).map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    };
    println!();
    println!(
        "{} WatchUsers streams over {} HTTP/2 connections (opened, snapshots read, in {open_secs:.1} s)",
        settings.watchers, settings.watch_connections
    );
    println!(
        "  UserService RSS: {before} KiB before, {with_watchers} KiB with the streams open: {:.1} KiB per watcher",
        (with_watchers as f64 - before as f64) / settings.watchers as f64
    );
    println!(
        "  one CreateUser: received by {} of {}; delay p50 {}, p99 {}, max {}",
        delays.len(),
        settings.watchers,
        at(0.50),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// utime + stime of `pid` (or `self`) in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(')').ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, BoxError> { Ok(fields.get(i).ok_or("short /proc stat")?.parse::<u64>()?) };
    Ok(field(11)? + field(12)?)
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("malformed VmRSS")?.parse()?)
}

fn clock_ticks() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output();
    output.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok()).unwrap_or(100.0)
}

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    name: &'static str,
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Server {
    /// Starts `command` and waits for its `<marker> addr=…` line; its other stderr lines are read and dropped
    /// (the UserService's per-call lines are written, as in production, to a pipe that is kept drained).
    fn start(name: &'static str, marker: &'static str, command: &mut Command, log: &str) -> Result<Self, BoxError> {
        let mut child = command
            .env("RUST_LOG", log)
            .env_remove("PORTICO_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = child.stderr.take().ok_or("stderr is piped")?;
        let pid = child.id();
        let mut server = Server { name, child, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let (found_tx, found_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(marker)
                    && let Some(addr) = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next())
                {
                    let _ = found_tx.send(addr.parse::<SocketAddr>());
                } else if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        match found_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(addr)) => server.addr = addr,
            _ => return Err(format!("{name} did not log `{marker} addr=…` (RUST_LOG={log})").into()),
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop::terminate(&mut self.child, self.name);
    }
}

/// The floor: `user.UserService` GetUser and CreateUser from a `HashMap`, and nothing else.
mod floor {
    use super::*;

    pub async fn serve(cost: HashCost) -> Result<(), BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!("{FLOOR_MARKER} addr={}", listener.local_addr()?);
        let service =
            Floor { users: RwLock::default(), next_id: AtomicI64::new(1), hasher: PasswordHasher::new(cost)? };
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(service))
            // Nagle off, as the UserService has it, so the two answer on equal terms.
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await?;
        Ok(())
    }

    struct Floor {
        users: RwLock<HashMap<i64, User>>,
        next_id: AtomicI64,
        hasher: PasswordHasher,
    }

    fn unimplemented<T>() -> Result<T, Status> {
        Err(Status::unimplemented("the floor serves GetUser and CreateUser only"))
    }

    #[tonic::async_trait]
    impl UserService for Floor {
        async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
            let id = request.get_ref().id;
            let users = self.users.read().map_err(|_| Status::internal("poisoned"))?;
            let user = users.get(&id).cloned().ok_or_else(|| Status::not_found(format!("user {id} not found")))?;
            Ok(Response::new(GetUserResponse { user: Some(user) }))
        }

        async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
            let request = request.into_inner();
            let _hash = self.hasher.hash(request.password).await.map_err(|e| Status::internal(e.to_string()))?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let user = User {
                id,
                name: request.name,
                email: request.email,
                roles: request.roles,
                status: UserStatus::Active as i32,
                created_at: Some(pbjson_types::Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or(0),
                    nanos: i32::try_from(now.subsec_micros() * 1000).unwrap_or(0),
                }),
            };
            self.users.write().map_err(|_| Status::internal("poisoned"))?.insert(id, user.clone());
            Ok(Response::new(user))
        }

        async fn list_users(&self, _: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
            unimplemented()
        }

        async fn update_user(&self, _: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
            unimplemented()
        }

        async fn delete_user(&self, _: Request<DeleteUserRequest>) -> Result<Response<pbjson_types::Empty>, Status> {
            unimplemented()
        }

        type WatchUsersStream = Pin<Box<dyn Stream<Item = Result<UserEvent, Status>> + Send>>;

        async fn watch_users(&self, _: Request<WatchUsersRequest>) -> Result<Response<Self::WatchUsersStream>, Status> {
            unimplemented()
        }

        async fn batch_create_users(
            &self,
            _: Request<Streaming<CreateUserRequest>>,
        ) -> Result<Response<BatchCreateUsersResponse>, Status> {
            unimplemented()
        }
    }
}
