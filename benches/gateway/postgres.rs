//! The PostgreSQL phase: REST creates and gets through one gateway over UserService replicas that share one
//! PostgreSQL database (which the benchmark creates and drops), each with `--nats-url` to a NATS server the
//! benchmark starts, when there is one. Besides the usual figures it reports how fast the outbox relay
//! publishes under the create load, and how far it lags behind the commits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::services::{BenchDatabase, NatsServer};
use super::{
    BoxError, Phase, ReplicaResult, ReplicaSample, Run, Server, Settings, Target, cell, drive, print_table_header,
    replica_sample, seed, wait_until_serving,
};

/// How often the lag sampler reads the head revision and the published mark.
const LAG_SAMPLE: Duration = Duration::from_millis(100);
/// How long the relay may take to publish a backlog before the benchmark gives up on it.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// The phase's figures: one [`ReplicaResult`] per load, and the relay's.
pub struct PostgresResult {
    replicas: usize,
    loads: Vec<ReplicaResult>,
    events: Option<EventFigures>,
}

/// What the relay did during the create load.
struct EventFigures {
    /// Events the published mark advanced by during the measurement, and per second.
    published: i64,
    published_per_sec: f64,
    /// Changes committed during the measurement, per second.
    committed_per_sec: f64,
    /// Head revision minus published mark, sampled every [`LAG_SAMPLE`] during the load.
    lag_mean: f64,
    lag_max: i64,
    /// From the end of the load until the mark reached the head.
    catch_up: Duration,
    /// What the stream holds at the end, against the head revision: equal when every change is in it once.
    in_stream: u64,
    head: i64,
}

/// What is read at both ends of a measurement.
struct Sample {
    replica: ReplicaSample,
    head: i64,
    published: i64,
}

/// The head revision and the published mark.
async fn revisions(pool: &PgPool) -> Result<(i64, i64), BoxError> {
    let query = "SELECT (SELECT revision FROM revision_counter), (SELECT published FROM relay_mark)";
    Ok(sqlx::query_as(query).fetch_one(pool).await?)
}

