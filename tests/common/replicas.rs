//! UserService replicas as real processes on their own loopback addresses (127.0.0.x, one shared port, one
//! shared SQLite file in WAL mode), a gateway process in front of them, and a steady client load.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::process::{Error, FAST_FLAGS, Process};
use super::rest;

/// `127.0.0.{last}`.
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A port free on every one of `ips` (checked by binding it on each).
pub fn shared_port(ips: &[IpAddr]) -> Result<u16, Error> {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ips[0], 0))?;
        let port = first.local_addr()?.port();
        let free_everywhere = ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if free_everywhere {
            return Ok(port);
        }
    }
    Err("no port free on every replica address".into())
}

/// One UserService process.
pub struct Replica {
    pub addr: SocketAddr,
    pub process: Process,
}

impl Replica {
    /// Starts `portico user-service` on `addr` with the database `db`, plus `extra` flags, and waits until it
    /// listens.
    pub async fn start(addr: SocketAddr, db: &Path, extra: &[&str]) -> Result<Self, Error> {
        let listen = addr.to_string();
        let db = db.display().to_string();
        let mut args = vec!["user-service", "--listen", &listen, "--db", &db, "--health-check-interval", "200ms"];
        args.extend(FAST_FLAGS);
        args.extend(extra);
        let process = Process::start(&args, "info")?;
        let listening = process.address("user service listening").await?;
        if listening != addr {
            return Err(format!("the replica listens on {listening}, not {addr}").into());
        }
        Ok(Self { addr, process })
    }

    /// Calls of `rpc` (e.g. "GetUser") this process has logged as finished.
    pub fn calls(&self, rpc: &str) -> usize {
        let needle = format!("/{rpc} ");
        self.process.logs().iter().filter(|line| line.contains("grpc call") && line.contains(&needle)).count()
    }

    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        self.process.signal(signal)
    }
}

/// A gateway process with its admin listener.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub process: Process,
}

/// Health checks and ejections fast enough for tests.
pub const FAST_UPSTREAM_FLAGS: [&str; 6] =
    ["--upstream-health-interval", "500ms", "--upstream-health-timeout", "500ms", "--breaker-base-ejection", "1s"];

