//! Portico's benchmark: the gateway and a direct gRPC client against the same UserService, in one run.
//!
//! It starts `portico user-service` and `portico gateway` as separate processes, so that each one's CPU time can
//! be read from `/proc/<pid>/stat`, seeds users, and then drives four phases of fixed duration with a fixed
//! number of concurrent workers: REST GET and POST through the gateway, and gRPC GetUser and CreateUser straight
//! to the UserService. A fifth phase (`--replicas`, 3 by default, 0 skips it) repeats the REST GET load through a
//! new gateway that balances over that many UserService replicas sharing one database, and reports how evenly
//! the requests and the CPU spread over them. A sixth (`--postgres-replicas`, 2 by default, 0 skips it; see
//! gateway/postgres.rs) runs REST creates and gets through a gateway over replicas that share a PostgreSQL
//! database the benchmark creates and drops, publishing to a NATS server it starts when there is one, and adds
//! the events published per second and the relay's lag. The tracing phase (`--tracing-phase`, on by default,
//! `false` skips it; see gateway/tracing.rs) runs REST GET, alternating, through a gateway and UserService with
//! tracing off and through a pair that exports every trace to an OTLP collector inside the benchmark, and
//! reports the CPU per request of each mode. It prints a table and writes the same figures to `target/bench/gateway.json`.
//!
//! Run it with `scripts/bench.sh` or `cargo bench --bench gateway`. `scripts/bench.sh --help` lists the options,
//! and each can also be set by a `BENCH_*` environment variable. `PORTICO_*` variables reach both servers, so
//! `PORTICO_UPSTREAM_CONNECTIONS=8 scripts/bench.sh` works. Linux only, because it reads /proc.
//!
//! The figure that DESIGN.md's performance budget drives down is the gateway's CPU per GET relative to the
//! UserService's. The benchmark reports it and never asserts it: the load generator shares the machine's cores,
//! so the figures are noisy.

use std::ffi::OsString;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{CreateUserRequest, GetUserRequest};
use serde::Deserialize;
use tally::{Tally, percentile_ms};
use tonic::transport::Channel;

#[path = "gateway/postgres.rs"]
mod postgres;
#[path = "gateway/services.rs"]
mod services;
#[path = "common/stop.rs"]
mod stop;
#[path = "common/tally.rs"]
mod tally;
#[path = "gateway/tracing.rs"]
mod tracing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpSender = SendRequest<Full<Bytes>>;