/// Waits until the relay has published everything committed; returns how long that took.
async fn caught_up(pool: &PgPool) -> Result<Duration, BoxError> {
    let started = Instant::now();
    loop {
        let (head, published) = revisions(pool).await?;
        if published >= head {
            return Ok(started.elapsed());
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(format!("the relay is still at {published} of {head} after {CATCH_UP_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples head − mark until `stop`.
fn sample_lag(pool: PgPool, stop: Arc<AtomicBool>) -> JoinHandle<Result<Vec<i64>, String>> {
    tokio::spawn(async move {
        let mut lags = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (head, published) = revisions(&pool).await.map_err(|e| e.to_string())?;
            lags.push(head - published);
            tokio::time::sleep(LAG_SAMPLE).await;
        }
        Ok(lags)
    })
}

/// Messages in the user events stream.
async fn stream_length(nats_url: &str) -> Result<u64, BoxError> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let mut stream = jetstream.get_stream(portico::user_service::relay::DEFAULT_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

fn start_replica(name: &str, settings: &Settings, db: &str, nats: Option<&str>) -> Result<Server, BoxError> {
    let mut args: Vec<std::ffi::OsString> = ["user-service", "--listen", "127.0.0.1:0", "--db", db]
        .into_iter()
        .chain(["--password-hash-memory-kib", &settings.hash_memory_kib.to_string()])
        .chain(["--password-hash-iterations", &settings.hash_iterations.to_string()])
        .map(Into::into)
        .collect();
    if let Some(url) = nats {
        args.extend(["--nats-url".into(), url.into()]);
    }
    // The relay logs when it takes the lease: which replica publishes shows in the output.
    let log_filter = format!("{},portico::user_service::relay=info", settings.log_filter);
    Server::start(name, &["user service listening"], &args, &log_filter)
}

/// Runs the phase; `Ok(None)` (with a note) when no PostgreSQL server is reachable.
pub async fn run(settings: &Settings, dir: &Path, ticks_per_sec: f64) -> Result<Option<PostgresResult>, BoxError> {
    let database = match BenchDatabase::create(&settings.postgres).await {
        Ok(database) => database,
        Err(error) => {
            println!("\nPostgreSQL phase skipped: {error}");
            return Ok(None);
        }
    };
    let nats_dir = dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let nats = NatsServer::start(&settings.nats_server, &nats_dir).await?;
    let nats_url = nats.as_ref().map(|nats| nats.url.as_str());
    if nats.is_none() {
        println!("\nPostgreSQL phase: no nats-server ({}), so no event figures", settings.nats_server);
    }

    // The first replica migrates the database; seeding through it waits for that, before the others start.
    let mut replicas = vec![start_replica("pg replica 1", settings, &database.url, nats_url)?];
    let first = format!("http://{}", replicas[0].addr());
    let mut channels = Vec::with_capacity(settings.grpc_connections);
    for _ in 0..settings.grpc_connections {
        channels.push(Channel::from_shared(first.clone())?.connect().await?);
    }
    let ids = seed(&channels, settings.users, settings.workers).await?;
    for index in 2..=settings.postgres_replicas {
        replicas.push(start_replica(&format!("pg replica {index}"), settings, &database.url, nats_url)?);
    }
    let addrs: Vec<_> = replicas.iter().map(Server::addr).collect();
    let upstream = addrs.iter().map(|addr| format!("http://{addr}")).collect::<Vec<_>>().join(",");
    let gateway_args = ["gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream", &upstream];
    let gateway = Server::start(
        "gateway (PostgreSQL)",
        &["gateway listening", "admin listening"],
        &gateway_args.map(Into::into),
        &settings.log_filter,
    )?;
    let admin = gateway.addrs[1];
    wait_until_serving(admin, &addrs).await?;

    let pool = PgPoolOptions::new().max_connections(2).connect(&database.url).await?;
    if nats.is_some() {
        // The seeding's events, so that the create load's figures are its own.
        caught_up(&pool).await?;
    }
    let target = Arc::new(Target::new(gateway.addr(), channels, ids)?);
    let mut pids = vec![gateway.pid()];
    pids.extend(replicas.iter().map(Server::pid));
    pids.push("self".to_string());
    let (addrs_ref, pids_ref, pool_ref) = (&addrs, &pids, &pool);
    let sample = move || async move {
        let replica = replica_sample(admin, addrs_ref, pids_ref).await?;
        let (head, published) = revisions(pool_ref).await?;
        Ok::<_, BoxError>(Sample { replica, head, published })
    };

    let mut loads = Vec::new();
    let mut events = None;
    for phase in [Phase::PgRestPost, Phase::PgRestGet] {
        let relay_figures = nats_url.filter(|_| phase == Phase::PgRestPost);
        let stop = Arc::new(AtomicBool::new(false));
        let lags = relay_figures.map(|_| sample_lag(pool.clone(), Arc::clone(&stop)));
        let run = drive(phase, settings, &target, sample).await?;
        stop.store(true, Ordering::Relaxed);
        if let (Some(nats_url), Some(lags)) = (relay_figures, lags) {
            let lags = lags.await?.map_err(|e| format!("sampling the relay's lag: {e}"))?;
            let catch_up = caught_up(&pool).await?;
            let seconds = run.elapsed.as_secs_f64();
            let published = run.after.published - run.before.published;
            let (head, _) = revisions(&pool).await?;
            events = Some(EventFigures {
                published,
                published_per_sec: published as f64 / seconds,
                committed_per_sec: (run.after.head - run.before.head) as f64 / seconds,
                lag_mean: lags.iter().sum::<i64>() as f64 / lags.len().max(1) as f64,
                lag_max: lags.iter().copied().max().unwrap_or(0),
                catch_up,
                in_stream: stream_length(nats_url).await?,
                head,
            });
        }
        let run = Run { tally: run.tally, elapsed: run.elapsed, before: run.before.replica, after: run.after.replica };
        loads.push(ReplicaResult::new(phase, run, addrs.clone(), 0, ticks_per_sec));
    }
    // Client connections first, then the servers, then NATS and the database.
    drop(target);
    drop(gateway);
    drop(replicas);
    drop(nats);
    drop(database);
    Ok(Some(PostgresResult { replicas: settings.postgres_replicas, loads, events }))
}

impl PostgresResult {
    pub fn print(&self) {
        println!();
        println!(
            "PostgreSQL: REST through one gateway over {} UserService replicas sharing one database{}",
            self.replicas,
            if self.events.is_some() { ", each with --nats-url (one relay publishes)" } else { "" }
        );
        print_table_header("replicas");
        for load in &self.loads {
            load.summary.print_row();
        }
        for load in &self.loads {
            let per_replica: Vec<String> = load
                .replicas
                .iter()
                .map(|r| format!("{} {} calls, {} CPU s/10k", r.addr, r.calls, cell(load.per_10k_calls(r), 3)))
                .collect();
            println!("  {}: {}", load.summary.phase.label(), per_replica.join("; "));
        }
        for load in self.loads.iter().filter(|load| load.summary.errors > 0) {
            let error = load.summary.first_error.as_deref().unwrap_or("?");
            println!("{}: first error: {error}", load.summary.phase.label());
        }
        if let Some(events) = &self.events {
            println!(
                "Events during the POST load: {} published, {:.0}/s (commits: {:.0}/s); relay lag (head revision − \
                 published mark, every {} ms): mean {:.1}, max {} revisions; caught up {} ms after the load; the \
                 stream holds {} events for {} revisions",
                events.published,
                events.published_per_sec,
                events.committed_per_sec,
                LAG_SAMPLE.as_millis(),
                events.lag_mean,
                events.lag_max,
                events.catch_up.as_millis(),
                events.in_stream,
                events.head
            );
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "replicas": self.replicas,
            "loads": self.loads.iter().map(ReplicaResult::to_json).collect::<Vec<_>>(),
            "events": self.events.as_ref().map(|events| serde_json::json!({
                "published": events.published,
                "published_per_sec": events.published_per_sec,
                "committed_per_sec": events.committed_per_sec,
                "lag_revisions_mean": events.lag_mean,
                "lag_revisions_max": events.lag_max,
                "lag_sample_ms": LAG_SAMPLE.as_millis(),
                "catch_up_ms": events.catch_up.as_millis(),
                "in_stream": events.in_stream,
                "head_revision": events.head,
            })),
        })
    }
}
