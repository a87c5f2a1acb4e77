//! `portico serve` as a real process: one log line per request, JSON logs, SIGTERM drains and ends streams,
//! a client that goes away cancels the upstream call, and no password ever appears in a response or a log.

mod common;

use std::time::Duration;

use common::TestResult;
use common::process::{FAST_FLAGS, Process};
use common::rest::{Events, Lines, get, open, post_json, send};
use http::Method;
use serde_json::json;

fn serve_args(db: &str) -> Vec<String> {
    let base = ["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--db", db];
    base.iter().chain(FAST_FLAGS.iter()).map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn requests_are_logged_once_and_passwords_never_leak() -> TestResult {
    const PASSWORD: &str = "Gateway-Canary-8812";
    const SHORT: &str = "Gw-9x";
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("p.db").display().to_string();
    let args = serve_args(&db);
    let process = Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), "trace")?;
    let addr = process.address("gateway listening").await?;

    let mut replies = Vec::new();
    replies.push(
        post_json(addr, "/v1/users", &json!({"name": "Ada", "email": "ada@example.com", "password": PASSWORD})).await?,
    );
    replies.push(
        post_json(addr, "/v1/users", &json!({"name": "Bob", "email": "bob@example.com", "password": SHORT})).await?,
    );
    replies.push(
        post_json(addr, "/v1/users", &json!({"name": "Ada", "email": "ada@example.com", "password": PASSWORD})).await?,
    );
    replies.push(
        post_json(
            addr,
            "/v1/users:batchCreate",
            &json!([{"name": "Cy", "email": "cy@example.com", "password": PASSWORD}]),
        )
        .await?,
    );
    replies.push(
        post_json(
            addr,
            "/v1/users",
            &json!({"name": "Dee", "email": "dee@example.com", "password": PASSWORD, "bogus": PASSWORD}),
        )
        .await?,
    );
    replies.push(get(addr, "/v1/users").await?);
    assert_eq!(replies.iter().map(|r| r.status.as_u16()).collect::<Vec<_>>(), [200, 400, 409, 200, 400, 200]);
    for reply in &replies {
        assert!(
            !reply.text().contains(PASSWORD) && !reply.text().contains(SHORT),
            "password in a response: {}",
            reply.text()
        );
    }
    let line = process
        .wait_for_line(
            |l| l.contains("request") && l.contains("path=/v1/users ") && l.contains("status=409"),
            Duration::from_secs(5),
        )
        .await?;
    assert!(
        line.contains("method=POST")
            && line.contains("duration_ms=")
            && line.contains("rpc=user.UserService.CreateUser"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = process.logs();
    let request_lines = logs.iter().filter(|l| l.contains("portico::gateway: request ")).count();
    assert_eq!(request_lines, replies.len(), "one line per request");
    for secret in [PASSWORD, SHORT] {
        let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "password leaked into the logs: {leaks:#?}");
    }
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("j.db").display().to_string();
    let mut args = serve_args(&db);
    args.extend(["--log-format".to_string(), "json".to_string()]);
    let process = Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), "info")?;
    let line = process.wait_for_line(|l| l.contains("gateway listening"), Duration::from_secs(30)).await?;
    let listening: serde_json::Value = serde_json::from_str(&line)?;
    let addr: std::net::SocketAddr = listening["addr"].as_str().ok_or("addr")?.parse()?;
    assert_eq!(get(addr, "/v1/users/77").await?.status, 404);
    let line =
        process.wait_for_line(|l| l.contains("\"request\"") && l.contains("404"), Duration::from_secs(5)).await?;
    let record: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(record["status"], 404);
    assert_eq!(record["rpc"], "user.UserService.GetUser");
    assert!(record["duration_ms"].is_number());
    assert_eq!(record["path"], "/v1/users/77");
    assert_eq!(record["method"], "GET");
    assert!(record["request_id"].as_str().is_some_and(|id| id.len() == 36), "{record}");
    for line in process.logs() {
        serde_json::from_str::<serde_json::Value>(&line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_call() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("c.db").display().to_string();
    let args = serve_args(&db);
    let process = Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), "info")?;
    let addr = process.address("gateway listening").await?;
    let response = open(addr, Method::GET, "/v1/users:watch", &[("accept", "text/event-stream")], "").await?;
    let mut events = Events::new(response.into_body());
    assert!(events.next().await?.is_some(), "the snapshot marker arrived");
    drop(events);
    process
        .wait_for_line(
            |l| l.contains("rpc=/user.UserService/WatchUsers ") && l.contains("code=\"CANCELLED\""),
            Duration::from_secs(5),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_requests_and_ends_streams() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("s.db").display().to_string();
    let args = serve_args(&db);
    let mut process = Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), "info")?;
    let addr = process.address("gateway listening").await?;
    post_json(addr, "/v1/users", &json!({"name": "Ada", "email": "ada@example.com", "password": "password-1"})).await?;

    let sse = open(addr, Method::GET, "/v1/users:watch", &[("accept", "text/event-stream")], "").await?;
    let mut events = Events::new(sse.into_body());
    let ndjson = open(addr, Method::GET, "/v1/users:watch", &[], "").await?;
    let mut lines = Lines::new(ndjson.into_body());
    for _ in 0..2 {
        events.next().await?.ok_or("sse event")?;
        lines.next().await?.ok_or("ndjson line")?;
    }

    process.terminate()?;
    // Both streams end promptly, each with a final UNAVAILABLE saying why.
    let mut last_event = None;
    while let Some(event) = events.next().await? {
        last_event = Some(event);
    }
    let last_event = last_event.ok_or("an error event before the end")?;
    assert_eq!(last_event.event.as_deref(), Some("error"));
    assert_eq!(last_event.json()["code"], 14);
    let mut last_line = None;
    while let Some(line) = lines.next().await? {
        last_line = Some(line);
    }
    let last_line: serde_json::Value = serde_json::from_str(&last_line.ok_or("a final line")?)?;
    assert_eq!(last_line["error"]["code"], 14, "{last_line}");

    let exit = process.wait(Duration::from_secs(10)).await?;
    assert!(exit.success(), "{exit:?}");
    assert!(send(addr, Method::GET, "/healthz", &[], "").await.is_err(), "no longer listening");
    Ok(())
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() -> Result<(), Box<dyn std::error::Error>> {
    for (command, flags) in [
        (
            "serve",
            &[
                "--listen",
                "--grpc-listen",
                "--db",
                "--upstream-timeout",
                "--max-body-bytes",
                "--cors-allowed-origins",
                "--log-format",
            ][..],
        ),
        (
            "gateway",
            &["--listen", "--upstream", "--upstream-connections", "--header-read-timeout", "--unknown-query-params"][..],
        ),
        ("user-service", &["--listen", "--db", "--change-log-window", "--drain-timeout"][..]),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portico")).args([command, "--help"]).output()?;
        let help = String::from_utf8_lossy(&output.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{command} --help lacks {flag}");
        }
        assert!(help.matches("[env: PORTICO_").count() >= flags.len(), "{command}: every flag has a PORTICO_ variable");
    }
    Ok(())
}

#[tokio::test]
async fn the_healthcheck_command_probes_healthz() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("h.db").display().to_string();
    let args = serve_args(&db);
    let process = Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), "info")?;
    let addr = process.address("gateway listening").await?;
    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portico")).args(["healthcheck", "--url", &url]).output().await
    };
    assert!(probe(format!("http://{addr}/healthz")).await?.status.success());
    let missing = probe(format!("http://{addr}/nope")).await?;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered \"404\""));
    drop(process);
    assert!(!probe(format!("http://{addr}/healthz")).await?.status.success(), "nothing listens any more");
    Ok(())
}
