//! The `Store` trait directly, on both backends: two store instances on one database stand for two replicas
//! (two pools, two listeners), so revision order can be checked against commit order across them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, TestResult, TestStorage};
use portico::user_service::filter::Filter;
use portico::user_service::store::{self, NewUser, Store, StoreError, StoreOptions, UserPatch};

const OPTIONS: StoreOptions =
    StoreOptions { change_log_window: 100_000, max_connections: 8, retain_unpublished: false };

fn new_user(name: &str) -> NewUser {
    NewUser {
        name: name.into(),
        email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
        roles: vec!["reader".into()],
        password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
    }
}

async fn open(storage: &TestStorage) -> Result<Arc<dyn Store>, StoreError> {
    store::open(&storage.url(), OPTIONS).await
}

/// Reads the log after `last` until it is empty; every revision read must be exactly one more than the one
/// before. A revision that became visible after a larger one (commit order ≠ revision order) would show up as
/// a hole at the time the larger one was read.
async fn read_contiguously(store: &dyn Store, last: &mut i64) -> TestResult {
    loop {
        let changes = store.changes_after(*last, 500).await?;
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            if change.revision != *last + 1 {
                return Err(format!(
                    "read revision {} right after {}: a revision appeared late",
                    change.revision, last
                )
                .into());
            }
            *last = change.revision;
        }
    }
}

async fn revisions_follow_commit_order_across_replicas(backend: Backend) -> TestResult {
    const WRITERS_PER_REPLICA: usize = 4;
    const ROUNDS: usize = 25;
    let storage = TestStorage::create(backend).await;
    let replicas = [open(&storage).await?, open(&storage).await?];

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for replica in &replicas {
        let (replica, done) = (Arc::clone(replica), Arc::clone(&done));
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            while !done.load(Ordering::Acquire) {
                read_contiguously(replica.as_ref(), &mut last).await?;
                tokio::task::yield_now().await;
            }
            read_contiguously(replica.as_ref(), &mut last).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(last)
        }));
    }

    let mut writers = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for w in 0..WRITERS_PER_REPLICA {
            let replica = Arc::clone(replica);
            writers.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let batch =
                        vec![new_user(&format!("R{r} W{w} N{round} a")), new_user(&format!("R{r} W{w} N{round} b"))];
                    let created = replica.create_users(batch).await?;
                    let patch = UserPatch { name: Some(format!("R{r} W{w} N{round} renamed")), ..UserPatch::default() };
                    replica.update_user(created[0].id, patch).await?;
                    replica.delete_user(created[1].id).await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
    }
    for writer in writers {
        writer.await??;
    }
    done.store(true, Ordering::Release);
    let expected = (2 * WRITERS_PER_REPLICA * ROUNDS * 4) as i64;
    for reader in readers {
        assert_eq!(reader.await?.map_err(|e| e.to_string())?, expected, "every revision was read once");
    }
    for replica in &replicas {
        assert_eq!(replica.head_revision().await?, expected);
        assert_eq!(replica.count_users(&Filter::default()).await?, (2 * WRITERS_PER_REPLICA * ROUNDS) as i64);
    }
    Ok(())
}

async fn a_failed_batch_takes_no_revision_and_no_id(backend: Backend) -> TestResult {
    let storage = TestStorage::create(backend).await;
    let store = open(&storage).await?;
    let ada = store.create_users(vec![new_user("Ada")]).await?;
    let clash = store.create_users(vec![new_user("Grace"), new_user("ADA")]).await;
    assert!(matches!(clash, Err(StoreError::EmailTaken { index: Some(1), .. })), "{clash:?}");
    assert_eq!(store.head_revision().await?, 1, "the rolled-back batch left no revision behind");
    assert_eq!(store.count_users(&Filter::default()).await?, 1);
    let grace = store.create_users(vec![new_user("Grace")]).await?;
    assert_eq!(store.head_revision().await?, 2);
    assert!(grace[0].id > ada[0].id);
    Ok(())
}

