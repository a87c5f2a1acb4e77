//! Every REST route end to end (HTTP client → gateway → UserService over real sockets): success, each error
//! path with its status and google.rpc.Status body, and the edge behaviour (limits, 404/405, 415, CORS,
//! compression, request ids).

mod common;

use common::rest::{self, Reply, get, post_json, send};
use common::{TestResult, start_gateway, start_gateway_with};
use http::Method;
use serde_json::json;

async fn create(addr: std::net::SocketAddr, name: &str, email: &str) -> Result<serde_json::Value, rest::Error> {
    let reply = post_json(
        addr,
        "/v1/users",
        &json!({"name": name, "email": email, "password": "correct-horse", "roles": ["admin"]}),
    )
    .await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Ok(reply.json())
}

/// A google.rpc.Status body with this code.
fn assert_status(reply: &Reply, http_status: u16, grpc_code: i64) {
    assert_eq!(reply.status, http_status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["code"], grpc_code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["details"].is_array(), "{body}");
}

#[tokio::test]
async fn create_get_list_update_delete_in_proto3_json() -> TestResult {
    let gateway = start_gateway().await;
    let addr = gateway.addr;
    let ada = create(addr, "Ada", "ada@example.com").await?;
    assert!(ada["id"].is_string(), "int64 ids are JSON strings: {ada}");
    assert_eq!(ada["status"], "USER_STATUS_ACTIVE", "enums by name");
    assert!(ada["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339 UTC timestamp: {ada}");
    assert!(ada.get("password").is_none());
    let id = ada["id"].as_str().ok_or("id")?.to_string();

    // GET: response_body "user" unwraps GetUserResponse.
    let fetched = get(addr, &format!("/v1/users/{id}")).await?;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), ada);

    // List with query parameters by JSON name and by proto name, and the stable shape of empty fields.
    create(addr, "Grace", "grace@example.com").await?;
    let page = get(addr, "/v1/users?pageSize=1&filter=roles%3Aadmin").await?.json();
    assert_eq!(page["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["totalCount"], 2);
    let token = page["nextPageToken"].as_str().ok_or("token")?;
    let next = get(addr, &format!("/v1/users?page_size=1&page_token={token}&filter=roles:admin")).await?.json();
    assert_eq!(next["users"][0]["name"], "Grace");
    assert_eq!(next["nextPageToken"], "", "unpopulated fields are emitted");

    // PATCH without update_mask: the mask comes from the body's keys, so only the name changes.
    let patched = send(
        addr,
        Method::PATCH,
        &format!("/v1/users/{id}"),
        &[("content-type", "application/json")],
        r#"{"name":"Ada L."}"#,
    )
    .await?;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let patched = patched.json();
    assert_eq!((patched["name"].as_str(), patched["email"].as_str()), (Some("Ada L."), Some("ada@example.com")));
    assert_eq!(patched["roles"], json!(["admin"]), "roles untouched");
    // An explicit mask in the query string wins over the body's keys: here roles are cleared.
    let cleared = send(
        addr,
        Method::PATCH,
        &format!("/v1/users/{id}?updateMask=roles"),
        &[("content-type", "application/json")],
        r#"{"name":"ignored"}"#,
    )
    .await?
    .json();
    assert_eq!((cleared["name"].as_str(), cleared["roles"].clone()), (Some("Ada L."), json!([])));
    // A status by name in the body.
    let suspended = send(addr, Method::PATCH, &format!("/v1/users/{id}"), &[], r#"{"status":"USER_STATUS_SUSPENDED"}"#)
        .await?
        .json();
    assert_eq!(suspended["status"], "USER_STATUS_SUSPENDED");
    let filtered = get(addr, "/v1/users?filter=status%3DSUSPENDED").await?.json();
    assert_eq!(filtered["totalCount"], 1);

    let deleted = send(addr, Method::DELETE, &format!("/v1/users/{id}"), &[], "").await?;
    assert_eq!((deleted.status.as_u16(), deleted.json()), (200, json!({})));
    assert_status(&get(addr, &format!("/v1/users/{id}")).await?, 404, 5);
    Ok(())
}

#[tokio::test]
async fn upstream_errors_map_through_the_status_table_with_details() -> TestResult {
    let gateway = start_gateway().await;
    let addr = gateway.addr;
    create(addr, "Ada", "ada@example.com").await?;

    let invalid = post_json(addr, "/v1/users", &json!({"name": "", "email": "nope", "password": "short"})).await?;
    assert_status(&invalid, 400, 3);
    let details = &invalid.json()["details"][0];
    assert_eq!(details["@type"], "type.googleapis.com/google.rpc.BadRequest");
    let fields: Vec<&str> =
        details["fieldViolations"].as_array().ok_or("violations")?.iter().filter_map(|v| v["field"].as_str()).collect();
    assert_eq!(fields, ["name", "email", "password"]);

    let duplicate = post_json(
        addr,
        "/v1/users",
        &json!({"name": "Ada 2", "email": "ADA@example.com", "password": "correct-horse"}),
    )
    .await?;
    assert_status(&duplicate, 409, 6);
    assert_status(&get(addr, "/v1/users/0").await?, 400, 3);
    assert_status(&get(addr, "/v1/users/424242").await?, 404, 5);
    assert_status(&get(addr, "/v1/users?filter=nme%3Dx").await?, 400, 3);
    assert_status(&get(addr, "/v1/users?pageToken=garbage").await?, 400, 3);
    assert_status(&get(addr, "/v1/users:watch?sinceRevision=-1").await?, 400, 3);
    Ok(())
}

#[tokio::test]
async fn bad_requests_name_what_was_wrong() -> TestResult {
    let gateway = start_gateway().await;
    let addr = gateway.addr;
    let ada = create(addr, "Ada", "ada@example.com").await?;
    let id = ada["id"].as_str().ok_or("id")?.to_string();
    let json = [("content-type", "application/json")];

    let cases: Vec<(Method, String, &str, &str)> = vec![
        (Method::POST, "/v1/users".into(), r#"{"name":"A","email":"a@b.io","password":"12345678","nmae":"x"}"#, "nmae"),
        (Method::POST, "/v1/users".into(), r#"{"name":42,"email":"a@b.io","password":"12345678"}"#, "name"),
        (
            Method::POST,
            "/v1/users".into(),
            r#"{"name":"A","name":"B","email":"a@b.io","password":"12345678"}"#,
            "appears twice",
        ),
        (Method::POST, "/v1/users".into(), r#"{"name":"A""#, "invalid JSON"),
        (
            Method::POST,
            "/v1/users".into(),
            r#"{"roles":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            "nesting exceeds",
        ),
        (Method::GET, "/v1/users/abc".into(), "", "64-bit integer"),
        (Method::GET, "/v1/users?page_sise=3".into(), "", "page_sise"),
        (Method::GET, "/v1/users?pageSize=1&pageSize=2".into(), "", "more than once"),
        (Method::GET, format!("/v1/users/{id}?id=7"), "", "set by the path"),
        (Method::PATCH, format!("/v1/users/{id}"), r#"{"id":"999","name":"X"}"#, "in the path but"),
        (Method::GET, format!("/v1/users/{id}"), r#"{"x":1}"#, "takes no request body"),
    ];
    for (method, path, body, expected) in cases {
        let reply = send(addr, method.clone(), &path, &json, body.to_string()).await?;
        assert_status(&reply, 400, 3);
        let message = reply.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(expected), "{method} {path} {body}: {message:?} should mention {expected:?}");
    }
    // None of those changed the user.
    assert_eq!(get(addr, &format!("/v1/users/{id}")).await?.json(), ada);
    Ok(())
}

#[tokio::test]
async fn routing_limits_and_content_types() -> TestResult {
    let gateway = start_gateway_with(|config| config.max_body_bytes = 1024).await;
    let addr = gateway.addr;

    assert_status(&get(addr, "/v1/nothing").await?, 404, 5);
    assert_status(&get(addr, "/v1/users/1/extra").await?, 404, 5);
    let not_allowed = send(addr, Method::PUT, "/v1/users/1", &[], "").await?;
    assert_status(&not_allowed, 405, 12);
    assert_eq!(not_allowed.header("allow"), Some("DELETE, GET, PATCH"));
    let not_allowed = send(addr, Method::DELETE, "/v1/users", &[], "").await?;
    assert_eq!(not_allowed.header("allow"), Some("GET, POST"));

    let text = send(addr, Method::POST, "/v1/users", &[("content-type", "text/plain")], "hello").await?;
    assert_status(&text, 415, 3);
    let form =
        send(addr, Method::POST, "/v1/users", &[("content-type", "application/x-www-form-urlencoded")], "a=b").await?;
    assert_status(&form, 415, 3);
    let utf8 = send(
        addr,
        Method::POST,
        "/v1/users",
        &[("content-type", "application/json; charset=utf-8")],
        r#"{"name":"A","email":"a@example.com","password":"12345678"}"#,
    )
    .await?;
    assert_eq!(utf8.status, 200, "charset parameter accepted: {}", utf8.text());

    let big = format!(r#"{{"name":"{}","email":"b@example.com","password":"12345678"}}"#, "x".repeat(2000));
    assert_status(
        &send(addr, Method::POST, "/v1/users", &[("content-type", "application/json")], big.clone()).await?,
        413,
        8,
    );
    // Without Content-Length (chunked), the limit still holds while reading.
    let response = chunked_post(addr, "/v1/users", big.into_bytes()).await?;
    assert_eq!(response, 413);
    Ok(())
}

/// POSTs `body` with chunked transfer encoding (no Content-Length); returns the status.
async fn chunked_post(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> Result<u16, rest::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    for chunk in body.chunks(256) {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
        stream.write_all(chunk).await?;
        stream.write_all(b"\r\n").await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    let mut response = vec![0u8; 64];
    let read = stream.read(&mut response).await?;
    let line = String::from_utf8_lossy(&response[..read]);
    Ok(line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_the_header_read_timeout() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = start_gateway_with(|config| config.header_read_timeout = std::time::Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await?;
    stream.write_all(b"GET /v1/users HTTP/1.1\r\nhost: x\r\n").await?; // never finishes the headers
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the gateway closed the connection");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    Ok(())
}

#[tokio::test]
async fn request_ids_cors_and_compression() -> TestResult {
    let plain = start_gateway().await;
    let reply = send(plain.addr, Method::GET, "/v1/users", &[("x-request-id", "req-123")], "").await?;
    assert_eq!(reply.header("x-request-id"), Some("req-123"), "propagated");
    let reply = get(plain.addr, "/v1/users").await?;
    assert_eq!(reply.header("x-request-id").map(str::len), Some(36), "generated as a UUID");
    let preflight = send(
        plain.addr,
        Method::OPTIONS,
        "/v1/users",
        &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
        "",
    )
    .await?;
    assert!(preflight.header("access-control-allow-origin").is_none(), "CORS is off by default");

    let cors = start_gateway_with(|config| config.cors_allowed_origins = vec!["https://app.example".into()]).await;
    let preflight = send(
        cors.addr,
        Method::OPTIONS,
        "/v1/users",
        &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
        "",
    )
    .await?;
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    let other = send(cors.addr, Method::GET, "/v1/users", &[("origin", "https://evil.example")], "").await?;
    assert!(other.header("access-control-allow-origin").is_none());

    for _ in 0..20 {
        create(plain.addr, "Someone With A Long Name", &format!("u{}@example.com", rand_suffix())).await?;
    }
    for encoding in ["gzip", "br"] {
        let reply = send(plain.addr, Method::GET, "/v1/users", &[("accept-encoding", encoding)], "").await?;
        assert_eq!(reply.header("content-encoding"), Some(encoding));
        let identity = get(plain.addr, "/v1/users").await?;
        assert!(identity.header("content-encoding").is_none());
        assert!(reply.body.len() < identity.body.len() / 2, "{encoding} compresses");
    }
    Ok(())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

#[tokio::test]
async fn headers_become_metadata_and_deadlines_are_enforced() -> TestResult {
    let gateway = start_gateway().await;
    let addr = gateway.addr;
    // A malformed Grpc-Timeout is a 400, not silently "no deadline".
    assert_status(&send(addr, Method::GET, "/v1/users", &[("grpc-timeout", "soon")], "").await?, 400, 3);
    // A tiny deadline expires: 504 DEADLINE_EXCEEDED.
    let reply = send(addr, Method::GET, "/v1/users", &[("grpc-timeout", "1n")], "").await?;
    assert_status(&reply, 504, 4);
    let reply = send(addr, Method::GET, "/v1/users", &[("grpc-timeout", "10S")], "").await?;
    assert_eq!(reply.status, 200);

    let health = get(addr, "/healthz").await?;
    assert_eq!((health.status.as_u16(), health.json()["status"].as_str()), (200, Some("ok")));
    let ready = get(addr, "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json(), serde_json::json!({"status": "ready"}), "endpoints stay on the admin listener");
    Ok(())
}

#[tokio::test]
async fn readyz_says_not_ready_when_the_upstream_is_down() -> TestResult {
    let mut gateway = start_gateway().await;
    gateway.upstream.shutdown.cancel();
    // Health turns NOT_SERVING at once, but calls already on their way may still be served while the
    // UserService drains: wait until it has stopped before asking for a user.
    if let Some(stopped) = gateway.upstream.handle.take() {
        let _ = stopped.await;
    }
    let mut status = 0;
    for _ in 0..50 {
        status = get(gateway.addr, "/readyz").await?.status.as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503);
    let reply = get(gateway.addr, "/v1/users").await?;
    assert_status(&reply, 503, 14);
    Ok(())
}

#[tokio::test]
async fn transport_headers_smuggled_as_metadata_are_dropped() -> TestResult {
    let gateway = start_gateway().await;
    create(gateway.addr, "Ada", "ada@example.com").await?;
    for (name, value) in
        [("grpc-metadata-content-length", "5"), ("grpc-metadata-te", "gzip"), ("grpc-metadata-grpc-status", "7")]
    {
        let reply = send(gateway.addr, Method::GET, "/v1/users", &[(name, value)], "").await?;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    }
    Ok(())
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_and_a_wrong_type_does_not_wait_for_it() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = start_gateway_with(|config| config.body_read_timeout = std::time::Duration::from_millis(300)).await;
    for (content_type, expected) in [("application/json", "HTTP/1.1 408"), ("text/plain", "HTTP/1.1 415")] {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await?;
        let head = format!(
            "POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await?; // 99 bytes short, forever
        let started = std::time::Instant::now();
        let mut response = vec![0u8; 512];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut response)).await??;
        let text = String::from_utf8_lossy(&response[..read]);
        assert!(text.starts_with(expected), "{content_type}: {text}");
        assert!(text.contains("\"code\":"), "a Status body: {text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }
    Ok(())
}

#[tokio::test]
async fn operational_endpoints_answer_wrong_methods_with_a_status_body() -> TestResult {
    let gateway = start_gateway().await;
    for path in ["/healthz", "/readyz"] {
        let reply = send(gateway.addr, Method::POST, path, &[], "").await?;
        assert_status(&reply, 405, 12);
        assert_eq!(reply.header("allow"), Some("GET"));
    }
    Ok(())
}
