//! WatchUsers: snapshot then live changes under concurrent writers, resumes, filters, and slow watchers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Backend, Client, TestResult, create, create_request, start_on, start_with, violations};
use portico::proto::user::{
    CreateUserRequest, DeleteUserRequest, ListUsersRequest, UpdateUserRequest, User, UserEvent, UserEventType,
    WatchUsersRequest,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

async fn watch(client: &mut Client, filter: &str, since_revision: i64) -> Result<Streaming<UserEvent>, tonic::Status> {
    Ok(client.watch_users(WatchUsersRequest { filter: filter.into(), since_revision }).await?.into_inner())
}

async fn next(stream: &mut Streaming<UserEvent>) -> Result<UserEvent, Box<dyn std::error::Error + Send + Sync>> {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await? {
        Some(event) => Ok(event?),
        None => Err("stream ended".into()),
    }
}

fn kind(event: &UserEvent) -> UserEventType {
    UserEventType::try_from(event.r#type).unwrap_or(UserEventType::Unspecified)
}

async fn all_users(client: &mut Client) -> Result<BTreeMap<i64, User>, tonic::Status> {
    let mut users = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_users(ListUsersRequest { page_size: 1000, page_token, filter: String::new() })
            .await?
            .into_inner();
        users.extend(page.users.into_iter().map(|u| (u.id, u)));
        if page.next_page_token.is_empty() {
            return Ok(users);
        }
        page_token = page.next_page_token;
    }
}

/// Runs creates, updates and deletes from `writers` clients at once.
async fn churn(server: &common::TestServer, writers: usize, rounds: usize, tag: &str) -> TestResult {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = server.client().await;
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let user = create(&mut client, &format!("{tag} {w}-{r}"), &format!("{tag}-{w}-{r}@example.com")).await;
                let rename = UpdateUserRequest {
                    user: Some(User { id: user.id, name: format!("{tag} renamed {w}-{r}"), ..Default::default() }),
                    update_mask: None,
                };
                client.update_user(rename).await.expect("update");
                if r % 3 == 0 {
                    client.delete_user(DeleteUserRequest { id: user.id }).await.expect("delete");
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

async fn snapshot_then_live_changes_with_concurrent_writers_have_no_gap_and_no_duplicate(
    backend: Backend,
) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let seed: Vec<_> =
        (0..200).map(|i| create_request(&format!("Seed {i}"), &format!("seed{i}@example.com"))).collect();
    client.batch_create_users(futures::stream::iter(seed)).await?;

    // Writers start first, so the snapshot is taken while changes are being committed.
    let writers = churn(&server, 4, 40, "live");
    let watcher = async {
        let mut stream = watch(&mut server.client().await, "", 0).await?;
        let mut state: BTreeMap<i64, User> = BTreeMap::new();
        let snapshot_revision = loop {
            let event = next(&mut stream).await?;
            match kind(&event) {
                UserEventType::Existing => {
                    assert_eq!(event.revision, 0);
                    let user = event.user.ok_or("existing event carries a user")?;
                    assert!(state.insert(user.id, user).is_none(), "a user twice in the snapshot");
                }
                UserEventType::SnapshotComplete => break event.revision,
                other => return Err(format!("live event {other:?} before the snapshot completed").into()),
            }
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stream, state, snapshot_revision))
    };
    let (written, watched) = tokio::join!(writers, watcher);
    written?;
    let (mut stream, mut state, snapshot_revision) = watched?;

    // A sentinel marks the end of the writes.
    let sentinel = create(&mut client, "Sentinel", "sentinel@example.com").await;
    let mut last = snapshot_revision;
    let mut live = Vec::new();
    loop {
        let event = next(&mut stream).await?;
        assert!(event.revision > last, "revisions strictly increase: {} after {last}", event.revision);
        last = event.revision;
        let user = event.user.clone().ok_or("live events carry a user")?;
        match kind(&event) {
            UserEventType::Created => assert!(state.insert(user.id, user.clone()).is_none(), "created twice"),
            UserEventType::Updated => {
                assert!(state.insert(user.id, user.clone()).is_some(), "update of an unknown user")
            }
            UserEventType::Deleted => assert!(state.remove(&user.id).is_some(), "delete of an unknown user"),
            other => return Err(format!("unexpected {other:?}").into()),
        }
        live.push(event);
        if user.id == sentinel.id {
            break;
        }
    }
    // Snapshot + live changes rebuild exactly what the database holds: nothing lost, nothing extra.
    assert_eq!(state, all_users(&mut client).await?);

    // Resuming from the snapshot's revision replays exactly the same live events.
    let mut resumed = watch(&mut client, "", snapshot_revision).await?;
    for expected in &live {
        assert_eq!(&next(&mut resumed).await?, expected);
    }
    Ok(())
}

async fn since_revision_resumes_after_that_revision(backend: Backend) -> TestResult {
    let server = start_with(backend, |config| config.change_log_window = 20).await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    let mut stream = watch(&mut client, "", 0).await?;
    let marker = next(&mut stream).await?; // EXISTING Ada
    assert_eq!(marker.user.map(|u| u.id), Some(ada.id));
    let marker = next(&mut stream).await?;
    assert_eq!(kind(&marker), UserEventType::SnapshotComplete);
    assert!(marker.user.is_none());
    let start = marker.revision;

    let grace = create(&mut client, "Grace", "grace@example.com").await;
    client.delete_user(DeleteUserRequest { id: ada.id }).await?;
    let created = next(&mut stream).await?;
    let deleted = next(&mut stream).await?;
    assert_eq!((kind(&created), created.user.as_ref().map(|u| u.id)), (UserEventType::Created, Some(grace.id)));
    assert_eq!((kind(&deleted), deleted.user.as_ref().map(|u| u.id)), (UserEventType::Deleted, Some(ada.id)));
    assert_eq!(
        deleted.user.as_ref().map(|u| u.email.as_str()),
        Some("ada@example.com"),
        "a delete carries the last values"
    );

    // since_revision skips the snapshot and starts right after the given revision.
    let mut resumed = watch(&mut client, "", created.revision).await?;
    assert_eq!(next(&mut resumed).await?, deleted);
    let mut from_start = watch(&mut client, "", start).await?;
    assert_eq!(next(&mut from_start).await?, created);
    assert_eq!(next(&mut from_start).await?, deleted);

    // Push the first changes out of the 20-entry window.
    for i in 0..30 {
        create(&mut client, "Filler", &format!("filler{i}@example.com")).await;
    }
    // A position outside the log is refused before the stream starts.
    let status = watch(&mut client, "", start).await.expect_err("compacted");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("re-list"), "{}", status.message());
    let status = watch(&mut client, "", 1_000_000).await.expect_err("ahead");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let status = watch(&mut client, "", -1).await.expect_err("negative");
    assert_eq!((status.code(), violations(&status)[0].0.as_str()), (Code::InvalidArgument, "since_revision"));
    let status = watch(&mut client, "roles = admin", 0).await.expect_err("bad filter");
    assert_eq!((status.code(), violations(&status)[0].0.as_str()), (Code::InvalidArgument, "filter"));
    Ok(())
}

