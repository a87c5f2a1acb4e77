//! The outbox relay on both backends: every change reaches NATS JetStream once, in revision order, as a
//! CloudEvent with `Nats-Msg-Id` = revision; the published mark moves only after the acknowledgement; changes
//! made while NATS is down are published when it returns, even past the change-log window; one relay at a time
//! holds the lease; `portico events tail` prints the stream, from a revision on and of one type.

mod common;

use std::time::{Duration, Instant};

use common::nats::{NatsServer, free_port, read_stream, read_stream_with};
use common::process::{FAST_FLAGS, Process};
use common::{Backend, TestResult, TestStorage, create, start_with};
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{DeleteUserRequest, UpdateUserRequest, User};
use portico::user_service::relay::{EventNames, STALL_WARNING};
use portico::user_service::store::{self, NewUser, Store, StoreOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn open(storage: &TestStorage) -> Result<std::sync::Arc<dyn Store>, Error> {
    let options = StoreOptions { change_log_window: 10_000, max_connections: 2, retain_unpublished: true };
    Ok(store::open(&storage.url(), options).await?)
}

/// Waits until the published mark reaches `revision`.
async fn mark_reaches(store: &dyn Store, revision: i64) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mark = store.published_revision().await?;
        if mark == revision {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the published mark stayed at {mark}, not {revision}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An RFC 3339 time of an event, as nanoseconds since the epoch.
fn nanos(time: &serde_json::Value) -> Result<i128, Error> {
    let time: pbjson_types::Timestamp = serde_json::from_value(time.clone())?;
    Ok(i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos))
}

fn now_nanos() -> i128 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i128::try_from(since_epoch.as_nanos()).unwrap_or(i128::MAX)
}

async fn every_change_is_published_once_in_revision_order(backend: Backend) -> TestResult {
    // Microseconds: the precision of stored times.
    let started = now_nanos() / 1000 * 1000;
    let nats = NatsServer::start().await;
    let nats_url = nats.url.clone();
    let server = start_with(backend, |config| config.nats_url = Some(nats_url)).await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    let grace = create(&mut client, "Grace", "grace@example.com").await;
    let renamed = User { id: ada.id, name: "Ada L.".into(), ..Default::default() };
    client.update_user(UpdateUserRequest { user: Some(renamed), update_mask: None }).await?;
    client.delete_user(DeleteUserRequest { id: grace.id }).await?;

    let published = read_stream(&nats.url, 4).await?;
    let expected = [
        ("users.created", "user.created", ada.id, "Ada"),
        ("users.created", "user.created", grace.id, "Grace"),
        ("users.updated", "user.updated", ada.id, "Ada L."),
        ("users.deleted", "user.deleted", grace.id, "Grace"),
    ];
    let mut previous_time = started;
    for (index, (message, (subject, kind, id, name))) in published.iter().zip(expected).enumerate() {
        let revision = index as i64 + 1;
        assert_eq!(message.subject, subject);
        assert_eq!(message.message_id, revision.to_string(), "Nats-Msg-Id is the revision");
        let event = &message.event;
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], revision.to_string());
        assert_eq!(event["revision"], revision);
        assert_eq!(event["type"], kind);
        assert_eq!(event["source"], "/portico/user-service");
        assert_eq!(event["subject"], id.to_string());
        assert_eq!(event["data"]["name"], name);
        assert_eq!(event["data"]["id"], id.to_string());
        // `time` is the commit time: not before the user was created, and in commit order.
        let time = nanos(&event["time"])?;
        assert!(time >= nanos(&event["data"]["createdAt"])?, "{event}");
        assert!(time >= previous_time && time <= now_nanos(), "{event} after {previous_time}");
        let utc = |time: &str| time.ends_with('Z') || time.ends_with("+00:00");
        assert!(event["time"].as_str().is_some_and(utc), "RFC 3339 in UTC, like createdAt: {event}");
        previous_time = time;
    }
    mark_reaches(open(&server.storage).await?.as_ref(), 4).await
}

