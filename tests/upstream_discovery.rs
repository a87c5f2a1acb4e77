//! Discovery without restarts: replicas that appear in DNS (a real dnsmasq the test starts) or in an endpoint
//! file get traffic, and ones that disappear stop getting it, while a steady load sees no failure.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::process::Error;
use common::replicas::{
    Gateway, Load, Replica, SharedDb, addresses, calls_while_out_of_rotation, create_user, exclusive, takes_traffic,
};

type TestResult = Result<(), Error>;

const NAME: &str = "users.portico.test";

/// Replaces what discovery sees; returns once it is visible (DNS answers it, or the file is in place).
trait Registry {
    fn publish(&self, replicas: &[SocketAddr]) -> Result<(), Error>;
}

impl Registry for Dnsmasq {
    fn publish(&self, replicas: &[SocketAddr]) -> Result<(), Error> {
        let ips: Vec<_> = replicas.iter().map(SocketAddr::ip).collect();
        // `set` polls dnsmasq with blocking queries until it serves the new answer.
        tokio::task::block_in_place(|| self.set(NAME, &ips));
        Ok(())
    }
}

struct EndpointFile<'a>(&'a Path);

impl Registry for EndpointFile<'_> {
    fn publish(&self, replicas: &[SocketAddr]) -> Result<(), Error> {
        let urls: Vec<String> = replicas.iter().map(|addr| format!("http://{addr}")).collect();
        // Written aside and renamed into place, as configuration management does, so no half-written file is
        // ever read.
        let staging = self.0.with_extension("tmp");
        std::fs::write(&staging, serde_json::json!({ "endpoints": urls }).to_string())?;
        std::fs::rename(&staging, self.0)?;
        Ok(())
    }
}

/// Two replicas; discovery first lists the first, then both, then only the second.
async fn follows_the_registry(
    registry: &impl Registry,
    upstream: &str,
    flags: &[&str],
    replicas: &[Replica],
) -> TestResult {
    let (first, second) = (&replicas[0], &replicas[1]);
    let gateway = Gateway::start(upstream, flags).await?;
    gateway.wait_for_endpoint(first.addr, "serving", Duration::from_secs(10), takes_traffic).await?;
    assert!(gateway.endpoint(second.addr).await?.is_none(), "the second replica is not listed yet");
    let user = create_user(gateway.addr, "reader").await?;
    let load = Load::start(gateway.addr, &user, &[], 4);
    load.run_for(200).await;
    assert_eq!(second.calls("GetUser"), 0);

    registry.publish(&[first.addr, second.addr])?;
    gateway.wait_for_endpoint(second.addr, "discovered", Duration::from_secs(10), takes_traffic).await?;
    load.run_for(600).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second_calls = second.calls("GetUser");
    assert!(second_calls > 60, "the new replica got {second_calls} GETs");

    registry.publish(&[second.addr])?;
    gateway.wait_for_endpoint(first.addr, "removed", Duration::from_secs(10), |e| e.is_none()).await?;
    // Calls already in flight on it finish there; then it gets no more.
    let (before, after, report) = calls_while_out_of_rotation(first, load, 400).await?;
    assert_eq!(after, before, "the removed replica still got GETs");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    Ok(())
}

async fn two_replicas(db: &SharedDb) -> Result<Vec<Replica>, Error> {
    let mut replicas = Vec::new();
    for addr in addresses(2)? {
        replicas.push(Replica::start(addr, &db.path, &[]).await?);
    }
    Ok(replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_and_go_with_their_dns_records() -> TestResult {
    let _exclusive = exclusive().await;
    let db = SharedDb::new()?;
    let replicas = two_replicas(&db).await?;
    let dns = Dnsmasq::start();
    dns.publish(&[replicas[0].addr])?;
    let upstream = format!("dns://{NAME}:{}", replicas[0].addr.port());
    let server = dns.addr().to_string();
    let flags = ["--upstream-dns-server", &server, "--upstream-dns-refresh", "200ms"];
    follows_the_registry(&dns, &upstream, &flags, &replicas).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_and_go_with_the_endpoint_file() -> TestResult {
    let _exclusive = exclusive().await;
    let db = SharedDb::new()?;
    let replicas = two_replicas(&db).await?;
    let path = db.dir.path().join("endpoints.json");
    let file = EndpointFile(&path);
    file.publish(&[replicas[0].addr])?;
    let upstream = format!("file://{}", path.display());
    follows_the_registry(&file, &upstream, &["--upstream-file-poll", "100ms"], &replicas).await
}
