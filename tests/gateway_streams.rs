//! Streams through the gateway: WatchUsers as SSE and NDJSON (with Last-Event-ID reconnects and errors
//! mid-stream), and BatchCreateUsers from JSON-array and NDJSON bodies (all-or-nothing, even when the body
//! breaks half-way).

mod common;

use std::time::Duration;

use common::rest::{self, Events, Lines, get, open, post_json, send};
use common::{TestGateway, TestResult, start_gateway};
use http::Method;
use serde_json::json;

async fn create(gateway: &TestGateway, name: &str, email: &str) -> Result<serde_json::Value, rest::Error> {
    let reply =
        post_json(gateway.addr, "/v1/users", &json!({"name": name, "email": email, "password": "correct-horse"}))
            .await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Ok(reply.json())
}

async fn count(gateway: &TestGateway) -> Result<i64, rest::Error> {
    Ok(get(gateway.addr, "/v1/users").await?.json()["totalCount"].as_i64().unwrap_or(-1))
}

async fn sse(gateway: &TestGateway, path: &str, last_event_id: Option<&str>) -> Result<Events, rest::Error> {
    let mut headers = vec![("accept", "text/event-stream")];
    if let Some(id) = last_event_id {
        headers.push(("last-event-id", id));
    }
    let response = open(gateway.addr, Method::GET, path, &headers, "").await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    Ok(Events::new(response.into_body()))
}

#[tokio::test]
async fn sse_sends_snapshot_then_changes_with_revision_ids_and_resumes_from_last_event_id() -> TestResult {
    let gateway = start_gateway().await;
    let ada = create(&gateway, "Ada", "ada@example.com").await?;
    let mut events = sse(&gateway, "/v1/users:watch", None).await?;

    let existing = events.next().await?.ok_or("snapshot event")?;
    assert_eq!(existing.json()["type"], "USER_EVENT_TYPE_EXISTING");
    assert_eq!(existing.json()["user"]["id"], ada["id"]);
    assert_eq!(existing.id.as_deref(), Some(""), "snapshot events are not resume points");
    let marker = events.next().await?.ok_or("marker")?;
    assert_eq!(marker.json()["type"], "USER_EVENT_TYPE_SNAPSHOT_COMPLETE");
    assert_eq!(marker.id.as_deref(), marker.json()["revision"].as_str(), "the id is the revision");

    let grace = create(&gateway, "Grace", "grace@example.com").await?;
    let created = events.next().await?.ok_or("created")?;
    assert_eq!(
        (created.json()["type"].as_str(), &created.json()["user"]["id"]),
        (Some("USER_EVENT_TYPE_CREATED"), &grace["id"])
    );
    let last_seen = created.id.clone().ok_or("id")?;
    drop(events); // the client goes away…

    // …changes happen meanwhile…
    let alan = create(&gateway, "Alan", "alan@example.com").await?;
    send(gateway.addr, Method::DELETE, &format!("/v1/users/{}", ada["id"].as_str().unwrap_or_default()), &[], "")
        .await?;

    // …and a reconnect with Last-Event-ID gets exactly what it missed: no snapshot, no gap, no duplicate.
    let mut resumed = sse(&gateway, "/v1/users:watch", Some(&last_seen)).await?;
    let first = resumed.next().await?.ok_or("first resumed")?;
    let second = resumed.next().await?.ok_or("second resumed")?;
    assert_eq!(
        (first.json()["type"].as_str(), &first.json()["user"]["id"]),
        (Some("USER_EVENT_TYPE_CREATED"), &alan["id"])
    );
    assert_eq!(
        (second.json()["type"].as_str(), &second.json()["user"]["id"]),
        (Some("USER_EVENT_TYPE_DELETED"), &ada["id"])
    );
    let ids: Vec<i64> = [&last_seen, first.id.as_ref().ok_or("id")?, second.id.as_ref().ok_or("id")?]
        .iter()
        .map(|id| id.parse().unwrap_or(0))
        .collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "strictly increasing ids {ids:?}");
    Ok(())
}

