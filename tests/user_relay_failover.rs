//! The outbox relay across real processes: two `portico user-service` replicas on one PostgreSQL database, both
//! with `--nats-url` to a NATS server of the test's own. Clients write through both replicas concurrently, and
//! the replica holding the relay lease is killed with SIGKILL in the middle. Afterwards every write a client got
//! an OK for is in the database, the other replica's relay has taken over, and the stream holds exactly one
//! event per revision (counted by `Nats-Msg-Id`), in revision order, each acknowledged write among them. A
//! replica that joins late replays the backlog to a watcher and takes the lease over when the last one stops.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::Client;
use common::nats::{NatsServer, Published, read_stream};
use common::postgres::TestDatabase;
use common::process::{FAST_FLAGS, Process};
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{CreateUserRequest, UpdateUserRequest, User, UserEvent, WatchUsersRequest};
use sqlx::Connection;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the relay logs once it holds the lease.
const HOLDS_LEASE: &str = "outbox relay holds the lease";
/// Acknowledged writes before the kill, and again after it.
const WRITES_PER_HALF: usize = 80;

struct Replica {
    process: Process,
    client: Client,
}

async fn replica(database_url: &str, nats_url: &str) -> Result<Replica, Error> {
    let mut args = vec!["user-service", "--listen", "127.0.0.1:0", "--db", database_url, "--nats-url", nats_url];
    // The change log keeps every revision, so the test can read all of them back.
    args.extend(["--db-max-connections", "4", "--change-log-window", "100000"]);
    args.extend(FAST_FLAGS);
    let process = Process::start(&args, "info")?;
    let addr = process.address("user service listening").await?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(2));
    let client = UserServiceClient::new(channel.connect().await?);
    Ok(Replica { process, client })
}

impl Replica {
    async fn holds_lease(&self, limit: Duration) -> Result<(), Error> {
        self.process.wait_for_line(|line| line.contains(HOLDS_LEASE), limit).await.map(drop)
    }
}

/// A write a client got an OK for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acked {
    Created { id: i64, name: String },
    Renamed { id: i64, name: String },
}

impl Acked {
    /// Whether `event` is this write's CloudEvent.
    fn is(&self, event: &serde_json::Value) -> bool {
        let (kind, id, name) = match self {
            Self::Created { id, name } => ("user.created", id, name),
            Self::Renamed { id, name } => ("user.updated", id, name),
        };
        // proto3 JSON writes an int64 as a string.
        let id = id.to_string();
        event["type"] == kind
            && event["data"]["id"].as_str() == Some(id.as_str())
            && event["data"]["name"] == name.as_str()
    }
}

fn request(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: format!("{}@example.com", name.replace(' ', ".")),
        password: "s3cret-passw0rd".into(),
        roles: vec![],
    }
}

