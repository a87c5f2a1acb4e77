//! Three UserService replicas (real processes on 127.0.0.2-4, one shared SQLite file) behind one gateway
//! process: spread, a replica killed, one draining, one hung, and none left.

mod common;

use std::time::Duration;

use common::process::Error;
use common::replicas::{
    Gateway, Load, Replica, SharedDb, addresses, calls_while_out_of_rotation, create_user, exclusive, out_of_rotation,
    takes_traffic,
};
use common::rest;

type TestResult = Result<(), Error>;

struct Cluster {
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
    replicas: Vec<Replica>,
    gateway: Gateway,
    db: SharedDb,
    /// A user's REST path.
    user: String,
}

/// Starts three replicas (the second with `second_flags`) and a gateway with `gateway_flags`, waits until the
/// gateway sees all three serving, and creates a user to read.
async fn cluster(second_flags: &[&str], gateway_flags: &[&str]) -> Result<Cluster, Error> {
    let exclusive = exclusive().await;
    let db = SharedDb::new()?;
    let mut replicas = Vec::new();
    for (index, addr) in addresses(3)?.into_iter().enumerate() {
        let flags = if index == 1 { second_flags } else { &[] };
        replicas.push(Replica::start(addr, &db.path, flags).await?);
    }
    let upstreams: Vec<String> = replicas.iter().map(|r| format!("http://{}", r.addr)).collect();
    let gateway = Gateway::start(&upstreams.join(","), gateway_flags).await?;
    for replica in &replicas {
        gateway.wait_for_endpoint(replica.addr, "serving", Duration::from_secs(10), takes_traffic).await?;
    }
    let user = create_user(gateway.addr, "reader").await?;
    Ok(Cluster { _exclusive: exclusive, replicas, gateway, db, user })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_spreads_evenly_across_the_replicas() -> TestResult {
    let cluster = cluster(&[], &[]).await?;
    let load = Load::start(cluster.gateway.addr, &cluster.user, &[], 8);
    load.run_for(3000).await;
    let report = load.stop().await?;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // The replicas log each call when it ends; give the last ones a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls: Vec<usize> = cluster.replicas.iter().map(|r| r.calls("GetUser")).collect();
    let total: usize = calls.iter().sum();
    assert_eq!(total as u64, report.ok, "every GET reached exactly one replica once: {calls:?}");
    let mean = total as f64 / calls.len() as f64;
    for count in &calls {
        let share = *count as f64 / mean;
        assert!((0.8..=1.2).contains(&share), "replica counts {calls:?} stray more than 20% from the mean {mean}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_no_failed_get_and_rejoins_when_restarted() -> TestResult {
    let mut cluster = cluster(&[], &[]).await?;
    let load = Load::start(cluster.gateway.addr, &cluster.user, &[], 8);
    load.run_for(300).await;

    let victim = cluster.replicas[1].addr;
    cluster.replicas[1].process.child.kill()?; // SIGKILL: no goodbye, connections just die
    let ejected_after =
        cluster.gateway.wait_for_endpoint(victim, "ejected", Duration::from_secs(1), out_of_rotation).await?;
    load.run_for(1000).await;
    let report = load.stop().await?;
    assert!(report.failures.is_empty(), "GETs failed while a replica died: {:?}", report.failures);
    let endpoint = cluster.gateway.endpoint(victim).await?.ok_or("the endpoint is still listed")?;
    assert_ne!(endpoint["health"], "SERVING", "{endpoint:#}");
    eprintln!("ejected {ejected_after:?} after SIGKILL; admin view: {endpoint:#}");

    // Back on the same address: health checks notice, and it gets traffic again.
    let restarted = Replica::start(victim, &cluster.db.path, &[]).await?;
    cluster.gateway.wait_for_endpoint(victim, "serving again", Duration::from_secs(10), takes_traffic).await?;
    let load = Load::start(cluster.gateway.addr, &cluster.user, &[], 8);
    load.run_for(600).await;
    let report = load.stop().await?;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(restarted.calls("GetUser") > 60, "the restarted replica got {} of 600 GETs", restarted.calls("GetUser"));
    cluster.replicas[1] = restarted;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_gets_no_new_requests() -> TestResult {
    // The second replica will report NOT_SERVING for 10 s after SIGTERM while still answering calls.
    let cluster = cluster(&["--shutdown-grace", "10s"], &[]).await?;
    let load = Load::start(cluster.gateway.addr, &cluster.user, &[], 8);
    load.run_for(300).await;
    let draining = &cluster.replicas[1];
    assert!(draining.calls("GetUser") > 0);

    draining.signal("-TERM")?;
    cluster
        .gateway
        .wait_for_endpoint(draining.addr, "NOT_SERVING", Duration::from_secs(2), |e| {
            e.is_some_and(|e| e["health"] == "NOT_SERVING")
        })
        .await?;
    let (before, after, report) = calls_while_out_of_rotation(draining, load, 1000).await?;
    assert_eq!(after, before, "the draining replica still got new GETs");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_costs_bounded_504s_then_is_ejected() -> TestResult {
    // Health checks slower than the breaker, so that the breaker's part is seen.
    // The gateway's own deadline: one a client chooses says nothing about the endpoint and never ejects it.
    let gateway_flags =
        ["--upstream-health-interval", "2s", "--upstream-health-timeout", "1s", "--upstream-timeout", "400ms"];
    let cluster = cluster(&[], &gateway_flags).await?;
    let hung = &cluster.replicas[1];
    hung.signal("-STOP")?; // alive, connections open, answers nothing
    let deadline: [(&str, &str); 0] = [];
    let load = Load::start(cluster.gateway.addr, &cluster.user, &deadline, 8);
    let opened = |e: Option<&serde_json::Value>| e.is_some_and(|e| e["breaker"]["state"] == "OPEN");
    cluster.gateway.wait_for_endpoint(hung.addr, "ejected by its breaker", Duration::from_secs(10), opened).await?;
    // The health check's keep-alive ping then finds it unreachable too, so no half-open probe goes there.
    let unreachable = |e: Option<&serde_json::Value>| e.is_some_and(|e| e["health"] == "UNREACHABLE");
    cluster.gateway.wait_for_endpoint(hung.addr, "unreachable", Duration::from_secs(10), unreachable).await?;
    let report = load.stop().await?;
    // Calls that went to the hung replica before its ejection end at their deadline: 504, not a hang.
    assert!(report.failures.iter().all(|f| f.starts_with("504")), "{:?}", report.failures);
    assert!(report.slowest < Duration::from_secs(3), "a request took {:?} with a 400 ms deadline", report.slowest);
    eprintln!("{} GETs answered 504 before the ejection", report.failures.len());

    // Once it is out, the others answer everything.
    let load = Load::start(cluster.gateway.addr, &cluster.user, &deadline, 8);
    load.run_for(500).await;
    let after = load.stop().await?;
    assert!(after.failures.is_empty(), "failures after the ejection: {:?}", after.failures);
    hung.signal("-CONT")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_usable_replica_requests_fail_fast_with_503_and_retry_after() -> TestResult {
    let mut cluster = cluster(&[], &[]).await?;
    for replica in &mut cluster.replicas {
        replica.process.child.kill()?;
    }
    for replica in &cluster.replicas {
        cluster.gateway.wait_for_endpoint(replica.addr, "ejected", Duration::from_secs(2), out_of_rotation).await?;
    }
    // A 10 s deadline: an answer that hung until it would be a 504.
    let reply =
        rest::send(cluster.gateway.addr, http::Method::GET, &cluster.user, &[("grpc-timeout", "10S")], "").await?;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["code"], 14);
    assert!(reply.text().contains("no upstream endpoint is available"), "{}", reply.text());
    let retry_after: u64 = reply.header("retry-after").ok_or("Retry-After")?.parse()?;
    assert!((1..=30).contains(&retry_after), "{retry_after}");

    let ready = rest::get(cluster.gateway.addr, "/readyz").await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not ready");
    Ok(())
}