async fn changes_made_while_nats_is_down_are_published_when_it_returns(backend: Backend) -> TestResult {
    let port = free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    // A window far smaller than the changes made meanwhile: unpublished changes must outlive it.
    let server = start_with(backend, |config| {
        config.nats_url = Some(nats_url.clone());
        config.change_log_window = 3;
    })
    .await;
    let mut client = server.client().await;
    for i in 0..10 {
        create(&mut client, &format!("User {i}"), &format!("user{i}@example.com")).await;
    }
    let store = open(&server.storage).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.published_revision().await?, 0, "nothing is marked before JetStream acknowledged it");

    let nats = NatsServer::start_on(port).await;
    let published = read_stream(&nats.url, 10).await?;
    let ids: Vec<&str> = published.iter().map(|message| message.message_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    // Each event says how many changes were still waiting behind it when it was published.
    let backlogs: Vec<Option<u64>> = published.iter().map(|message| message.backlog).collect();
    let expected: Vec<Option<u64>> = (0..10).rev().map(Some).collect();
    assert_eq!(backlogs, expected);
    mark_reaches(store.as_ref(), 10).await?;

    // Once published, the log is pruned to its window again.
    create(&mut client, "User 10", "user10@example.com").await;
    mark_reaches(store.as_ref(), 11).await?;
    create(&mut client, "User 11", "user11@example.com").await;
    let kept: Vec<i64> = store.changes_after(9, 100).await?.iter().map(|change| change.revision).collect();
    assert_eq!(kept, [10, 11, 12]);
    Ok(())
}

async fn one_relay_holds_the_lease_at_a_time(backend: Backend) -> TestResult {
    let storage = TestStorage::create(backend).await;
    let (first, second) = (open(&storage).await?, open(&storage).await?);
    let mut lease = first.try_relay_lease().await?.ok_or("the lease is free at first")?;
    assert!(second.try_relay_lease().await?.is_none(), "a second relay waits");
    assert!(first.try_relay_lease().await?.is_none(), "even in the same process");
    assert!(lease.still_held().await);
    drop(lease);
    // PostgreSQL releases the advisory lock when the session closes, which dropping starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if second.try_relay_lease().await?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the lease was not free after its holder dropped it".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn another_replica_takes_over_when_the_relay_stops(backend: Backend) -> TestResult {
    let nats = NatsServer::start().await;
    let nats_url = nats.url.clone();
    let mut first = start_with(backend, |config| config.nats_url = Some(nats_url.clone())).await;
    create(&mut first.client().await, "Ada", "ada@example.com").await;
    // Published, so the first replica holds the lease before the second one starts.
    mark_reaches(open(&first.storage).await?.as_ref(), 1).await?;
    let database_url = first.storage.url();
    let second = start_with(backend, |config| {
        config.nats_url = Some(nats_url);
        config.database_url = database_url;
    })
    .await;
    let mut client = second.client().await;
    create(&mut client, "Grace", "grace@example.com").await;

    first.shutdown.cancel();
    first.handle.take().ok_or("running")?.await??;
    create(&mut client, "Edsger", "edsger@example.com").await;
    let published = read_stream(&nats.url, 3).await?;
    let names: Vec<&serde_json::Value> = published.iter().map(|message| &message.event["data"]["name"]).collect();
    assert_eq!(names, ["Ada", "Grace", "Edsger"], "once each, in revision order, across the handover");
    Ok(())
}