/// Keeps the `listening` lines (target `portico`, in src/main.rs, `admin listening` among them), which the
/// benchmark parses for the ports, and warnings. It silences the per-request lines of `portico::gateway` and `portico::user_service::layers`:
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
/// Replicas listen on 127.0.0.2, 127.0.0.3, …: Linux routes all of 127.0.0.0/8 to loopback, and this keeps
/// 127.0.0.1 for the gateways and the admin listener.
const FIRST_REPLICA_IP: u8 = 2;
/// Ports to try for one that is free on every replica's address.
const PORT_ATTEMPTS: usize = 20;

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

    /// UserService replicas, sharing one database, behind one gateway in the extra REST GET phase; 0 skips it.
    #[arg(long, env = "BENCH_REPLICAS", default_value_t = 3)]
    replicas: usize,

    /// UserService replicas sharing one PostgreSQL database in the PostgreSQL phase (REST POST and GET through
    /// one gateway); 0 skips it.
    #[arg(long, env = "BENCH_POSTGRES_REPLICAS", default_value_t = 2)]
    postgres_replicas: usize,

    /// Admin URL of the PostgreSQL server where the PostgreSQL phase creates its database (and drops it after).
    /// The phase is skipped, with a note, when the server cannot be reached.
    #[arg(long, env = "BENCH_POSTGRES", default_value = "postgres://root@127.0.0.1:5432/postgres")]
    postgres: String,

    /// The nats-server binary that the PostgreSQL phase starts on a free port for its event figures (without
    /// one, the phase runs without publishing).
    #[arg(long, env = "BENCH_NATS_SERVER", default_value = "nats-server")]
    nats_server: String,

    /// The tracing phase: REST GET with tracing off, then with both servers exporting every trace
    /// (`--otlp-endpoint` at a collector inside the benchmark, `--trace-sample-ratio 1.0`); false skips it.
    #[arg(long, env = "BENCH_TRACING_PHASE", default_value_t = true, action = clap::ArgAction::Set)]
    tracing_phase: bool,

    /// Measurements of each mode in the tracing phase, alternating tracing off and on; the figures are their sums.
    #[arg(long, env = "BENCH_TRACING_ROUNDS", default_value_t = 2)]
    tracing_rounds: usize,

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
        if self.tracing_phase && self.tracing_rounds == 0 {
            return Err("--tracing-rounds must be at least 1 (--tracing-phase false skips the phase)".into());
        }
        if self.postgres_replicas == 1 {
            return Err("--postgres-replicas must be 0 (skip the phase) or at least 2".into());
        }
        if self.replicas > usize::from(u8::MAX - FIRST_REPLICA_IP) {
            return Err(format!(
                "--replicas must be at most {} (one 127.0.0.x address each)",
                u8::MAX - FIRST_REPLICA_IP
            )
            .into());
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
    /// REST GET through a gateway in front of `--replicas` UserServices; not in `ALL`, it runs on its own servers.
    RestGetReplicas,
    /// REST POST and GET through a gateway in front of UserServices on one PostgreSQL database (postgres.rs).
    PgRestPost,
    PgRestGet,
    /// REST GET through a gateway and UserService pair without, and one with, trace export (tracing.rs).
    RestGetTracingOff,
    RestGetTracingOn,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::RestGet, Phase::GrpcGet, Phase::RestPost, Phase::GrpcPost];

    fn label(self) -> &'static str {
        match self {
            Phase::RestGet => "REST GET /v1/users/{id}",
            Phase::GrpcGet => "gRPC GetUser (direct)",
            Phase::RestPost => "REST POST /v1/users",
            Phase::GrpcPost => "gRPC CreateUser (direct)",
            Phase::RestGetReplicas => "REST GET, replicas",
            Phase::PgRestPost => "REST POST, PostgreSQL",
            Phase::PgRestGet => "REST GET, PostgreSQL",
            Phase::RestGetTracingOff => "REST GET, tracing off",
            Phase::RestGetTracingOn => "REST GET, tracing on 1.0",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Phase::RestGet => "rest_get",
            Phase::GrpcGet => "grpc_get",
            Phase::RestPost => "rest_post",
            Phase::GrpcPost => "grpc_post",
            Phase::RestGetReplicas => "rest_get_replicas",
            Phase::PgRestPost => "pg_rest_post",
            Phase::PgRestGet => "pg_rest_get",
            Phase::RestGetTracingOff => "rest_get_tracing_off",
            Phase::RestGetTracingOn => "rest_get_tracing_on",
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
    let mut user_service =
        start_user_service("user-service", &settings, "127.0.0.1:0".parse()?, &dir.path().join("bench.db"))?;
    let upstream = format!("http://{}", user_service.addr());
    let mut gateway = Server::start(
        "gateway",
        &["gateway listening"],
        &["gateway".into(), "--listen".into(), "127.0.0.1:0".into(), "--upstream".into(), upstream.clone().into()],
        &settings.log_filter,
    )?;

    let mut channels = Vec::with_capacity(settings.grpc_connections);
    for _ in 0..settings.grpc_connections {
        let channel = Channel::from_shared(upstream.clone())?.connect().await;
        channels.push(channel.map_err(|e| format!("cannot connect to the UserService at {upstream}: {e}"))?);
    }
    let ids = seed(&channels, settings.users, settings.workers).await?;
    wait_until_ready(gateway.addr()).await?;

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
    print_table_header("usersvc");

    let target = Arc::new(Target::new(gateway.addr(), channels, ids)?);
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

    let users = target.ids.len();
    // Close the client connections first, so that the servers' graceful drain on SIGTERM has nothing to wait for.
    drop(target);
    drop(gateway);
    drop(user_service);
    // The phases below start their own servers; the ones above are stopped so they take no share of the cores.
    let tracing = if settings.tracing_phase {
        let result = tracing::run(&settings, dir.path(), ticks_per_sec).await?;
        result.print();
        Some(result)
    } else {
        None
    };
    let replicas = if settings.replicas == 0 {
        None
    } else {
        let result = run_replicas(&settings, dir.path(), ticks_per_sec).await?;
        result.print();
        Some(result)
    };
    let postgres = if settings.postgres_replicas == 0 {
        None
    } else {
        let result = postgres::run(&settings, dir.path(), ticks_per_sec).await?;
        result.iter().for_each(postgres::PostgresResult::print);
        result
    };

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
            "users": users,
            "grpc_connections": settings.grpc_connections,
            "password_hash": { "algorithm": "argon2id", "memory_kib": settings.hash_memory_kib,
                               "iterations": settings.hash_iterations, "parallelism": 1 },
            "server_log_filter": settings.log_filter,
            "replicas": settings.replicas,
            "postgres_replicas": settings.postgres_replicas,
            "tracing_phase": settings.tracing_phase,
            "tracing_rounds": settings.tracing_rounds,
        },
        "phases": results.iter().map(PhaseResult::to_json).collect::<Vec<_>>(),
        "key_ratio": { "name": "gateway CPU per REST GET / UserService CPU per REST GET", "value": key_ratio,
                       "target_max": TARGET_RATIO, "pass": key_ratio.map(|r| r <= TARGET_RATIO) },
        "gateway_to_direct_grpc_client_cpu_ratio": client_ratio,
        "tracing": tracing.as_ref().map(tracing::TracingResult::to_json),
        "rest_get_replicas": replicas.as_ref().map(ReplicaResult::to_json),
        "postgres": postgres.as_ref().map(postgres::PostgresResult::to_json),
    });
    let path = report_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("Wrote {}", path.display());
    Ok(())
}

