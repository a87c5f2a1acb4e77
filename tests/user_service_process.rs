//! The `portico user-service` process: flags, one log line per call, never a password in the logs, SIGTERM
//! drain (watches end cleanly), and data that survives a restart on the same database file.

mod common;

use std::time::Duration;

use common::process::{FAST_FLAGS, Process};
use common::{Backend, TestStorage};

use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User, UserEventType,
    WatchUsersRequest,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn user_service(db: &str, log_level: &str) -> Result<Process, Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<&str> =
        ["user-service", "--listen", "127.0.0.1:0", "--db", db].into_iter().chain(FAST_FLAGS).collect();
    Process::start(&args, log_level)
}

async fn connect(process: &Process) -> Result<UserServiceClient<Channel>, Box<dyn std::error::Error + Send + Sync>> {
    let addr = process.address("user service listening").await?;
    Ok(UserServiceClient::new(Channel::from_shared(format!("http://{addr}"))?.connect().await?))
}

async fn data_survives_a_restart_and_sigterm_ends_watches_cleanly(backend: Backend) -> TestResult {
    let storage = TestStorage::create(backend).await;
    let db = storage.url();

    let mut first = user_service(&db, "info")?;
    let mut client = connect(&first).await?;
    let request = CreateUserRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        password: "password-1".into(),
        roles: vec!["admin".into()],
    };
    let ada = client.create_user(request).await?.into_inner();
    let grace = client
        .create_user(CreateUserRequest {
            name: "Grace".into(),
            email: "grace@example.com".into(),
            password: "password-2".into(),
            roles: vec![],
        })
        .await?
        .into_inner();
    let renamed = UpdateUserRequest {
        user: Some(User { id: ada.id, name: "Ada L.".into(), ..Default::default() }),
        update_mask: None,
    };
    let ada = client.update_user(renamed).await?.into_inner();
    client.delete_user(DeleteUserRequest { id: grace.id }).await?;

    let mut watch = client.watch_users(WatchUsersRequest::default()).await?.into_inner();
    let mut revision = 0;
    while let Some(event) = watch.next().await {
        let event = event?;
        if event.r#type == UserEventType::SnapshotComplete as i32 {
            revision = event.revision;
            break;
        }
    }
    assert!(revision >= 4, "four changes were committed, revision {revision}");

    // SIGTERM: the open watch ends with UNAVAILABLE telling where to resume, and the process exits promptly.
    first.terminate()?;
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next()).await?;
    let status = match end {
        Some(Err(status)) => status,
        other => return Err(format!("expected the watch to end with a status, got {other:?}").into()),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&format!("since_revision={revision}")), "{}", status.message());
    let exit = first.wait(Duration::from_secs(3)).await.map_err(|e| format!("{e}: {:#?}", first.logs()))?;
    assert!(exit.success(), "clean exit after draining: {exit:?}");
    assert!(first.logs().iter().any(|line| line.contains("SIGTERM received")));

    // Same file, new process: the data, the ids and the change log are all still there.
    let second = user_service(&db, "info")?;
    let mut client = connect(&second).await?;
    let stored = client.get_user(GetUserRequest { id: ada.id }).await?.into_inner().user;
    assert_eq!(stored.as_ref(), Some(&ada));
    let missing = client.get_user(GetUserRequest { id: grace.id }).await.expect_err("deleted before restart");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(client.list_users(ListUsersRequest::default()).await?.into_inner().total_count, 1);
    let next = client
        .create_user(CreateUserRequest {
            name: "Alan".into(),
            email: "alan@example.com".into(),
            password: "password-3".into(),
            roles: vec![],
        })
        .await?
        .into_inner();
    assert!(next.id > grace.id, "ids are not reused after a restart");
    let mut resumed =
        client.watch_users(WatchUsersRequest { filter: String::new(), since_revision: revision }).await?.into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await?.ok_or("event")??;
    assert_eq!(
        (event.r#type, event.revision),
        (UserEventType::Created as i32, revision + 1),
        "revisions continue across restarts"
    );
    Ok(())
}