async fn a_filtered_watch_sees_users_enter_and_leave_its_filter(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let mut stream = watch(&mut client, "roles:admin", 0).await?;
    assert_eq!(kind(&next(&mut stream).await?), UserEventType::SnapshotComplete, "empty snapshot");

    create(&mut client, "Plain", "plain@example.com").await;
    let admin = client
        .create_user(CreateUserRequest { roles: vec!["admin".into()], ..create_request("Admin", "admin@example.com") })
        .await?
        .into_inner();
    let event = next(&mut stream).await?;
    assert_eq!(
        (kind(&event), event.user.map(|u| u.id)),
        (UserEventType::Created, Some(admin.id)),
        "the plain user is filtered out"
    );

    let demote = UpdateUserRequest {
        user: Some(User { id: admin.id, ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["roles".into()] }),
    };
    client.update_user(demote).await?;
    let event = next(&mut stream).await?;
    assert_eq!(kind(&event), UserEventType::Updated, "leaving the filter is seen");
    assert_eq!(event.user.map(|u| u.roles), Some(vec![]));

    let rename = UpdateUserRequest {
        user: Some(User { id: admin.id, name: "Renamed".into(), ..Default::default() }),
        update_mask: None,
    };
    client.update_user(rename).await?;
    let second_admin = client
        .create_user(CreateUserRequest {
            roles: vec!["admin".into()],
            ..create_request("Admin 2", "admin2@example.com")
        })
        .await?
        .into_inner();
    let event = next(&mut stream).await?;
    assert_eq!(event.user.map(|u| u.id), Some(second_admin.id), "changes outside the filter are not sent");
    Ok(())
}

async fn a_slow_watcher_is_cut_off_while_a_fast_one_gets_everything(backend: Backend) -> TestResult {
    const BATCHES: usize = 5;
    let server = start_with(backend, |config| {
        config.change_log_window = 1_500;
        config.feed.broadcast_capacity = 16;
    })
    .await;
    let mut client = server.client().await;

    // The slow watcher's connection has small flow-control windows, so its server-side task blocks soon.
    let slow_channel =
        server.endpoint().initial_stream_window_size(65_535).initial_connection_window_size(65_535).connect().await?;
    let mut slow_client = portico::proto::user::user_service_client::UserServiceClient::new(slow_channel);
    let mut slow = watch(&mut slow_client, "", 0).await?;
    assert_eq!(kind(&next(&mut slow).await?), UserEventType::SnapshotComplete);

    let mut fast = watch(&mut server.client().await, "", 0).await?;
    assert_eq!(kind(&next(&mut fast).await?), UserEventType::SnapshotComplete);
    let fast_reader = tokio::spawn(async move {
        let mut last = 0;
        let mut received = 0usize;
        while received < BATCHES * 1000 {
            let event = next(&mut fast).await.expect("the fast watcher keeps receiving");
            assert!(event.revision > last);
            last = event.revision;
            received += 1;
        }
        received
    });

    let long_name = "n".repeat(200);
    for batch in 0..BATCHES {
        let requests: Vec<_> =
            (0..1000).map(|i| create_request(&long_name, &format!("b{batch}-{i}@example.com"))).collect();
        client.batch_create_users(futures::stream::iter(requests)).await?;
    }
    assert_eq!(fast_reader.await?, BATCHES * 1000);

    // Now the slow watcher reads: some events arrive in order, then it is ended, with a way to resume.
    let mut received = 0;
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await? {
            Some(Ok(event)) => {
                assert!(event.revision > last);
                last = event.revision;
                received += 1;
            }
            Some(Err(status)) => break status,
            None => return Err("the slow watch ended without a status".into()),
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("fell behind"), "{}", status.message());
    assert!(received < BATCHES * 1000, "the slow watcher was cut off before the end ({received} events)");
    Ok(())
}