#[tokio::test]
async fn ndjson_is_the_default_and_errors_arrive_as_a_final_line() -> TestResult {
    let gateway = start_gateway().await;
    let ada = create(&gateway, "Ada", "ada@example.com").await?;
    let response = open(gateway.addr, Method::GET, "/v1/users:watch?filter=name%3AAda", &[], "").await?;
    assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-ndjson"));
    let mut lines = Lines::new(response.into_body());
    let first: serde_json::Value = serde_json::from_str(&lines.next().await?.ok_or("line")?)?;
    assert_eq!(first["result"]["user"]["id"], ada["id"]);
    let marker: serde_json::Value = serde_json::from_str(&lines.next().await?.ok_or("line")?)?;
    assert_eq!(marker["result"]["type"], "USER_EVENT_TYPE_SNAPSHOT_COMPLETE");
    create(&gateway, "Grace", "grace@example.com").await?; // filtered out
    create(&gateway, "Ada Two", "ada2@example.com").await?;
    let next: serde_json::Value = serde_json::from_str(&lines.next().await?.ok_or("line")?)?;
    assert_eq!(next["result"]["user"]["name"], "Ada Two");

    // An error mid-stream: the client's deadline expires while events are flowing.
    let response = open(gateway.addr, Method::GET, "/v1/users:watch", &[("grpc-timeout", "500m")], "").await?;
    let mut lines = Lines::new(response.into_body());
    let mut results = 0;
    let error = loop {
        let line = lines.next().await?.ok_or("stream ended without an error line")?;
        let value: serde_json::Value = serde_json::from_str(&line)?;
        if value.get("error").is_some() {
            break value;
        }
        results += 1;
    };
    assert_eq!(results, 4, "3 users and the marker came before the error");
    assert_eq!(error["error"]["code"], 4, "DEADLINE_EXCEEDED: {error}");
    assert!(lines.next().await?.is_none(), "the error line is the last");

    // An error mid-stream as SSE: an `error` event carrying the Status, after the events that came first.
    let headers = [("accept", "text/event-stream"), ("grpc-timeout", "500m")];
    let response = open(gateway.addr, Method::GET, "/v1/users:watch", &headers, "").await?;
    let mut events = Events::new(response.into_body());
    let mut data_events = 0;
    let error = loop {
        let event = events.next().await?.ok_or("the stream ended without an error event")?;
        if event.event.as_deref() == Some("error") {
            break event;
        }
        data_events += 1;
    };
    assert_eq!(data_events, 4);
    assert_eq!(error.json()["code"], 4, "DEADLINE_EXCEEDED: {}", error.data);

    // A resume point outside the change log is refused before the stream starts: a 400 (FAILED_PRECONDITION),
    // which makes an EventSource stop instead of reconnecting with the same Last-Event-ID forever.
    let headers = [("accept", "text/event-stream"), ("last-event-id", "999999")];
    let refused = send(gateway.addr, Method::GET, "/v1/users:watch", &headers, "").await?;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["code"], 9);
    Ok(())
}

#[tokio::test]
async fn batch_create_takes_a_json_array_or_ndjson() -> TestResult {
    let gateway = start_gateway().await;
    let array = json!([
        {"name": "A", "email": "a@example.com", "password": "password-a"},
        {"name": "B", "email": "b@example.com", "password": "password-b", "roles": ["ops"]}
    ]);
    let reply = post_json(gateway.addr, "/v1/users:batchCreate", &array).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let users = reply.json()["users"].as_array().cloned().unwrap_or_default();
    assert_eq!(users.iter().map(|u| u["name"].as_str().unwrap_or_default()).collect::<Vec<_>>(), ["A", "B"]);

    let ndjson = "{\"name\":\"C\",\"email\":\"c@example.com\",\"password\":\"password-c\"}\r\n\n{\"name\":\"D\",\n \"email\":\"d@example.com\",\"password\":\"password-d\"}\n";
    let reply =
        send(gateway.addr, Method::POST, "/v1/users:batchCreate", &[("content-type", "application/x-ndjson")], ndjson)
            .await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["users"].as_array().map(Vec::len), Some(2));
    let empty = post_json(gateway.addr, "/v1/users:batchCreate", &json!([])).await?;
    assert_eq!((empty.status.as_u16(), empty.json()), (200, json!({"users": []})));
    assert_eq!(count(&gateway).await?, 4);
    Ok(())
}