/// PostgreSQL only: when the session holding the advisory lock dies, the relay notices, stops, takes the lease
/// again and goes on where the mark says, with nothing lost or repeated.
#[tokio::test]
async fn a_relay_whose_lease_session_dies_takes_the_lease_again() -> TestResult {
    use sqlx::Connection;
    let nats = NatsServer::start().await;
    let nats_url = nats.url.clone();
    let server = start_with(Backend::Postgres, |config| config.nats_url = Some(nats_url)).await;
    let mut client = server.client().await;
    create(&mut client, "Ada", "ada@example.com").await;
    let store = open(&server.storage).await?;
    mark_reaches(store.as_ref(), 1).await?;

    let mut admin = sqlx::PgConnection::connect(&server.storage.url()).await?;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'portico-relay'",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(killed, [true], "one relay session held the lease");
    create(&mut client, "Grace", "grace@example.com").await;
    create(&mut client, "Edsger", "edsger@example.com").await;
    mark_reaches(store.as_ref(), 3).await?;
    let published = read_stream(&nats.url, 3).await?;
    let ids: Vec<&str> = published.iter().map(|message| message.message_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    Ok(())
}

#[tokio::test]
async fn events_tail_prints_the_stream_as_json_lines() -> TestResult {
    let nats = NatsServer::start().await;
    let nats_url = nats.url.clone();
    let server = start_with(Backend::Sqlite, |config| config.nats_url = Some(nats_url)).await;
    let mut client = server.client().await;
    create(&mut client, "Ada", "ada@example.com").await;
    create(&mut client, "Grace", "grace@example.com").await;
    read_stream(&nats.url, 2).await?;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["events", "tail", "--nats-url", &nats.url, "--limit", "2"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output).await??;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let names: Vec<&serde_json::Value> = lines.iter().map(|event| &event["data"]["name"]).collect();
    assert_eq!(names, ["Ada", "Grace"]);
    Ok(())
}

/// Runs `portico events tail ARGS…` to its end; returns the revisions it printed and what it logged.
async fn events_tail(nats_url: &str, args: &[&str]) -> Result<(Vec<i64>, String), Error> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["events", "tail", "--nats-url", nats_url])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .map_err(|_| format!("events tail {args:?} did not end"))??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("events tail {args:?} failed: {stderr}").into());
    }
    let revisions = String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)?;
            event["revision"].as_i64().ok_or_else(|| Error::from(format!("no revision in {line}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((revisions, stderr))
}

/// `--since` and `--type` on a stream whose sequences are not the revisions: revisions 1 and 2 were pruned
/// from the change log before a relay ran, so the stream starts at revision 3 with sequence 1.
#[tokio::test]
async fn events_tail_starts_after_a_revision_and_filters_by_type() -> TestResult {
    let storage = TestStorage::create(Backend::Sqlite).await;
    {
        let options = StoreOptions { change_log_window: 2, max_connections: 1, retain_unpublished: false };
        let store = store::open(&storage.url(), options).await?;
        for name in ["ada", "grace", "edsger", "barbara"] {
            let user = NewUser {
                name: name.into(),
                email: format!("{name}@example.com"),
                roles: vec![],
                password_hash: "not-a-hash".into(),
            };
            store.create_users(vec![user]).await?;
        }
    }
    let nats = NatsServer::start().await;
    let (nats_url, database_url) = (nats.url.clone(), storage.url());
    let server = start_with(Backend::Sqlite, |config| {
        config.nats_url = Some(nats_url);
        config.database_url = database_url;
    })
    .await;
    let mut client = server.client().await;
    let renamed = User { id: 1, name: "Ada L.".into(), ..Default::default() };
    client.update_user(UpdateUserRequest { user: Some(renamed), update_mask: None }).await?; // 5
    client.delete_user(DeleteUserRequest { id: 2 }).await?; // 6
    create(&mut client, "Alan", "alan@example.com").await; // 7
    let ids: Vec<String> = read_stream(&nats.url, 5).await?.into_iter().map(|message| message.message_id).collect();
    assert_eq!(ids, ["3", "4", "5", "6", "7"], "sequences 1 to 5 hold revisions 3 to 7");

    let cases: [(&[&str], &[i64]); 6] = [
        (&["--limit", "5"], &[3, 4, 5, 6, 7]),
        (&["--since", "5", "--limit", "2"], &[6, 7]),
        (&["--since", "2", "--limit", "1"], &[3]),
        (&["--type", "created", "--limit", "3"], &[3, 4, 7]),
        (&["--since", "4", "--type", "created", "--limit", "1"], &[7]),
        (&["--since", "3", "--type", "deleted", "--limit", "1"], &[6]),
    ];
    for (args, expected) in cases {
        let (revisions, _) = events_tail(&nats.url, args).await?;
        assert_eq!(revisions, expected, "events tail {args:?}");
    }
    let (revisions, stderr) = events_tail(&nats.url, &["--since", "1", "--limit", "1"]).await?;
    assert_eq!(revisions, [3]);
    assert!(stderr.contains("no longer in"), "the gap is reported: {stderr}");

    // After the newest revision: waits for the next event.
    let url = nats.url.clone();
    let waiting = tokio::spawn(async move { events_tail(&url, &["--since", "7", "--limit", "1"]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    create(&mut client, "Margaret", "margaret@example.com").await; // 8
    let (revisions, _) = waiting.await??;
    assert_eq!(revisions, [8]);
    Ok(())
}

/// `--events-subject-prefix` and `--events-stream` (here through the config and the environment): the relay
/// publishes there, and `events tail` reads there.
#[tokio::test]
async fn events_go_to_the_configured_subjects_and_stream() -> TestResult {
    let nats = NatsServer::start().await;
    let nats_url = nats.url.clone();
    let server = start_with(Backend::Sqlite, |config| {
        config.nats_url = Some(nats_url);
        config.events = EventNames::new("acme.people", "ACME_PEOPLE").expect("valid names");
    })
    .await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    let renamed = User { id: ada.id, name: "Ada L.".into(), ..Default::default() };
    client.update_user(UpdateUserRequest { user: Some(renamed), update_mask: None }).await?;
    let options = async_nats::ConnectOptions::new();
    let published = read_stream_with(options, &nats.url, "ACME_PEOPLE", 2).await?;
    let subjects: Vec<&str> = published.iter().map(|message| message.subject.as_str()).collect();
    assert_eq!(subjects, ["acme.people.created", "acme.people.updated"]);
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
    let info = jetstream.get_stream("ACME_PEOPLE").await?.info().await?.config.clone();
    assert_eq!(info.subjects, ["acme.people.>"]);
    assert!(jetstream.get_stream("USERS").await.is_err(), "nothing in the default stream");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["events", "tail", "--nats-url", &nats.url, "--events-subject-prefix", "acme.people"])
        .args(["--type", "updated", "--limit", "1"])
        .env("PORTICO_EVENTS_STREAM", "ACME_PEOPLE")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output).await??;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let event: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!((&event["type"], &event["data"]["name"]), (&"user.updated".into(), &"Ada L.".into()));
    Ok(())
}

/// Names NATS would reject stop `user-service`, `serve` and `events tail` at start-up, naming the flag.
#[tokio::test]
async fn invalid_subject_prefixes_and_stream_names_are_config_errors() -> TestResult {
    let cases: [(&[&str], &str); 4] = [
        (
            &["user-service", "--nats-url", "nats://127.0.0.1:1", "--events-subject-prefix", "users.*"],
            "--events-subject-prefix",
        ),
        (&["serve", "--nats-url", "nats://127.0.0.1:1", "--events-stream", "US.ERS"], "--events-stream"),
        (&["events", "tail", "--events-stream", "A B"], "--events-stream"),
        (&["user-service", "--nats-user", "relay", "--nats-password", "pw"], "--nats-url"),
    ];
    for (args, flag) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(args)
            .args(["--db", "sqlite::memory:"].iter().filter(|_| args[0] != "events"))
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(&format!("invalid {flag}")), "{args:?}: {stderr}");
    }
    Ok(())
}

/// The backlog (head revision minus the published mark) in the log: a warning once it grows past
/// `--events-backlog-warn` while NATS is down, and a note once the relay has caught up.
#[tokio::test]
async fn a_growing_backlog_is_logged_until_the_relay_catches_up() -> TestResult {
    let storage = TestStorage::create(Backend::Sqlite).await;
    let port = free_port();
    let (url, nats_url) = (storage.url(), format!("nats://127.0.0.1:{port}"));
    let mut args = vec!["user-service", "--listen", "127.0.0.1:0", "--db", &url, "--nats-url", &nats_url];
    args.extend(["--events-backlog-warn", "2", "--health-check-interval", "100ms"]);
    args.extend(FAST_FLAGS);
    let mut process = Process::start(&args, "info")?;
    let addr = process.address("user service listening").await?;
    let mut client = UserServiceClient::connect(format!("http://{addr}")).await?;
    let backlog_line = |line: &str, count: &str| line.contains("outbox backlog") && line.contains(count);
    for i in 0..2 {
        create(&mut client, &format!("User {i}"), &format!("user{i}@example.com")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!process.logs().iter().any(|line| line.contains("outbox backlog")), "2 is not past the threshold");
    create(&mut client, "User 2", "user2@example.com").await;
    let warning = process.wait_for_line(|line| backlog_line(line, "backlog=3"), Duration::from_secs(10)).await?;
    assert!(warning.contains("WARN") && warning.contains("threshold=2"), "{warning}");

    let _nats = NatsServer::start_on(port).await;
    let back = process.wait_for_line(|line| line.contains("back under the threshold"), Duration::from_secs(20)).await?;
    assert!(back.contains("backlog=0"), "{back}");
    process.terminate()?;
    assert!(process.wait(Duration::from_secs(15)).await?.success());
    Ok(())
}

/// `events tail` reports a stream that stopped behind the change log: the newest event's `Portico-Backlog`
/// says changes were waiting, and nothing more arrives. (The test plays the relay, which would have to die
/// between two publishes for this to happen.)
#[tokio::test]
async fn events_tail_warns_when_the_stream_stops_behind_the_change_log() -> TestResult {
    let nats = NatsServer::start().await;
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
    let config = async_nats::jetstream::stream::Config {
        name: "USERS".into(),
        subjects: vec!["users.>".into()],
        ..Default::default()
    };
    jetstream.create_stream(config).await?;
    for (revision, backlog) in [(1, 1), (2, 7)] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", revision.to_string().as_str());
        headers.insert("Portico-Backlog", backlog.to_string().as_str());
        let payload = format!(r#"{{"id":"{revision}","revision":{revision}}}"#);
        jetstream.publish_with_headers("users.created", headers, payload.into()).await?.await?;
    }
    let tail = Process::start(&["events", "tail", "--nats-url", &nats.url], "info")?;
    let warning = tail
        .wait_for_line(|line| line.contains("behind the change log"), STALL_WARNING + Duration::from_secs(10))
        .await?;
    assert!(warning.contains("revision=2") && warning.contains("backlog=7"), "{warning}");
    Ok(())
}

per_backend!(
    every_change_is_published_once_in_revision_order,
    changes_made_while_nats_is_down_are_published_when_it_returns,
    one_relay_holds_the_lease_at_a_time,
    another_replica_takes_over_when_the_relay_stops,
);
