//! The plain-text listener, end to end: it tells HTTP/1.1 from h2c (prior knowledge) by the first bytes, also
//! when they arrive one at a time, and closes a connection that never says which it speaks.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::rest::{self, Events};
use common::{TestResult, start_gateway, start_gateway_with};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound, so a broken server fails the test instead of hanging it; never a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn h2c_with_prior_knowledge_serves_requests_and_server_streams() -> TestResult {
    let gateway = start_gateway().await;
    let stream = TcpStream::connect(gateway.addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);

    let list = Request::get(format!("http://{}/v1/users", gateway.addr)).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(list).await?;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, http::Version::HTTP_2));
    let body = response.into_body().collect().await?.to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("users"), "{body:?}");

    let watch = Request::get(format!("http://{}/v1/users:watch", gateway.addr))
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(watch).await?;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, http::Version::HTTP_2));
    let mut events = Events::new(response.into_body());
    let first = tokio::time::timeout(PATIENCE, events.next()).await??.ok_or("the stream ended")?;
    assert_eq!(first.json()["type"], "USER_EVENT_TYPE_SNAPSHOT_COMPLETE");
    Ok(())
}

#[tokio::test]
async fn an_http1_request_whose_first_byte_could_start_the_h2_preface_is_served_as_http1() -> TestResult {
    let gateway = start_gateway().await;
    let body = r#"{"name":"Ada","email":"ada@example.com","password":"analytical-engine"}"#;
    let request = format!(
        "POST /v1/users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        gateway.addr,
        body.len()
    );
    let mut stream = TcpStream::connect(gateway.addr).await?;
    // "P" is also how the HTTP/2 preface starts: the server must wait for more before it decides.
    stream.write_all(&request.as_bytes()[..1]).await?;
    stream.flush().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&request.as_bytes()[1..]).await?;
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""email":"ada@example.com""#), "{answer}");

    // A plain HTTP/1.1 client on the same listener.
    assert_eq!(rest::get(gateway.addr, "/healthz").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_connection_that_stops_inside_the_preface_is_closed_after_the_header_timeout() -> TestResult {
    let gateway = start_gateway_with(|config| config.header_read_timeout = Duration::from_millis(300)).await;
    for start in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut stream = TcpStream::connect(gateway.addr).await?;
        stream.write_all(start).await?;
        let mut rest = Vec::new();
        // The server closes the connection without answering: the read ends (or is reset).
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await?;
        assert!(read.is_err() || rest.is_empty(), "{start:?} got an answer: {:?}", String::from_utf8_lossy(&rest));
    }
    Ok(())
}

/// Each worker thread calls the upstream over HTTP/2 connections of its own: with one worker, any number of
/// concurrent requests (below the spill-over point) share one connection; with two, the UserService's endpoint
/// gets a second connection once requests have run on both threads, and never more than two. The same holds
/// whether the threads share the connections (work stealing) or each keeps its own (`--pin-connections`).
#[tokio::test]
async fn each_worker_thread_calls_the_upstream_over_its_own_connection() -> TestResult {
    use tower::ServiceExt;

    let upstream = common::start().await;
    let _ = upstream.client().await; // the UserService is up
    for (workers, pin_connections) in [(1, false), (2, false), (2, true)] {
        let config = portico::gateway::GatewayConfig {
            upstreams: vec![format!("http://{}", upstream.addr)],
            workers,
            pin_connections,
            ..Default::default()
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let started =
            portico::gateway::start(&portico::proto::DESCRIPTOR_POOL, config.clone(), shutdown.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (public, admin) = (started.public, started.admin);
        let token = shutdown.clone();
        tokio::spawn(async move { portico::gateway::serve(listener, public, &config, token).await });

        let connections = || async {
            let view = admin.clone().oneshot(Request::get("/admin/upstreams").body(axum::body::Body::empty())?).await?;
            let view: serde_json::Value = serde_json::from_slice(&view.into_body().collect().await?.to_bytes())?;
            let endpoints = view["upstreams"][0]["state"]["endpoints"].as_array().ok_or("no endpoints")?.clone();
            Ok::<u64, common::rest::Error>(endpoints.iter().filter_map(|e| e["connections"].as_u64()).sum())
        };
        // Rounds of 16 concurrent requests on connections of their own, until both threads have served some
        // (the scheduler decides where a connection runs; with two threads and this much work it soon uses both).
        let mut seen = 0;
        for _ in 0..50 {
            let requests = (0..16).map(|_| common::rest::get(addr, "/v1/users"));
            for reply in futures::future::join_all(requests).await {
                assert_eq!(reply?.status, StatusCode::OK);
            }
            seen = connections().await?;
            if seen >= workers as u64 {
                break;
            }
        }
        assert_eq!(seen, workers as u64, "{workers} worker thread(s), pinned: {pin_connections}");
        shutdown.cancel();
    }
    Ok(())
}