/// A snapshot larger than a page is read page by page; changes made while it is read (to users in pages already
/// sent and in pages not read yet) leave it one consistent view, and arrive after it as live events.
async fn a_snapshot_over_many_pages_is_consistent_while_users_change(backend: Backend) -> TestResult {
    const USERS: usize = 2_000;
    let server = start_with(backend, |config| config.feed.page_size = 50).await;
    let mut client = server.client().await;
    // Long names make each event large, so the client's 64 KiB HTTP/2 window holds a few hundred of them: the
    // server reads later pages only as this test reads events.
    let long_name = "n".repeat(180);
    for batch in 0..USERS / 1000 {
        let requests: Vec<_> = (0..1000)
            .map(|i| create_request(&format!("{long_name} {batch}-{i}"), &format!("p{batch}-{i}@example.com")))
            .collect();
        client.batch_create_users(futures::stream::iter(requests)).await?;
    }
    let before = all_users(&mut client).await?;
    assert_eq!(before.len(), USERS);
    let ids: Vec<i64> = before.keys().copied().collect();

    let channel =
        server.endpoint().initial_stream_window_size(65_535).initial_connection_window_size(65_535).connect().await?;
    let mut watcher = portico::proto::user::user_service_client::UserServiceClient::new(channel);
    let mut stream = watch(&mut watcher, "", 0).await?;
    let first = next(&mut stream).await?;
    assert_eq!(kind(&first), UserEventType::Existing);

    // Changes while the snapshot is being read: in the first page (already sent), near the end (not read yet),
    // a delete, and a create.
    let renamed_early = ids[1];
    let renamed_late = ids[USERS - 10];
    let deleted_late = ids[USERS - 5];
    for id in [renamed_early, renamed_late] {
        let rename = UpdateUserRequest {
            user: Some(User { id, name: format!("Renamed {id}"), ..Default::default() }),
            update_mask: None,
        };
        client.update_user(rename).await?;
    }
    client.delete_user(DeleteUserRequest { id: deleted_late }).await?;
    let created = create(&mut client, "Newcomer", "newcomer@example.com").await;

    let mut snapshot = vec![first.user.ok_or("existing event carries a user")?];
    let revision = loop {
        let event = next(&mut stream).await?;
        match kind(&event) {
            UserEventType::Existing => snapshot.push(event.user.ok_or("existing event carries a user")?),
            UserEventType::SnapshotComplete => break event.revision,
            other => return Err(format!("live event {other:?} before the snapshot completed").into()),
        }
    };
    // Every user, exactly once, in id order, as they were before the changes.
    let snapshot_ids: Vec<i64> = snapshot.iter().map(|u| u.id).collect();
    assert_eq!(snapshot_ids, ids, "the snapshot holds every user once, in order");
    for user in &snapshot {
        assert_eq!(Some(user), before.get(&user.id), "user {} as it was when the snapshot started", user.id);
    }

    // Then the four changes, in commit order, all after the snapshot's revision.
    let mut last = revision;
    let mut live = Vec::new();
    for _ in 0..4 {
        let event = next(&mut stream).await?;
        assert!(event.revision > last, "revisions increase: {} after {last}", event.revision);
        last = event.revision;
        live.push((kind(&event), event.user.map(|u| u.id)));
    }
    assert_eq!(
        live,
        vec![
            (UserEventType::Updated, Some(renamed_early)),
            (UserEventType::Updated, Some(renamed_late)),
            (UserEventType::Deleted, Some(deleted_late)),
            (UserEventType::Created, Some(created.id)),
        ]
    );
    Ok(())
}

per_backend!(
    snapshot_then_live_changes_with_concurrent_writers_have_no_gap_and_no_duplicate,
    a_snapshot_over_many_pages_is_consistent_while_users_change,
    since_revision_resumes_after_that_revision,
    a_filtered_watch_sees_users_enter_and_leave_its_filter,
    a_slow_watcher_is_cut_off_while_a_fast_one_gets_everything,
);