#[tokio::test]
async fn a_bad_item_or_a_broken_body_stores_nothing() -> TestResult {
    let gateway = start_gateway().await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        // Invalid per the service: its index comes back.
        ("application/json", r#"[{"name":"A","email":"a@example.com","password":"password-a"},{"name":"B","email":"nope","password":"password-b"}]"#.into(), 400, "batch item 1"),
        // Not a message of the right type, first or later: the message index is its position in the body.
        ("application/json", r#"[{"name":"A","email":"a@example.com","password":"password-a"},{"nmae":"B"}]"#.into(), 400, "message 1"),
        ("application/json", r#"[{"nmae":"B"},{"name":"A","email":"a@example.com","password":"password-a"},{"name":"C"}]"#.into(), 400, "message 0"),
        // Framing broken after a valid item: the valid item must not be committed.
        ("application/json", r#"[{"name":"A","email":"a@example.com","password":"password-a"} {"name":"B"}]"#.into(), 400, "invalid streaming body"),
        ("application/json", r#"[{"name":"A","email":"a@example.com","password":"password-a"},"#.into(), 400, "invalid streaming body"),
        ("application/x-ndjson", "{\"name\":\"A\",\"email\":\"a@example.com\",\"password\":\"password-a\"}\n{\"name\":".into(), 400, "invalid streaming body"),
        ("application/json", r#"{"not":"an array"} ]"#.into(), 400, "invalid streaming body"),
        ("text/csv", "a,b".into(), 415, "unsupported content type"),
    ];
    for (content_type, body, status, expected) in cases {
        let reply =
            send(gateway.addr, Method::POST, "/v1/users:batchCreate", &[("content-type", content_type)], body.clone())
                .await?;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        let message = reply.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(expected), "{body}: {message:?} should mention {expected:?}");
        // Give an aborted upstream call time to (wrongly) commit, then check it did not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&gateway).await?, 0, "nothing stored after {body}");
    }

    let too_many: Vec<serde_json::Value> = (0..1001)
        .map(|i| json!({"name": "U", "email": format!("u{i}@example.com"), "password": "password-u"}))
        .collect();
    let reply = post_json(gateway.addr, "/v1/users:batchCreate", &serde_json::Value::Array(too_many)).await?;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(count(&gateway).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_streamed_body_reaches_the_upstream_as_it_arrives() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = start_gateway().await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await?;
    let head = "POST /v1/users:batchCreate HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    let item = |i: usize| format!("{{\"name\":\"S{i}\",\"email\":\"s{i}@example.com\",\"password\":\"password-s\"}}\n");
    let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
    stream.write_all(chunk(&item(0)).as_bytes()).await?;
    // The second item is an invalid email: the service rejects the batch as soon as it sees it, before the
    // body is finished, which shows items are streamed rather than buffered whole.
    stream.write_all(chunk("{\"name\":\"S1\",\"email\":\"nope\",\"password\":\"password-s\"}\n").as_bytes()).await?;
    let mut response = vec![0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut response)).await??;
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("batch item 1"), "{text}");
    assert_eq!(count(&gateway).await?, 0);
    Ok(())
}

/// The dangerous case: valid items have already gone upstream when the body breaks. Ending the upstream
/// stream cleanly would commit them; the gateway must abort the call instead.
#[tokio::test]
async fn a_client_that_goes_away_mid_stream_commits_nothing() -> TestResult {
    use tokio::io::AsyncWriteExt;
    let gateway = start_gateway().await;
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await?;
        let head = "POST /v1/users:batchCreate HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await?;
        let item = "{\"name\":\"A\",\"email\":\"a@example.com\",\"password\":\"password-a\"}\n";
        stream.write_all(format!("{:x}\r\n{item}\r\n", item.len()).as_bytes()).await?;
        // Long enough for the item to be parsed and sent upstream; then the client vanishes without ending
        // its body.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(&gateway).await?, 0, "the half-sent batch of a client that went away must not be committed");
    }
    Ok(())
}

#[tokio::test]
async fn a_body_that_breaks_after_items_went_upstream_commits_nothing() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = start_gateway().await;
    for broken_tail in
        ["{\"name\":", "]]]", "{\"name\":\"B\",\"email\":\"b@example.com\",\"password\":\"password-b\",\"bogus\":1}\n"]
    {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await?;
        let head = "POST /v1/users:batchCreate HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await?;
        let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
        stream
            .write_all(chunk("{\"name\":\"A\",\"email\":\"a@example.com\",\"password\":\"password-a\"}\n").as_bytes())
            .await?;
        // Long enough for the first item to be parsed and sent upstream.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(chunk(broken_tail).as_bytes()).await?;
        stream.write_all(b"0\r\n\r\n").await?;
        let mut response = vec![0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut response)).await??;
        let text = String::from_utf8_lossy(&response[..read]);
        assert!(text.starts_with("HTTP/1.1 400"), "{broken_tail}: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(&gateway).await?, 0, "the item sent before {broken_tail:?} must not be committed");
    }
    Ok(())
}
