//! Prometheus metrics of a real gateway process and a real UserService process: the counts move by exactly
//! the requests sent, labels are route templates and RPC names (never ids), and `promtool check metrics`
//! accepts both pages.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestResult;
use common::metrics::{sample, scrape};
use common::process::{Error, FAST_FLAGS, Process};
use common::rest::{get, post_json};
use serde_json::json;

/// The UserService and the gateway as two processes, each with an admin listener.
struct Pair {
    _user_service: Process,
    _gateway: Process,
    gateway: SocketAddr,
    gateway_admin: SocketAddr,
    user_service_admin: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_pair() -> Result<Pair, Error> {
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let mut args = vec!["user-service", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--db", &db];
    args.extend(FAST_FLAGS);
    let user_service = Process::start(&args, "info")?;
    let user_service_admin = user_service.address("admin listening").await?;
    let grpc = user_service.address("user service listening").await?;
    let upstream = format!("http://{grpc}");
    let gateway = Process::start(
        &["gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream", &upstream],
        "info",
    )?;
    let gateway_admin = gateway.address("admin listening").await?;
    let gateway_addr = gateway.address("gateway listening").await?;
    wait_ready(gateway_addr).await?;
    Ok(Pair {
        _user_service: user_service,
        _gateway: gateway,
        gateway: gateway_addr,
        gateway_admin,
        user_service_admin,
        _dir: dir,
    })
}

async fn wait_ready(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, "/readyz").await?.status != 200 {
        if Instant::now() > deadline {
            return Err("the gateway never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Scrapes until every series has its expected value (a response's observation is made when its body has
/// been sent, a moment after the client has read it); fails with the page if they never all match.
async fn expect_samples(admin: SocketAddr, expected: &[(&str, f64)]) -> Result<String, Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = scrape(admin).await?;
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(series, value)| sample(&page, series) != *value)
            .map(|(series, value)| format!("{series}: want {value}, have {}", sample(&page, series)))
            .collect();
        if wrong.is_empty() {
            return Ok(page);
        }
        if Instant::now() > deadline {
            return Err(format!("{wrong:#?}\n{page}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn promtool_check_metrics(page: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian package prometheus; scripts/install-test-deps): {e}"))?;
    child.stdin.take().ok_or("stdin")?.write_all(page.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.trim().is_empty() { Ok(()) } else { Err(format!("promtool: {said}").into()) }
}

#[tokio::test]
async fn counts_move_by_exactly_the_requests_sent_with_route_templates_as_labels() -> TestResult {
    let pair = start_pair().await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        let body =
            json!({"name": format!("m{n}"), "email": format!("m{n}@example.com"), "password": "s3cret-passw0rd"});
        let reply = post_json(pair.gateway, "/v1/users", &body).await?;
        assert_eq!(reply.status, 200, "{}", reply.text());
        ids.push(reply.json()["id"].as_str().ok_or("id")?.to_string());
    }
    for id in &ids[..2] {
        assert_eq!(get(pair.gateway, &format!("/v1/users/{id}")).await?.status, 200);
    }
    assert_eq!(get(pair.gateway, "/v1/users/987654").await?.status, 404);
    assert_eq!(get(pair.gateway, "/no/such/route").await?.status, 404);

    let gateway_page = expect_samples(
        pair.gateway_admin,
        &[
            (r#"portico_http_server_request_duration_seconds_count{method="POST",route="/v1/users",status="200"}"#, 3.0),
            (r#"portico_http_server_request_duration_seconds_count{method="GET",route="/v1/users/{id}",status="200"}"#, 2.0),
            (r#"portico_http_server_request_duration_seconds_count{method="GET",route="/v1/users/{id}",status="404"}"#, 1.0),
            (r#"portico_http_server_request_duration_seconds_count{method="GET",route="unmatched",status="404"}"#, 1.0),
            ("portico_http_server_requests_in_flight", 0.0),
        ],
    )
    .await?;
    let attempts = |rpc: &str, code: &str| -> f64 {
        gateway_page
            .lines()
            .filter(|line| {
                line.starts_with("portico_upstream_call_duration_seconds_count{")
                    && line.contains(&format!(r#"rpc="{rpc}",code="{code}""#))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(attempts("user.UserService/CreateUser", "OK"), 3.0);
    assert_eq!(attempts("user.UserService/GetUser", "OK"), 2.0);
    assert_eq!(attempts("user.UserService/GetUser", "NOT_FOUND"), 1.0);
    assert!(sample(&gateway_page, r#"portico_upstream_ready{cluster="default"}"#) == 1.0, "{gateway_page}");
    // The request bodies of the three creations were counted.
    assert!(
        sample(&gateway_page, r#"portico_http_server_request_body_bytes_total{method="POST",route="/v1/users"}"#) > 0.0
    );
    for id in &ids {
        assert!(!gateway_page.contains(&format!("/v1/users/{id}")), "an id became a label value: {gateway_page}");
    }
    assert!(!gateway_page.contains("987654") && !gateway_page.contains("/no/such/route"));
    promtool_check_metrics(&gateway_page)?;

    let user_service_page = expect_samples(
        pair.user_service_admin,
        &[
            (r#"portico_grpc_server_call_duration_seconds_count{rpc="user.UserService/CreateUser",code="OK"}"#, 3.0),
            (r#"portico_grpc_server_call_duration_seconds_count{rpc="user.UserService/GetUser",code="OK"}"#, 2.0),
            (
                r#"portico_grpc_server_call_duration_seconds_count{rpc="user.UserService/GetUser",code="NOT_FOUND"}"#,
                1.0,
            ),
            (r#"portico_store_statement_duration_seconds_count{operation="create_users",outcome="ok"}"#, 3.0),
            (r#"portico_store_statement_duration_seconds_count{operation="get_user",outcome="ok"}"#, 3.0),
            ("portico_user_service_password_hash_queue_wait_seconds_count", 3.0),
            ("portico_user_service_watchers", 0.0),
            ("portico_user_service_change_log_revision", 3.0),
            ("portico_user_service_change_log_entries", 3.0),
            ("portico_user_service_watch_fanout_backlog", 0.0),
        ],
    )
    .await?;
    assert!(user_service_page.contains("\nportico_user_service_watch_fanout_backlog 0\n"));
    assert!(user_service_page.contains(r#"portico_db_pool_connections{pool="writer",state="idle"}"#));
    assert!(!user_service_page.contains("portico_http_server"), "the UserService has no HTTP families");
    promtool_check_metrics(&user_service_page)?;
    Ok(())
}

#[tokio::test]
async fn an_open_stream_and_its_watcher_are_counted_until_they_end() -> TestResult {
    let pair = start_pair().await?;
    let stream =
        common::rest::open(pair.gateway, http::Method::GET, "/v1/users:watch", &[], bytes::Bytes::new()).await?;
    assert_eq!(stream.status(), 200);
    expect_samples(
        pair.gateway_admin,
        &[(r#"portico_http_server_open_streams{method="GET",route="/v1/users:watch"}"#, 1.0)],
    )
    .await?;
    expect_samples(pair.user_service_admin, &[("portico_user_service_watchers", 1.0)]).await?;
    drop(stream);
    expect_samples(
        pair.gateway_admin,
        &[(r#"portico_http_server_open_streams{method="GET",route="/v1/users:watch"}"#, 0.0)],
    )
    .await?;
    expect_samples(pair.user_service_admin, &[("portico_user_service_watchers", 0.0)]).await?;
    Ok(())
}

#[tokio::test]
async fn the_outbox_relay_counts_what_it_published() -> TestResult {
    let nats = common::nats::NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let mut args = vec![
        "user-service",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--nats-url",
        &nats.url,
    ];
    args.extend(FAST_FLAGS);
    let user_service = Process::start(&args, "info")?;
    let admin = user_service.address("admin listening").await?;
    let grpc = user_service.address("user service listening").await?;
    let mut client = loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect().await {
            break portico::proto::user::user_service_client::UserServiceClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for n in 0..2 {
        client.create_user(common::create_request(&format!("o{n}"), &format!("o{n}@example.com"))).await?;
    }
    let page = expect_samples(
        admin,
        &[
            ("portico_user_service_events_published_total", 2.0),
            ("portico_user_service_events_publish_failed_total", 0.0),
            ("portico_user_service_outbox_published_revision", 2.0),
            ("portico_user_service_change_log_revision", 2.0),
        ],
    )
    .await?;
    assert!(!page.contains("portico_user_service_change_log_entries"), "with a relay the size is not derived");
    promtool_check_metrics(&page)?;
    Ok(())
}

#[tokio::test]
async fn requests_refused_by_the_limits_are_counted_by_reason() -> TestResult {
    let pair = start_pair().await?;
    let upstream = pair_upstream(&pair).await?;
    let limited = Process::start(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--rate-limit",
            "1/min",
            "--rate-limit-burst",
            "1",
        ],
        "info",
    )?;
    let admin = limited.address("admin listening").await?;
    let addr = limited.address("gateway listening").await?;
    wait_ready(addr).await?;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(addr, "/v1/users").await?.status.as_u16());
    }
    assert_eq!(statuses, [200, 429, 429]);
    let page =
        expect_samples(admin, &[("portico_gateway_rejected_requests_total{reason=\"rate_limit\"}", 2.0)]).await?;
    promtool_check_metrics(&page)?;
    Ok(())
}

/// The UserService address the pair's gateway calls, from the pair's admin view.
async fn pair_upstream(pair: &Pair) -> Result<String, Error> {
    let view = get(pair.gateway_admin, "/admin/upstreams").await?.json();
    let address = view["upstreams"][0]["state"]["endpoints"][0]["address"].as_str().ok_or("an endpoint address")?;
    Ok(address.trim_end_matches('/').to_string())
}