impl Gateway {
    pub async fn start(upstreams: &str, extra: &[&str]) -> Result<Self, Error> {
        let mut args = vec!["gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        args.extend(["--upstream", upstreams]);
        // A flag in `extra` replaces the fast default (clap refuses a flag given twice).
        for pair in FAST_UPSTREAM_FLAGS.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend(pair);
            }
        }
        args.extend(extra);
        let process = Process::start(&args, "info")?;
        let admin = process.address("admin listening").await?;
        let addr = process.address("gateway listening").await?;
        Ok(Self { addr, admin, process })
    }

    /// The endpoints of the admin view.
    pub async fn endpoints(&self) -> Result<Vec<serde_json::Value>, Error> {
        let reply = rest::get(self.admin, "/admin/upstreams").await?;
        if reply.status != 200 {
            return Err(format!("admin view answered {}: {}", reply.status, reply.text()).into());
        }
        let json = reply.json();
        Ok(json["upstreams"][0]["state"]["endpoints"].as_array().cloned().unwrap_or_default())
    }

    /// The admin view's entry for the endpoint at `addr`.
    pub async fn endpoint(&self, addr: SocketAddr) -> Result<Option<serde_json::Value>, Error> {
        let url = format!("http://{addr}/");
        Ok(self.endpoints().await?.into_iter().find(|e| e["address"] == url.as_str()))
    }

    /// Waits until the endpoint at `addr` satisfies `check` in the admin view; returns how long that took.
    pub async fn wait_for_endpoint(
        &self,
        addr: SocketAddr,
        what: &str,
        limit: Duration,
        check: impl Fn(Option<&serde_json::Value>) -> bool,
    ) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            let endpoint = self.endpoint(addr).await?;
            if check(endpoint.as_ref()) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!("{addr} not {what} within {limit:?}; admin view: {endpoint:#?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether an admin-view endpoint takes traffic: health checks say SERVING and the breaker is closed.
pub fn takes_traffic(endpoint: Option<&serde_json::Value>) -> bool {
    endpoint.is_some_and(|e| e["health"] == "SERVING" && e["breaker"]["state"] == "CLOSED")
}

/// Whether an admin-view endpoint is out of rotation (gone, unhealthy, or ejected).
pub fn out_of_rotation(endpoint: Option<&serde_json::Value>) -> bool {
    endpoint.is_none_or(|e| e["health"] != "SERVING" || e["breaker"]["state"] == "OPEN")
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    /// Non-200 answers and transport errors, with what they were.
    pub failures: Vec<String>,
    /// The slowest answer, of any status.
    pub slowest: Duration,
}

/// `workers` clients sending `GET path` (with `headers`) in a loop until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    workers: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(gateway: SocketAddr, path: &str, headers: &[(&'static str, &'static str)], workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (stop, sent, path, headers) =
                    (Arc::clone(&stop), Arc::clone(&sent), path.to_string(), headers.to_vec());
                tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let reply = rest::send(gateway, http::Method::GET, &path, &headers, bytes::Bytes::new()).await;
                        report.slowest = report.slowest.max(started.elapsed());
                        sent.fetch_add(1, Ordering::Relaxed);
                        match reply {
                            Ok(reply) if reply.status == 200 => report.ok += 1,
                            Ok(reply) => report.failures.push(format!("{} {}", reply.status, reply.text())),
                            Err(error) => report.failures.push(format!("transport: {error}")),
                        }
                    }
                    report
                })
            })
            .collect();
        Self { stop, sent, workers }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further requests have been sent.
    pub async fn run_for(&self, more: u64) {
        let target = self.sent() + more;
        while self.sent() < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(self) -> Result<LoadReport, Error> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for worker in self.workers {
            let report = worker.await?;
            total.ok += report.ok;
            total.failures.extend(report.failures);
            total.slowest = total.slowest.max(report.slowest);
        }
        Ok(total)
    }
}

/// Lets calls already in flight to `replica` land, then keeps `load` running for `more` requests and stops it.
/// Returns `replica`'s GetUser calls before and after, and what the load saw: equal counts mean the replica
/// got no new call while it was out of rotation.
pub async fn calls_while_out_of_rotation(
    replica: &Replica,
    load: Load,
    more: u64,
) -> Result<(usize, usize, LoadReport), Error> {
    // Calls already on their way when the gateway learnt of the change may still land; give them a moment.
    let settle = Duration::from_millis(200);
    tokio::time::sleep(settle).await;
    let before = replica.calls("GetUser");
    load.run_for(more).await;
    let report = load.stop().await?;
    tokio::time::sleep(settle).await;
    Ok((before, replica.calls("GetUser"), report))
}

/// A temporary directory with the replicas' shared database file.
pub struct SharedDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl SharedDb {
    pub fn new() -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("users.db");
        Ok(Self { dir, path })
    }
}

/// Creates a user through the gateway and returns its REST path.
pub async fn create_user(gateway: SocketAddr, name: &str) -> Result<String, Error> {
    let body =
        serde_json::json!({ "name": name, "email": format!("{name}@example.com"), "password": "s3cret-passw0rd" });
    let reply = rest::post_json(gateway, "/v1/users", &body).await?;
    if reply.status != 200 {
        return Err(format!("create answered {}: {}", reply.status, reply.text()).into());
    }
    let id = reply.json()["id"].as_str().map(str::to_string).ok_or("the user has an id")?;
    Ok(format!("/v1/users/{id}"))
}

/// Serialises the tests of one binary that run replica clusters: each starts four or more processes, and on
/// two cores several clusters at once would starve each other and blur what a test measures.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The replicas' addresses: 127.0.0.2, .3, … on one port.
pub fn addresses(count: u8) -> Result<Vec<SocketAddr>, Error> {
    let ips: Vec<_> = (2..2 + count).map(loopback).collect();
    let port = shared_port(&ips)?;
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
}
