//! The bulkhead: with the upstream's slots taken and its queue full, requests get 503 at once, and a queued
//! request gives up after the queue wait, instead of piling up.

mod common;

use std::time::{Duration, Instant};

use common::rest;
use portico::gateway::GatewayConfig;
use portico::upstream::limit::LimitConfig;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// An "upstream" that accepts connections and never answers: every call on it waits for its deadline.
async fn silent_upstream() -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_full_bulkhead_answers_503_at_once_and_a_queued_call_gives_up_after_the_wait() -> TestResult {
    let upstream = silent_upstream().await?;
    let mut config = GatewayConfig { upstreams: vec![format!("http://{upstream}")], ..GatewayConfig::default() };
    config.upstream.limit = LimitConfig { max_in_flight: 1, max_queue: 1, max_queue_wait: Duration::from_millis(500) };
    config.upstream.health.enabled = false;
    let (gateway, _shutdown) = common::spawn_gateway(config).await;
    let get = |timeout: &'static str| async move {
        let started = Instant::now();
        let reply = rest::send(gateway, http::Method::GET, "/v1/users/1", &[("grpc-timeout", timeout)], "").await;
        (reply, started.elapsed())
    };

    // The one slot: held until its 3 s deadline.
    let holder = tokio::spawn(get("3S"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one queue place: waits for the slot.
    let queued = tokio::spawn(get("3S"));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Nothing left: refused at once, not after the 3 s deadline.
    let (refused, took) = get("3S").await;
    let refused = refused?;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("queued, the most allowed"), "{}", refused.text());
    assert!(took < Duration::from_secs(2), "refusing took {took:?}");

    let (queued, took) = queued.await?;
    let queued = queued?;
    assert_eq!(queued.status, 503, "{}", queued.text());
    assert!(queued.text().contains("no free slot within 500ms"), "{}", queued.text());
    assert!(took < Duration::from_secs(2), "the queued call took {took:?}");

    let (held, _) = holder.await?;
    assert_eq!(held?.status, 504);
    Ok(())
}
