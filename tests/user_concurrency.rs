//! Hundreds of concurrent creates, updates and deletes: nothing lost, no duplicate ids or emails.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, TestResult, create_request, start_on};
use portico::proto::user::{DeleteUserRequest, ListUsersRequest, UpdateUserRequest, User};
use tonic::Code;

async fn concurrent_writers_lose_nothing_and_never_duplicate(backend: Backend) -> TestResult {
    const TASKS: usize = 300;
    let server = start_on(backend).await;
    let mut client = server.client().await;

    // Every task creates its own user, and also races all others for a few shared emails.
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let own = client
                .create_user(create_request(&format!("T{task}"), &format!("t{task}@example.com")))
                .await?
                .into_inner();
            let contested =
                client.create_user(create_request("Racer", &format!("RACE{}@example.com", task % 10))).await;
            let contested = match contested {
                Ok(user) => Some(user.into_inner()),
                Err(status) if status.code() == Code::AlreadyExists => None,
                Err(status) => return Err(status),
            };
            let rename = UpdateUserRequest {
                user: Some(User { id: own.id, name: format!("T{task} renamed"), ..Default::default() }),
                update_mask: None,
            };
            client.update_user(rename).await?;
            if task % 4 == 0 {
                client.delete_user(DeleteUserRequest { id: own.id }).await?;
            }
            Ok::<_, tonic::Status>((task, own.id, contested))
        }));
    }
    let mut expected: BTreeMap<i64, String> = BTreeMap::new();
    let mut winners = 0;
    let mut ids = BTreeSet::new();
    for task in tasks {
        let (index, id, contested) = task.await??;
        assert!(ids.insert(id), "id {id} handed out twice");
        if index % 4 != 0 {
            expected.insert(id, format!("T{index} renamed"));
        }
        if let Some(user) = contested {
            assert!(ids.insert(user.id), "id {} handed out twice", user.id);
            expected.insert(user.id, "Racer".into());
            winners += 1;
        }
    }
    assert_eq!(winners, 10, "each contested email is won exactly once");

    let listed = client.list_users(ListUsersRequest { page_size: 1000, ..Default::default() }).await?.into_inner();
    let actual: BTreeMap<i64, String> = listed.users.iter().map(|u| (u.id, u.name.clone())).collect();
    assert_eq!(actual, expected, "the database holds exactly the surviving writes");
    let emails: BTreeSet<String> = listed.users.iter().map(|u| u.email.to_lowercase()).collect();
    assert_eq!(emails.len(), listed.users.len(), "no duplicate emails");
    Ok(())
}

per_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    concurrent_writers_lose_nothing_and_never_duplicate,
);
