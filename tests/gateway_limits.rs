//! The gateway's limits, end to end: a client over its rate gets 429 with Retry-After and RateLimit headers
//! while another client goes on; load shedding and the stream cap answer 503 at once, and free their slots
//! when the requests end.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use common::jwt;
use common::rest::{self, Lines, Reply};
use common::{TestResult, start_gateway_with};
use http::{Method, StatusCode};
use portico::gateway::limits::{Rate, RateLimitConfig, RateLimitKey};
use tokio::io::AsyncWriteExt;

fn two_per_minute(key: RateLimitKey, trusted: &str) -> RateLimitConfig {
    RateLimitConfig {
        rate: Rate { count: NonZeroU32::MIN.saturating_add(1), period: Duration::from_secs(60) },
        burst: None,
        key,
        trusted_proxies: if trusted.is_empty() { Vec::new() } else { vec![trusted.parse().expect("CIDR")] },
    }
}

async fn list_as(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Reply, rest::Error> {
    rest::send(addr, Method::GET, "/v1/users", headers, Bytes::new()).await
}

fn assert_rate_limited(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert_eq!(reply.json()["code"], 8, "RESOURCE_EXHAUSTED");
    let retry_after: u64 = reply.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or_default();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(reply.header("ratelimit-policy"), Some(r#""default";q=2;w=60"#));
    assert!(reply.header("ratelimit").is_some_and(|v| v.starts_with(r#""default";r=0;t="#)), "{:?}", reply.headers);
}

#[tokio::test]
async fn one_client_is_rate_limited_while_another_is_not() -> TestResult {
    // The test's connections come from 127.0.0.1, a trusted proxy: X-Forwarded-For names the clients.
    let gateway =
        start_gateway_with(|c| c.limits.rate_limit = Some(two_per_minute(RateLimitKey::Ip, "127.0.0.0/8"))).await;
    let (first, second) = ([("x-forwarded-for", "198.51.100.1")], [("x-forwarded-for", "198.51.100.2")]);
    for remaining in ["1", "0"] {
        let reply = list_as(gateway.addr, &first).await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(
            reply.header("ratelimit").is_some_and(|v| v.contains(&format!(";r={remaining};"))),
            "{:?}",
            reply.headers
        );
    }
    assert_rate_limited(&list_as(gateway.addr, &first).await?);
    assert_eq!(list_as(gateway.addr, &second).await?.status, StatusCode::OK, "another client is not limited");
    // Probes are never limited.
    assert_eq!(rest::send(gateway.addr, Method::GET, "/healthz", &first, Bytes::new()).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_does_not_make_a_new_client() -> TestResult {
    let gateway = start_gateway_with(|c| c.limits.rate_limit = Some(two_per_minute(RateLimitKey::Ip, ""))).await;
    for n in 0..2 {
        let forged = format!("203.0.113.{n}");
        assert_eq!(list_as(gateway.addr, &[("x-forwarded-for", &forged)]).await?.status, StatusCode::OK);
    }
    assert_rate_limited(&list_as(gateway.addr, &[("x-forwarded-for", "203.0.113.99")]).await?);
    Ok(())
}

#[tokio::test]
async fn subjects_are_limited_apart_from_one_address() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let file = dir.path().join("secret");
    std::fs::write(&file, secret)?;
    let auth = portico::auth::AuthConfig::new(portico::auth::KeySource::Hs256SecretFile(file));
    let gateway = start_gateway_with(|c| {
        c.auth = Some(auth);
        c.limits.rate_limit = Some(two_per_minute(RateLimitKey::Subject, ""));
    })
    .await;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &jwt::claims(sub, &["admin"]),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .map(|t| jwt::bearer(&t))
    };
    let (alice, bob) = (token("alice")?, token("bob")?);
    for _ in 0..2 {
        assert_eq!(list_as(gateway.addr, &[("authorization", &alice)]).await?.status, StatusCode::OK);
    }
    assert_rate_limited(&list_as(gateway.addr, &[("authorization", &alice)]).await?);
    assert_eq!(list_as(gateway.addr, &[("authorization", &bob)]).await?.status, StatusCode::OK);
    Ok(())
}

/// Retries `probe` until it answers `status` (a slot being taken or freed by another connection is not
/// instantaneous); fails after 100 tries.
async fn until_status(addr: SocketAddr, path: &str, status: StatusCode) -> Result<Reply, rest::Error> {
    let mut last = None;
    for _ in 0..100 {
        let reply = rest::get(addr, path).await?;
        if reply.status == status {
            return Ok(reply);
        }
        last = Some(reply.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{path} never answered {status}; last {last:?}").into())
}

#[tokio::test]
async fn load_shedding_answers_at_once_and_counts_requests_before_their_bodies() -> TestResult {
    let gateway = start_gateway_with(|c| {
        c.limits.max_concurrent_requests = Some(1);
        c.body_read_timeout = Duration::from_secs(120);
    })
    .await;
    // A request whose body never comes holds the only slot while the gateway waits for it. The connections are
    // served on several worker threads, so a GET sent right after it can reach the slot first (and the slow
    // request is shed instead): the GETs wait a moment, longer on each try, and the slow request is sent again.
    let mut held = None;
    for attempt in 1..=10 {
        let mut slow = tokio::net::TcpStream::connect(gateway.addr).await?;
        slow.write_all(
            b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        if let Ok(shed) = until_status(gateway.addr, "/v1/users", StatusCode::SERVICE_UNAVAILABLE).await {
            held = Some((slow, shed));
            break;
        }
    }
    let (slow, shed) = held.ok_or("no slow request ever held the slot")?;
    assert_eq!(shed.json()["code"], 14, "UNAVAILABLE");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(rest::get(gateway.addr, "/healthz").await?.status, StatusCode::OK, "probes are never shed");
    drop(slow);
    until_status(gateway.addr, "/v1/users", StatusCode::OK).await?;
    Ok(())
}

#[tokio::test]
async fn the_stream_cap_refuses_one_stream_too_many() -> TestResult {
    let gateway = start_gateway_with(|c| c.limits.max_streams = Some(1)).await;
    let open = rest::open(gateway.addr, Method::GET, "/v1/users:watch", &[], Bytes::new()).await?;
    assert_eq!(open.status(), StatusCode::OK);
    let mut lines = Lines::new(open.into_body());
    assert!(lines.next().await?.is_some_and(|line| line.contains("SNAPSHOT_COMPLETE")), "the first stream runs");

    let refused = rest::get(gateway.addr, "/v1/users:watch").await?;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert!(refused.json()["message"].as_str().unwrap_or_default().contains("streams"), "{}", refused.text());
    assert_eq!(rest::get(gateway.addr, "/v1/users").await?.status, StatusCode::OK, "unary calls are not capped");

    drop(lines);
    let reopened = async {
        for _ in 0..100 {
            let response = rest::open(gateway.addr, Method::GET, "/v1/users:watch", &[], Bytes::new()).await?;
            if response.status() == StatusCode::OK {
                return Ok::<_, rest::Error>(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    };
    assert!(reopened.await?, "the slot is freed when the first stream's client goes away");
    Ok(())
}