/// The table's two header lines; `service` names the UserService column.
fn print_table_header(service: &str) {
    println!("{:<26} {:>9} {:>7} {:>9} {:>8} {:>8} | {:>26}", "", "", "", "", "", "", "CPU seconds per 10k req");
    println!(
        "{:<26} {:>9} {:>7} {:>9} {:>8} {:>8} | {:>8} {:>8} {:>8}",
        "phase", "requests", "errors", "req/s", "p50 ms", "p99 ms", "gateway", service, "loadgen"
    );
}

/// Starts `portico user-service` on `listen` with the benchmark's password-hashing cost.
fn start_user_service(name: &str, settings: &Settings, listen: SocketAddr, db: &Path) -> Result<Server, BoxError> {
    start_user_service_with(name, &["user service listening"], settings, listen, db, &[])
}

/// [`start_user_service`] with `extra` arguments, waiting for the log lines of `markers`.
fn start_user_service_with(
    name: &str,
    markers: &[&'static str],
    settings: &Settings,
    listen: SocketAddr,
    db: &Path,
    extra: &[OsString],
) -> Result<Server, BoxError> {
    let mut args: Vec<OsString> = vec![
        "user-service".into(),
        "--listen".into(),
        listen.to_string().into(),
        "--db".into(),
        db.into(),
        "--password-hash-memory-kib".into(),
        settings.hash_memory_kib.to_string().into(),
        "--password-hash-iterations".into(),
        settings.hash_iterations.to_string().into(),
    ];
    args.extend_from_slice(extra);
    Server::start(name, markers, &args, &settings.log_filter)
}

/// The REST GET phase again, through a new gateway that balances over `settings.replicas` UserService replicas.
///
/// The replicas share a database file of their own, seeded with `--users` users like the first phases' one, and
/// listen on one port at 127.0.0.2, 127.0.0.3, …, as replicas behind one DNS name would. The gateway's admin view counts
/// the calls it sent each replica, which gives the spread.
async fn run_replicas(settings: &Settings, dir: &Path, ticks_per_sec: f64) -> Result<ReplicaResult, BoxError> {
    let ips = (0..settings.replicas).map(replica_ip).collect::<Result<Vec<_>, _>>()?;
    let port = shared_port(&ips)?;
    let addrs: Vec<SocketAddr> = ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
    let db = dir.join("replicas.db");
    let start = |addr: SocketAddr| start_user_service(&format!("user-service {addr}"), settings, addr, &db);

    // The first replica creates and migrates the database, which the seeding waits for, before the others open
    // it: replicas migrating one file at once would race.
    let mut replicas = vec![start(addrs[0])?];
    let first = format!("http://{}", addrs[0]);
    let mut channels = Vec::with_capacity(settings.grpc_connections);
    for _ in 0..settings.grpc_connections {
        let channel = Channel::from_shared(first.clone())?.connect().await;
        channels.push(channel.map_err(|e| format!("cannot connect to the UserService replica at {first}: {e}"))?);
    }
    let ids = seed(&channels, settings.users, settings.workers).await?;
    for &addr in &addrs[1..] {
        replicas.push(start(addr)?);
    }

    let upstream = addrs.iter().map(|addr| format!("http://{addr}")).collect::<Vec<_>>().join(",");
    let mut gateway = Server::start(
        "gateway (replicas)",
        &["gateway listening", "admin listening"],
        &[
            "gateway".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            upstream.into(),
        ],
        &settings.log_filter,
    )?;
    let admin = gateway.addrs[1];
    wait_until_serving(admin, &addrs).await?;

    // The channels are unused by REST workers, but each worker makes a gRPC client from one.
    let target = Arc::new(Target::new(gateway.addr(), channels, ids)?);
    let mut pids = vec![gateway.pid()];
    pids.extend(replicas.iter().map(Server::pid));
    pids.push("self".to_string());
    for server in replicas.iter_mut().chain([&mut gateway]) {
        server.ensure_running()?;
    }
    let run = drive(Phase::RestGetReplicas, settings, &target, || replica_sample(admin, &addrs, &pids)).await?;

    // As in `run`: the client connections close before the servers drain.
    drop(target);
    drop(gateway);
    drop(replicas);
    Ok(ReplicaResult::new(Phase::RestGetReplicas, run, addrs, port, ticks_per_sec))
}

/// 127.0.0.2 for the first replica, 127.0.0.3 for the second, …
fn replica_ip(index: usize) -> Result<IpAddr, BoxError> {
    let last = u8::try_from(index).ok().and_then(|i| i.checked_add(FIRST_REPLICA_IP));
    Ok(Ipv4Addr::new(127, 0, 0, last.ok_or("too many replicas for 127.0.0.x")?).into())
}

/// A port free on every one of `ips`: the first address's bind picks it, and the others are bind-checked on it.
fn shared_port(ips: &[IpAddr]) -> Result<u16, BoxError> {
    let (&first, rest) = ips.split_first().ok_or("no replica addresses")?;
    for _ in 0..PORT_ATTEMPTS {
        let picked = std::net::TcpListener::bind((first, 0))
            .map_err(|e| format!("cannot listen on {first} (replicas need 127.0.0.0/8 on loopback): {e}"))?;
        let port = picked.local_addr()?.port();
        // The test listeners close on return. Another process could still take the port before a replica
        // binds it; that replica's start then fails with `cannot listen`.
        if rest.iter().all(|&ip| std::net::TcpListener::bind((ip, port)).is_ok()) {
            return Ok(port);
        }
    }
    Err(format!("no port was free on all of {ips:?} in {PORT_ATTEMPTS} tries").into())
}

/// Waits until the gateway's admin view lists every replica as serving, so that the balancer can choose among
/// all of them from the first warm-up request.
async fn wait_until_serving(admin: SocketAddr, replicas: &[SocketAddr]) -> Result<(), BoxError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last_state = String::new();
    while Instant::now() < deadline {
        match admin_endpoints(admin).await {
            Ok(endpoints) => {
                // UNCHECKED: health checks were turned off (PORTICO_UPSTREAM_HEALTH_CHECKS=false).
                let serving = |addr: &SocketAddr| {
                    endpoints.iter().any(|(a, e)| a == addr && matches!(e.health.as_str(), "SERVING" | "UNCHECKED"))
                };
                if replicas.iter().all(serving) {
                    return Ok(());
                }
                let health: Vec<String> = endpoints.iter().map(|(addr, e)| format!("{addr} {}", e.health)).collect();
                last_state = format!("endpoints: {}", health.join(", "));
            }
            Err(error) => last_state = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the replicas' gateway never saw all of them serving: {last_state}").into())
}

/// The parts of the admin view (`GET /admin/upstreams`, src/gateway/admin.rs) that the benchmark reads.
#[derive(Deserialize)]
struct AdminView {
    upstreams: Vec<AdminUpstream>,
}

#[derive(Deserialize)]
struct AdminUpstream {
    state: AdminState,
}

#[derive(Deserialize)]
struct AdminState {
    endpoints: Vec<AdminEndpoint>,
}

#[derive(Deserialize)]
struct AdminEndpoint {
    /// `http://127.0.0.2:PORT/`
    address: String,
    health: String,
    /// Calls sent to the endpoint so far, retries included.
    requests: u64,
}

/// The gateway's endpoints, with their socket addresses, from its admin view.
async fn admin_endpoints(admin: SocketAddr) -> Result<Vec<(SocketAddr, AdminEndpoint)>, BoxError> {
    let host = HeaderValue::from_str(&admin.to_string())?;
    let body = http_call(admin, &host, &mut None, Method::GET, "/admin/upstreams", None).await?;
    let view: AdminView = serde_json::from_slice(&body).map_err(|e| format!("unexpected admin view: {e}"))?;
    let upstream = view.upstreams.into_iter().next().ok_or("the admin view lists no upstream")?;
    upstream.state.endpoints.into_iter().map(|endpoint| Ok((endpoint_addr(&endpoint.address)?, endpoint))).collect()
}

/// The socket address in an endpoint address such as `http://127.0.0.2:PORT/`.
fn endpoint_addr(address: &str) -> Result<SocketAddr, BoxError> {
    let uri: Uri = address.parse()?;
    let authority = uri.authority().ok_or_else(|| format!("endpoint address {address} has no host"))?;
    Ok(authority.as_str().parse()?)
}

/// What the replica phase reads at both ends of its measurement.
struct ReplicaSample {
    /// CPU ticks of the gateway, each replica and the load generator, in that order.
    cpu: Vec<u64>,
    /// Calls the gateway has sent each replica.
    calls: Vec<u64>,
}

/// One admin view request at each end of the measurement; what it costs the gateway, well under a millisecond
/// of CPU, is noise next to the load's.
async fn replica_sample(
    admin: SocketAddr,
    replicas: &[SocketAddr],
    pids: &[String],
) -> Result<ReplicaSample, BoxError> {
    let endpoints = admin_endpoints(admin).await?;
    let calls = replicas
        .iter()
        .map(|addr| {
            let endpoint = endpoints.iter().find(|(a, _)| a == addr).map(|(_, e)| e.requests);
            endpoint.ok_or_else(|| format!("the admin view lists no endpoint {addr}"))
        })
        .collect::<Result<_, _>>()?;
    let cpu = pids.iter().map(|pid| cpu_ticks(pid)).collect::<Result<_, _>>()?;
    Ok(ReplicaSample { cpu, calls })
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

impl Target {
    fn new(gateway: SocketAddr, channels: Vec<Channel>, ids: Vec<i64>) -> Result<Self, BoxError> {
        let host = HeaderValue::from_str(&gateway.to_string())?;
        Ok(Self { gateway, host, channels, ids, next_email: AtomicU64::new(0) })
    }
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
            Ok(_) => return Ok(()),
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

async fn run_phase(
    phase: Phase,
    settings: &Settings,
    target: &Arc<Target>,
    pids: &[String; 3],
    ticks_per_sec: f64,
) -> Result<PhaseResult, BoxError> {
    let run = drive(phase, settings, target, || std::future::ready(cpu_snapshot(pids))).await?;
    let cpu_ticks = [0, 1, 2].map(|i| run.after[i].saturating_sub(run.before[i]));
    Ok(PhaseResult::new(phase, run.tally, run.elapsed, cpu_ticks, ticks_per_sec))
}

/// One run of a phase's workers, with what `sample` saw as the measurement started and after it ended.
struct Run<S> {
    tally: Tally,
    elapsed: Duration,
    before: S,
    after: S,
}

/// Runs `phase`'s workers through warm-up and measurement, calling `sample` (CPU times, counters) right at both
/// ends of the measurement.
async fn drive<S, F>(
    phase: Phase,
    settings: &Settings,
    target: &Arc<Target>,
    mut sample: impl FnMut() -> F,
) -> Result<Run<S>, BoxError>
where
    F: Future<Output = Result<S, BoxError>>,
{
    let measure_from = Instant::now() + Duration::from_secs_f64(settings.warmup_seconds);
    let deadline = measure_from + Duration::from_secs_f64(settings.seconds);
    // One run of the workers covers warm-up and measurement, so that the measurement reuses the warmed
    // connections; only requests started after `measure_from` are counted.
    let workers: Vec<_> = (0..settings.workers)
        .map(|index| tokio::spawn(worker(phase, index, Arc::clone(target), measure_from, deadline)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = sample().await?;
    let started = Instant::now();
    let mut tally = Tally::default();
    for handle in workers {
        tally.merge(handle.await.map_err(|e| format!("a {} worker failed: {e}", phase.label()))?);
    }
    // Requests in flight at the deadline finish and are counted, so the elapsed time runs until the last one.
    let elapsed = started.elapsed();
    let after = sample().await?;
    Ok(Run { tally, elapsed, before, after })
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
        tally.record(started, result);
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
        Phase::RestGet
        | Phase::RestGetReplicas
        | Phase::PgRestGet
        | Phase::RestGetTracingOff
        | Phase::RestGetTracingOn => {
            let id = target.ids[rng.usize(..target.ids.len())];
            let path = format!("/v1/users/{id}");
            http_call(target.gateway, &target.host, http, Method::GET, &path, None).await?;
            Ok(())
        }
        Phase::GrpcGet => {
            let id = target.ids[rng.usize(..target.ids.len())];
            let response = grpc.get_user(GetUserRequest { id }).await?;
            response.into_inner().user.map(|_| ()).ok_or_else(|| "GetUser returned no user".into())
        }
        Phase::RestPost | Phase::PgRestPost => {
            let request = create_request(&format!("bench-{}", target.next_email.fetch_add(1, Ordering::Relaxed)));
            let body =
                serde_json::json!({ "name": request.name, "email": request.email, "password": request.password });
            http_call(target.gateway, &target.host, http, Method::POST, "/v1/users", Some(body.to_string())).await?;
            Ok(())
        }
        Phase::GrpcPost => {
            let request = create_request(&format!("bench-{}", target.next_email.fetch_add(1, Ordering::Relaxed)));
            grpc.create_user(request).await?;
            Ok(())
        }
    }
}

/// One HTTP/1.1 request on the connection in `connection`, opened first if there is none, and its body. Any
/// non-2xx is an error. The whole body is read, because the connection can carry the next request only after it.
async fn http_call(
    addr: SocketAddr,
    host: &HeaderValue,
    connection: &mut Option<HttpSender>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Bytes, BoxError> {
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
        Ok(body)
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
    fn new(phase: Phase, mut tally: Tally, elapsed: Duration, cpu_ticks: [u64; 3], ticks_per_sec: f64) -> Self {
        tally.latencies_us.sort_unstable();
        PhaseResult {
            phase,
            requests: tally.latencies_us.len() as u64,
            errors: tally.errors,
            elapsed,
            p50_ms: percentile_ms(&tally.latencies_us, 0.50),
            p99_ms: percentile_ms(&tally.latencies_us, 0.99),
            cpu_ticks,
            ticks_per_sec,
            first_error: tally.first_error,
        }
    }

    fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU seconds that `process` spent per 10,000 successful requests.
    fn per_10k(&self, process: Proc) -> Option<f64> {
        let seconds = self.cpu_ticks[process as usize] as f64 / self.ticks_per_sec;
        (self.requests > 0).then(|| seconds / self.requests as f64 * 10_000.0)
    }

    fn print_row(&self) {
        self.print_row_as(self.phase.label());
    }

    fn print_row_as(&self, label: &str) {
        println!(
            "{:<26} {:>9} {:>7} {:>9.0} {:>8} {:>8} | {:>8} {:>8} {:>8}",
            label,
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

/// A table cell: `value` with `decimals` decimals, or `-` when there is none.
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The replica phase's figures.
struct ReplicaResult {
    /// The phase as a table row; its UserService CPU is the replicas' total.
    summary: PhaseResult,
    replicas: Vec<ReplicaFigures>,
    port: u16,
}

struct ReplicaFigures {
    addr: SocketAddr,
    /// Calls the gateway sent it during the measurement, retries included.
    calls: u64,
    cpu_ticks: u64,
}

impl ReplicaResult {
    fn new(phase: Phase, run: Run<ReplicaSample>, addrs: Vec<SocketAddr>, port: u16, ticks_per_sec: f64) -> Self {
        let delta = |before: &[u64], after: &[u64]| -> Vec<u64> {
            before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b)).collect()
        };
        let calls = delta(&run.before.calls, &run.after.calls);
        // The gateway's, each replica's and the load generator's, as `replica_sample` reads them.
        let cpu = delta(&run.before.cpu, &run.after.cpu);
        let replica_cpu = &cpu[1..=addrs.len()];
        let cpu_ticks = [cpu[0], replica_cpu.iter().sum(), cpu[addrs.len() + 1]];
        let replicas = addrs
            .into_iter()
            .zip(calls)
            .zip(replica_cpu)
            .map(|((addr, calls), &cpu_ticks)| ReplicaFigures { addr, calls, cpu_ticks })
            .collect();
        ReplicaResult {
            summary: PhaseResult::new(phase, run.tally, run.elapsed, cpu_ticks, ticks_per_sec),
            replicas,
            port,
        }
    }

    fn total_calls(&self) -> u64 {
        self.replicas.iter().map(|r| r.calls).sum()
    }

    /// A replica's share of the calls, in %.
    fn share_pct(&self, replica: &ReplicaFigures) -> Option<f64> {
        let total = self.total_calls();
        (total > 0).then(|| replica.calls as f64 / total as f64 * 100.0)
    }

    /// The share each replica would have if the balancer spread the calls evenly, in %.
    fn mean_share_pct(&self) -> f64 {
        100.0 / self.replicas.len() as f64
    }

    /// The largest distance of a replica's share from the mean share, in percentage points.
    fn max_deviation_points(&self) -> Option<f64> {
        let deviations = self.replicas.iter().map(|r| self.share_pct(r).map(|s| (s - self.mean_share_pct()).abs()));
        deviations.collect::<Option<Vec<f64>>>()?.into_iter().reduce(f64::max)
    }

    /// The same, in % of the mean share.
    fn max_deviation_pct(&self) -> Option<f64> {
        self.max_deviation_points().map(|points| points / self.mean_share_pct() * 100.0)
    }

    fn cpu_seconds(&self, replica: &ReplicaFigures) -> f64 {
        replica.cpu_ticks as f64 / self.summary.ticks_per_sec
    }

    /// CPU seconds the replica spent per 10,000 calls it received.
    fn per_10k_calls(&self, replica: &ReplicaFigures) -> Option<f64> {
        (replica.calls > 0).then(|| self.cpu_seconds(replica) / replica.calls as f64 * 10_000.0)
    }

    fn print(&self) {
        let count = self.replicas.len();
        println!();
        println!(
            "REST GET through one gateway over {count} UserService replicas (127.0.0.{}-{}, port {}, one database)",
            FIRST_REPLICA_IP,
            usize::from(FIRST_REPLICA_IP) + count - 1,
            self.port
        );
        print_table_header("replicas");
        self.summary.print_row_as(&format!("REST GET, {count} replicas"));
        println!();
        println!("{:<26} {:>9} {:>7} {:>9} {:>12}", "replica", "calls", "share %", "CPU s", "CPU s/10k");
        for replica in &self.replicas {
            println!(
                "{:<26} {:>9} {:>7} {:>9.3} {:>12}",
                replica.addr.to_string(),
                replica.calls,
                cell(self.share_pct(replica), 1),
                self.cpu_seconds(replica),
                cell(self.per_10k_calls(replica), 3),
            );
        }
        println!(
            "Spread: max deviation from the mean share ({:.1} %) = {} % of it ({} points)",
            self.mean_share_pct(),
            cell(self.max_deviation_pct(), 1),
            cell(self.max_deviation_points(), 2)
        );
        println!(
            "  (calls: the admin view's per-endpoint `requests` over the measurement, retries included: {} for {} \
             REST requests)",
            self.total_calls(),
            self.summary.requests
        );
        if self.summary.errors > 0 {
            println!("REST GET, {count} replicas: first error: {}", self.summary.first_error.as_deref().unwrap_or("?"));
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .replicas
            .iter()
            .map(|replica| {
                serde_json::json!({
                    "address": replica.addr.to_string(),
                    "calls": replica.calls,
                    "share_pct": self.share_pct(replica),
                    "cpu_ticks": replica.cpu_ticks,
                    "cpu_sec": self.cpu_seconds(replica),
                    "cpu_sec_per_10k_calls": self.per_10k_calls(replica),
                })
            })
            .collect();
        serde_json::json!({
            "replicas": self.replicas.len(),
            "note": "one gateway, UserService replicas sharing one database; the phase's user_service CPU is the \
                     replicas' total, and calls are the admin view's per-endpoint requests (retries included)",
            "phase": self.summary.to_json(),
            "calls": self.total_calls(),
            "mean_share_pct": self.mean_share_pct(),
            "max_share_deviation_pct_of_mean": self.max_deviation_pct(),
            "max_share_deviation_points": self.max_deviation_points(),
            "endpoints": endpoints,
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

/// A running `portico` child process and the addresses it listens on.
struct Server {
    process: ChildGuard,
    /// One per marker given to [`Server::start`], in that order.
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Starts `portico <args>` and waits for a `<marker> addr=…` log line for each of `markers`. Its other log
    /// lines (warnings, with the default filter) are echoed to stderr with the server's name.
    fn start(name: &str, markers: &[&'static str], args: &[OsString], log_filter: &str) -> Result<Self, BoxError> {
        let child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(args)
            .env("RUST_LOG", log_filter)
            // The address is parsed from the text format.
            .env_remove("PORTICO_LOG_FORMAT")
            // Tracing is on only where a phase asks for it with --otlp-endpoint (the tracing phase).
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start portico {name}: {e}"))?;
        // Guarded before anything else can fail, so that every early return stops the process.
        let mut process = ChildGuard { name: name.to_string(), child };
        let stderr = process.child.stderr.take().ok_or("stderr is piped")?;
        let (addr_tx, addr_rx) = mpsc::channel();
        // Also keeps the pipe drained, so the server never blocks on a full stderr.
        thread::spawn({
            let (name, markers) = (name.to_string(), markers.to_vec());
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let found = markers.iter().position(|marker| line.contains(marker)).and_then(|index| {
                        let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                        Some((index, addr.parse::<SocketAddr>().ok()?))
                    });
                    match found {
                        Some(found) => {
                            let _ = addr_tx.send(found);
                        }
                        None => eprintln!("[{name}] {line}"),
                    }
                }
            }
        });
        let mut addrs: Vec<Option<SocketAddr>> = vec![None; markers.len()];
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while let Some(missing) = addrs.iter().position(Option::is_none) {
            match addr_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((index, addr)) => addrs[index] = Some(addr),
                Err(_) => {
                    let status = process.child.try_wait().ok().flatten();
                    let how = status.map_or("did not".to_string(), |s| format!("exited ({s}) and did not"));
                    let marker = markers[missing];
                    return Err(format!("portico {name} {how} log `{marker} addr=…` (RUST_LOG={log_filter})").into());
                }
            }
        }
        Ok(Server { process, addrs: addrs.into_iter().flatten().collect() })
    }

    /// The address of the first marker's line.
    fn addr(&self) -> SocketAddr {
        self.addrs[0]
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
    name: String,
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        stop::terminate(&mut self.child, &self.name);
    }
}