async fn every_call_is_logged_once_and_passwords_never_are(backend: Backend) -> TestResult {
    const PASSWORD: &str = "Zebra-Quartz-9931";
    const SHORT_PASSWORD: &str = "Qz7-kw";
    const BATCH_PASSWORD: &str = "Batch-Walrus-5512";
    let storage = TestStorage::create(backend).await;
    // The most verbose level, for every crate: if a password were in any log line, it would be here.
    let process = user_service(&storage.url(), "trace")?;
    let mut client = connect(&process).await?;

    let created = client
        .create_user(CreateUserRequest {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            roles: vec![],
        })
        .await?
        .into_inner();
    let rejected = client
        .create_user(CreateUserRequest {
            name: "Bob".into(),
            email: "bob@example.com".into(),
            password: SHORT_PASSWORD.into(),
            roles: vec![],
        })
        .await
        .expect_err("short password");
    assert!(!format!("{rejected:?}").contains(SHORT_PASSWORD), "the error does not echo the password");
    let batch = vec![CreateUserRequest {
        name: "Cy".into(),
        email: "cy@example.com".into(),
        password: BATCH_PASSWORD.into(),
        roles: vec![],
    }];
    client.batch_create_users(futures::stream::iter(batch)).await?;
    client.get_user(GetUserRequest { id: created.id }).await?;
    let response = client.get_user(GetUserRequest { id: 999_999 }).await.expect_err("not found");
    assert_eq!(response.code(), tonic::Code::NotFound);
    // A watch the client abandons ends on the server too, logged as CANCELLED.
    let mut watch = client.watch_users(WatchUsersRequest::default()).await?.into_inner();
    watch.next().await.ok_or("first event")??;
    drop(watch);
    let cancelled = |logs: &[String]| {
        logs.iter()
            .any(|line| line.contains("rpc=/user.UserService/WatchUsers ") && line.contains("code=\"CANCELLED\""))
    };
    for _ in 0..100 {
        if cancelled(&process.logs()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cancelled(&process.logs()), "the abandoned watch was ended and logged");

    let logs = process.logs();
    assert!(logs.len() > 20, "trace logging is on ({} lines)", logs.len());
    for secret in [PASSWORD, SHORT_PASSWORD, BATCH_PASSWORD] {
        let leaks: Vec<&String> = logs.iter().filter(|line| line.contains(secret)).collect();
        assert!(leaks.is_empty(), "password {secret:?} leaked into the logs: {leaks:?}");
    }
    let call_lines = |rpc: &str, code: &str| {
        logs.iter()
            .filter(|line| {
                line.contains("grpc call")
                    && line.contains(&format!("rpc=/user.UserService/{rpc} "))
                    && line.contains(&format!("code=\"{code}\""))
            })
            .count()
    };
    assert_eq!(call_lines("CreateUser", "OK"), 1, "{logs:#?}");
    assert_eq!(call_lines("CreateUser", "INVALID_ARGUMENT"), 1);
    assert_eq!(call_lines("BatchCreateUsers", "OK"), 1);
    assert_eq!(call_lines("GetUser", "OK"), 1);
    assert_eq!(call_lines("GetUser", "NOT_FOUND"), 1);
    assert!(logs.iter().any(|line| line.contains("grpc call") && line.contains("duration_ms=")));
    Ok(())
}

/// Replicas sharing one database are often started together: the first start's migrations must not race.
async fn replicas_started_together_on_a_new_database_all_come_up(backend: Backend) -> TestResult {
    for _ in 0..5 {
        let storage = TestStorage::create(backend).await;
        let config = common::test_config(storage.url());
        let mut servers = Vec::new();
        for _ in 0..3 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (config, shutdown) = (config.clone(), tokio_util::sync::CancellationToken::new());
            let token = shutdown.clone();
            let handle = tokio::spawn(async move { portico::user_service::serve(&config, listener, token).await });
            servers.push((addr, shutdown, handle));
        }
        for index in 0..servers.len() {
            let addr = servers[index].0;
            let mut client = None;
            for _ in 0..100 {
                if servers[index].2.is_finished() {
                    break;
                }
                if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await
                {
                    client = Some(UserServiceClient::new(channel));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let request = portico::proto::user::ListUsersRequest { page_size: 1, ..Default::default() };
            let listed = match client {
                Some(mut client) => client.list_users(request).await.map(drop).map_err(|e| e.to_string()),
                None => Err("no connection".to_string()),
            };
            if let Err(error) = listed {
                // The server's own error says why (it is what a failed start logs).
                let (.., handle) = servers.swap_remove(index);
                let server = if handle.is_finished() {
                    format!("its server ended with {:?}", handle.await?)
                } else {
                    "its server is still running".to_string()
                };
                return Err(format!("the replica on {addr} is not serving ({error}); {server}").into());
            }
        }
        for (_, shutdown, handle) in servers {
            shutdown.cancel();
            handle.await??;
        }
    }
    Ok(())
}

// One runtime flavour for all: the replicas test needs two threads, and the others do not mind.
per_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    data_survives_a_restart_and_sigterm_ends_watches_cleanly,
    every_call_is_logged_once_and_passwords_never_are,
    replicas_started_together_on_a_new_database_all_come_up,
);