async fn the_change_log_window_and_its_errors(backend: Backend) -> TestResult {
    let storage = TestStorage::create(backend).await;
    let store = store::open(&storage.url(), StoreOptions { change_log_window: 3, ..OPTIONS }).await?;
    assert!(store.changes_after(0, 10).await?.is_empty(), "an empty log has nothing after 0");
    assert!(matches!(store.changes_after(1, 10).await, Err(StoreError::RevisionAhead { requested: 1, latest: 0 })));
    for i in 0..5 {
        store.create_users(vec![new_user(&format!("User {i}"))]).await?;
    }
    let kept: Vec<i64> = store.changes_after(2, 10).await?.iter().map(|c| c.revision).collect();
    assert_eq!(kept, [3, 4, 5]);
    assert!(matches!(store.changes_after(1, 10).await, Err(StoreError::RevisionCompacted { requested: 1, oldest: 3 })));
    assert!(matches!(store.changes_after(6, 10).await, Err(StoreError::RevisionAhead { requested: 6, latest: 5 })));
    Ok(())
}

/// PostgreSQL only: a listener whose connection is killed reconnects and catches up, so a change committed
/// through another replica while it was down is still signalled, with no poll to rely on.
#[tokio::test]
async fn postgres_listener_reconnects_and_catches_up() -> TestResult {
    use sqlx::Connection;
    let storage = TestStorage::create(Backend::Postgres).await;
    let (writer, watched) = (open(&storage).await?, open(&storage).await?);
    let mut signal = watched.change_notifications().ok_or("PostgreSQL notifies")?;

    writer.create_users(vec![new_user("Before")]).await?;
    tokio::time::timeout(Duration::from_secs(5), signal.changed()).await??;

    let mut admin = sqlx::PgConnection::connect(&storage.url()).await?;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'portico-listener'",
    )
    .fetch_all(&mut admin)
    .await?;
    assert!(!killed.is_empty() && killed.iter().all(|k| *k), "the listeners were killed: {killed:?}");
    signal.borrow_and_update();
    writer.create_users(vec![new_user("During")]).await?;

    // Woken either by the notification (listener already back) or by the reconnection itself; either way the
    // change is in the log after the last revision read.
    tokio::time::timeout(Duration::from_secs(5), signal.changed()).await??;
    let changes = watched.changes_after(1, 10).await?;
    assert_eq!(changes.iter().map(|c| c.user.name.as_str()).collect::<Vec<_>>(), ["During"]);

    // And it listens again.
    signal.borrow_and_update();
    writer.create_users(vec![new_user("After")]).await?;
    tokio::time::timeout(Duration::from_secs(5), signal.changed()).await??;
    Ok(())
}

/// PostgreSQL only: `sslmode=require` in the URL puts every connection of the store, the listener's too, on
/// TLS (the test server has Debian's default `ssl = on`).
#[tokio::test]
async fn postgres_sslmode_require_encrypts_every_connection() -> TestResult {
    use sqlx::Connection;
    let storage = TestStorage::create(Backend::Postgres).await;
    let store = store::open(&format!("{}?sslmode=require", storage.url()), OPTIONS).await?;
    let mut signal = store.change_notifications().ok_or("PostgreSQL notifies")?;
    store.create_users(vec![new_user("Ada")]).await?;
    tokio::time::timeout(Duration::from_secs(5), signal.changed()).await??;

    let mut admin = sqlx::PgConnection::connect(&storage.url()).await?;
    let connections: Vec<(String, bool)> = sqlx::query_as(
        "SELECT application_name, ssl FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
         WHERE datname = current_database() AND application_name LIKE 'portico%' ORDER BY application_name",
    )
    .fetch_all(&mut admin)
    .await?;
    assert!(connections.iter().any(|(name, _)| name == "portico-listener"), "{connections:?}");
    assert!(connections.iter().any(|(name, _)| name == "portico"), "{connections:?}");
    assert!(connections.iter().all(|(_, ssl)| *ssl), "every connection uses TLS: {connections:?}");
    Ok(())
}

#[tokio::test]
async fn sqlite_has_no_notifications() -> TestResult {
    let storage = TestStorage::create(Backend::Sqlite).await;
    assert!(open(&storage).await?.change_notifications().is_none(), "the feed keeps polling on SQLite");
    Ok(())
}

per_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    revisions_follow_commit_order_across_replicas,
    a_failed_batch_takes_no_revision_and_no_id,
    the_change_log_window_and_its_errors,
);