/// Creates and renames users through `client` until `stop`, counting acknowledged writes in `acked_total`.
/// Returns the acknowledged writes and how many calls failed.
async fn writer(
    mut client: Client,
    tag: &'static str,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> (Vec<Acked>, usize) {
    let (mut acked, mut failed) = (Vec::new(), 0);
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let name = format!("{tag} {round}");
        let id = match client.create_user(request(&name)).await {
            Ok(user) => user.into_inner().id,
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        acked.push(Acked::Created { id, name: name.clone() });
        acked_total.fetch_add(1, Ordering::Relaxed);
        let renamed = format!("{name} renamed");
        let rename = User { id, name: renamed.clone(), ..Default::default() };
        match client.update_user(UpdateUserRequest { user: Some(rename), update_mask: None }).await {
            Ok(_) => {
                acked.push(Acked::Renamed { id, name: renamed });
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => failed += 1,
        }
    }
    (acked, failed)
}

async fn wait_for(count: &AtomicUsize, at_least: usize) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < at_least {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {} writes acknowledged, not {at_least}", count.load(Ordering::Relaxed)).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// How many messages the user events stream holds.
async fn stream_length(nats_url: &str) -> Result<u64, Error> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let mut stream = jetstream.get_stream(portico::user_service::relay::DEFAULT_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

/// Reads a watch until revision `until`, failing on any revision that is not the one after the last.
async fn read_until(stream: &mut Streaming<UserEvent>, after: i64, until: i64) -> Result<(), Error> {
    let mut last = after;
    while last < until {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?.ok_or("watch ended")??;
        if event.revision != last + 1 {
            return Err(format!("revision {} after {last}: skipped, repeated or reordered", event.revision).into());
        }
        last = event.revision;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_holder_loses_no_acknowledged_write_and_no_event() -> Result<(), Error> {
    let database = TestDatabase::create().await;
    let nats = NatsServer::start().await;
    let mut a = replica(&database.url, &nats.url).await?;
    a.holds_lease(Duration::from_secs(20)).await?;
    let mut b = replica(&database.url, &nats.url).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = [("a1", &a), ("a2", &a), ("b1", &b), ("b2", &b)]
        .into_iter()
        .map(|(tag, replica)| {
            let client = replica.client.clone();
            tokio::spawn(writer(client, tag, Arc::clone(&stop), Arc::clone(&acked_total)))
        })
        .collect();
    wait_for(&acked_total, WRITES_PER_HALF).await?;
    a.process.signal("-KILL")?;
    a.process.wait(Duration::from_secs(10)).await?;
    let mut admin = sqlx::PgConnection::connect(&database.url).await?;
    let marked_at_kill: i64 = sqlx::query_scalar("SELECT published FROM relay_mark").fetch_one(&mut admin).await?;
    let in_stream_at_kill = stream_length(&nats.url).await?;
    let acked_at_kill = acked_total.load(Ordering::Relaxed);
    wait_for(&acked_total, acked_at_kill + WRITES_PER_HALF).await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for (index, writer) in writers.into_iter().enumerate() {
        let (writes, failed) = writer.await?;
        // Writers 2 and 3 write through b, which must not notice a's death.
        assert!(index < 2 || failed == 0, "{failed} writes through the surviving replica failed");
        acked.extend(writes);
    }
    b.holds_lease(Duration::from_secs(20)).await?;

    // No acknowledged write is lost: each one's user is stored as the client was told.
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM users").fetch_all(&mut admin).await?;
    let stored: HashMap<i64, String> = rows.into_iter().collect();
    let renamed: HashSet<i64> =
        acked.iter().filter_map(|write| if let Acked::Renamed { id, .. } = write { Some(*id) } else { None }).collect();
    for write in &acked {
        match write {
            // A rename the kill cut off after its commit but before its answer may be stored too.
            Acked::Created { id, name } if !renamed.contains(id) => {
                let stored = stored.get(id).ok_or(format!("acknowledged create of user {id} lost"))?;
                assert!(*stored == *name || *stored == format!("{name} renamed"), "user {id} is {stored:?}");
            }
            Acked::Renamed { id, name } => assert_eq!(stored.get(id), Some(name), "acknowledged rename of {id}"),
            Acked::Created { .. } => {}
        }
    }
    let head: i64 = sqlx::query_scalar("SELECT revision FROM revision_counter").fetch_one(&mut admin).await?;
    assert!(head >= acked.len() as i64, "{} acknowledged writes, head revision {head}", acked.len());

    // A replica that joins late replays the backlog to a watcher, from any revision in the log.
    let mut late = replica(&database.url, &nats.url).await?;
    let since_revision = head / 2;
    let watch_request = WatchUsersRequest { filter: String::new(), since_revision };
    let mut watch = late.client.watch_users(watch_request).await?.into_inner();
    read_until(&mut watch, since_revision, head).await?;
    // ... and takes the relay over when the last other replica stops.
    b.process.terminate()?;
    assert!(b.process.wait(Duration::from_secs(15)).await?.success());
    let last = late.client.create_user(request("late joiner")).await?.into_inner();
    late.holds_lease(Duration::from_secs(20)).await?;
    acked.push(Acked::Created { id: last.id, name: "late joiner".into() });

    // Exactly one event per revision, in revision order: sequence n holds revision n.
    let published = read_stream(&nats.url, usize::try_from(head + 1)?).await?;
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for message in &published {
        *per_id.entry(message.message_id.as_str()).or_default() += 1;
    }
    assert!(per_id.values().all(|count| *count == 1), "a Nats-Msg-Id twice");
    let ids: Vec<String> = published.iter().map(|message| message.message_id.clone()).collect();
    let expected: Vec<String> = (1..=head + 1).map(|revision| revision.to_string()).collect();
    assert_eq!(ids, expected, "one event per revision, in revision order");
    for write in &acked {
        let events: Vec<&Published> = published.iter().filter(|message| write.is(&message.event)).collect();
        assert_eq!(events.len(), 1, "events of acknowledged {write:?}: {events:#?}");
    }
    // Informational: when the stream was ahead of the mark, b's relay re-published those events and JetStream
    // dropped them by Nats-Msg-Id; the assertions above hold either way.
    eprintln!(
        "{} acknowledged writes, {head} revisions; at the kill: mark {marked_at_kill}, {in_stream_at_kill} \
         events in the stream",
        acked.len()
    );
    late.process.terminate()?;
    assert!(late.process.wait(Duration::from_secs(15)).await?.success());
    Ok(())
}
