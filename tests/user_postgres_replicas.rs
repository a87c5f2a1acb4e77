//! Two `portico user-service` processes on one PostgreSQL database, with a watcher on each and writes through
//! both: every watcher sees every change exactly once, in revision order, within a second (LISTEN/NOTIFY, not
//! polling), and a replica started late resumes from `since_revision`.

mod common;

use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::process::{FAST_FLAGS, Process};
use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{
    CreateUserRequest, DeleteUserRequest, UpdateUserRequest, User, UserEvent, UserEventType, WatchUsersRequest,
};
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Client = UserServiceClient<Channel>;

struct Replica {
    process: Process,
    client: Client,
}

/// Starts a replica on `url`. The poll interval is far longer than the test: only notifications can deliver
/// another replica's changes in time.
async fn replica(url: &str) -> Result<Replica, Error> {
    let args: Vec<&str> = [
        "user-service",
        "--listen",
        "127.0.0.1:0",
        "--db",
        url,
        "--watch-poll-interval",
        "1h",
        "--db-max-connections",
        "4",
    ]
    .into_iter()
    .chain(FAST_FLAGS)
    .collect();
    let process = Process::start(&args, "info")?;
    let addr = process.address("user service listening").await?;
    let client = UserServiceClient::new(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    Ok(Replica { process, client })
}

async fn watch(client: &mut Client, since_revision: i64) -> Result<Streaming<UserEvent>, Error> {
    Ok(client.watch_users(WatchUsersRequest { filter: String::new(), since_revision }).await?.into_inner())
}

async fn next(stream: &mut Streaming<UserEvent>, limit: Duration) -> Result<UserEvent, Error> {
    match tokio::time::timeout(limit, stream.next()).await? {
        Some(event) => Ok(event?),
        None => Err("stream ended".into()),
    }
}

/// Reads live events until `until` (inclusive): revisions must go up by exactly one each time, which is
/// "every change exactly once, in revision order" for an unfiltered watcher.
async fn read_until(stream: &mut Streaming<UserEvent>, after: i64, until: i64) -> Result<Vec<UserEvent>, Error> {
    let mut events = Vec::new();
    let mut last = after;
    while last < until {
        let event = next(stream, Duration::from_secs(10)).await?;
        if event.revision != last + 1 {
            return Err(format!(
                "revision {} after {last}: a change was skipped, repeated or reordered",
                event.revision
            )
            .into());
        }
        last = event.revision;
        events.push(event);
    }
    Ok(events)
}

fn request(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
        password: "s3cret-passw0rd".into(),
        roles: vec![],
    }
}

/// Creates, renames and (every other time) deletes users through `client`.
async fn churn(mut client: Client, tag: &'static str, rounds: usize) -> Result<(), tonic::Status> {
    for round in 0..rounds {
        let user = client.create_user(request(&format!("{tag} {round}"))).await?.into_inner();
        let rename = User { id: user.id, name: format!("{tag} {round} renamed"), ..Default::default() };
        client.update_user(UpdateUserRequest { user: Some(rename), update_mask: None }).await?;
        if round % 2 == 0 {
            client.delete_user(DeleteUserRequest { id: user.id }).await?;
        }
    }
    Ok(())
}

/// Waits for the snapshot to complete and returns its revision.
async fn snapshot_revision(stream: &mut Streaming<UserEvent>) -> Result<i64, Error> {
    loop {
        let event = next(stream, Duration::from_secs(10)).await?;
        if event.r#type == UserEventType::SnapshotComplete as i32 {
            return Ok(event.revision);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_every_replica_see_every_change_once_in_order() -> Result<(), Error> {
    let database = TestDatabase::create().await;
    let (mut a, mut b) = (replica(&database.url).await?, replica(&database.url).await?);
    let mut on_a = watch(&mut a.client, 0).await?;
    let mut on_b = watch(&mut b.client, 0).await?;
    let start = snapshot_revision(&mut on_a).await?;
    assert_eq!(snapshot_revision(&mut on_b).await?, start);

    // A change made through one replica reaches the other's watcher within a second.
    let sent = Instant::now();
    a.client.create_user(request("First")).await?;
    let first = next(&mut on_b, Duration::from_secs(1)).await?;
    assert!(sent.elapsed() < Duration::from_secs(1), "took {:?}", sent.elapsed());
    assert_eq!(first.user.map(|u| u.name), Some("First".to_string()));
    assert_eq!(next(&mut on_a, Duration::from_secs(1)).await?.revision, first.revision);

    // Concurrent writes through both replicas.
    const ROUNDS: usize = 30;
    let writes = tokio::try_join!(
        churn(a.client.clone(), "via a", ROUNDS),
        churn(a.client.clone(), "also via a", ROUNDS),
        churn(b.client.clone(), "via b", ROUNDS),
        churn(b.client.clone(), "also via b", ROUNDS),
    );
    writes?;
    // 1 first create, then per round: create + rename, and a delete every other round.
    let head = first.revision + (4 * (ROUNDS * 2 + ROUNDS / 2)) as i64;
    let seen_on_a = read_until(&mut on_a, first.revision, head).await?;
    let seen_on_b = read_until(&mut on_b, first.revision, head).await?;
    assert_eq!(seen_on_a, seen_on_b, "both replicas report the same changes");

    // A third replica started late resumes from any revision still in the log.
    let mut late = replica(&database.url).await?;
    let middle = first.revision + 40;
    let mut resumed = watch(&mut late.client, middle).await?;
    let replayed = read_until(&mut resumed, middle, head).await?;
    assert_eq!(replayed, seen_on_a[40..], "the late replica replays exactly what the others saw");
    // ... and then follows live changes made elsewhere.
    b.client.create_user(request("Last")).await?;
    let last = next(&mut resumed, Duration::from_secs(1)).await?;
    assert_eq!((last.revision, last.user.map(|u| u.name)), (head + 1, Some("Last".to_string())));

    for replica in [&a, &b, &late] {
        replica.process.terminate()?;
    }
    for replica in [&mut a, &mut b, &mut late] {
        assert!(replica.process.wait(Duration::from_secs(10)).await?.success());
    }
    Ok(())
}
