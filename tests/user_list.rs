//! ListUsers: page sizes, cursor tokens, filters and total_count, also while other clients write.

mod common;

use std::collections::BTreeSet;

use common::{Backend, Client, TestResult, create, create_request, start_on, violations};
use portico::proto::user::{
    CreateUserRequest, DeleteUserRequest, ListUsersRequest, ListUsersResponse, UpdateUserRequest, User, UserStatus,
};
use tonic::Code;

async fn list(
    client: &mut Client,
    page_size: i32,
    page_token: &str,
    filter: &str,
) -> Result<ListUsersResponse, tonic::Status> {
    let request = ListUsersRequest { page_size, page_token: page_token.into(), filter: filter.into() };
    client.list_users(request).await.map(tonic::Response::into_inner)
}

/// Every page of a listing, following next_page_token.
async fn list_all(client: &mut Client, page_size: i32, filter: &str) -> Result<Vec<User>, tonic::Status> {
    let mut users = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(client, page_size, &token, filter).await?;
        users.extend(page.users);
        if page.next_page_token.is_empty() {
            return Ok(users);
        }
        token = page.next_page_token;
    }
}

async fn pages_follow_id_order_with_defaults_and_clamping(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let requests: Vec<_> =
        (0..1_105).map(|i| create_request(&format!("User {i}"), &format!("user{i}@example.com"))).collect();
    for chunk in requests.chunks(1000) {
        client.batch_create_users(futures::stream::iter(chunk.to_vec())).await?;
    }

    let first = list(&mut client, 0, "", "").await?;
    assert_eq!(first.users.len(), 50, "default page size");
    assert_eq!(first.total_count, 1_105);
    assert!(!first.next_page_token.is_empty());
    assert!(first.users.windows(2).all(|w| w[0].id < w[1].id), "ascending ids");

    let clamped = list(&mut client, 5_000, "", "").await?;
    assert_eq!(clamped.users.len(), 1000, "page_size is clamped to 1000");

    let all = list_all(&mut client, 300, "").await?;
    assert_eq!(all.len(), 1_105);
    let ids: BTreeSet<i64> = all.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), 1_105, "no duplicates across pages");

    let last = list(&mut client, 1_105, "", "").await?;
    assert_eq!(last.users.len(), 1000);
    let exact = list(&mut client, 5, "", "name = \"User 3\"").await?;
    assert_eq!(
        (exact.users.len(), exact.next_page_token.as_str(), exact.total_count),
        (1, "", 1),
        "the last page has no token"
    );
    Ok(())
}

async fn bad_page_arguments_are_invalid_argument(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        create(&mut client, "A", &format!("a{}@example.com", rand_suffix())).await;
    }
    let status = list(&mut client, -1, "", "").await.expect_err("negative page size");
    assert_eq!((status.code(), violations(&status)[0].0.as_str()), (Code::InvalidArgument, "page_size"));

    for token in ["garbage", "MTIz", "%%%"] {
        let status = list(&mut client, 1, token, "").await.expect_err("bad token");
        assert_eq!(
            (status.code(), violations(&status)[0].0.as_str()),
            (Code::InvalidArgument, "page_token"),
            "{token}"
        );
    }
    let page = list(&mut client, 1, "", "").await?;
    let status = list(&mut client, 1, &page.next_page_token, "name:a").await.expect_err("token for another filter");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("different filter"), "{}", status.message());
    Ok(())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

async fn filters_select_users_and_count_them(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let people = [
        ("Ada Lovelace", "ada@example.com", vec!["admin", "math"]),
        ("Grace Hopper", "grace@navy.example", vec!["admin"]),
        ("Alan Turing", "alan@example.com", vec!["math"]),
        ("Ådne Ås", "adne@example.no", vec![]),
    ];
    let mut ids = Vec::new();
    for (name, email, roles) in people {
        let request =
            CreateUserRequest { roles: roles.into_iter().map(String::from).collect(), ..create_request(name, email) };
        ids.push(client.create_user(request).await?.into_inner().id);
    }
    let suspend = UpdateUserRequest {
        user: Some(User { id: ids[1], status: UserStatus::Suspended as i32, ..Default::default() }),
        update_mask: None,
    };
    client.update_user(suspend).await?;

    let cases: &[(&str, &[usize])] = &[
        ("", &[0, 1, 2, 3]),
        ("roles:admin", &[0, 1]),
        ("status = USER_STATUS_ACTIVE AND roles:admin", &[0]),
        ("status != ACTIVE", &[1]),
        ("email = GRACE@NAVY.EXAMPLE", &[1]),
        ("email:example.com", &[0, 2]),
        ("email != ada@example.com AND roles:math", &[2]),
        ("name:lOvE", &[0]),
        ("name = \"Alan Turing\"", &[2]),
        ("name = \"alan turing\"", &[]),
        ("name:\"åd\"", &[3]),
        ("roles:nobody", &[]),
    ];
    for (filter, expected) in cases {
        let page = list(&mut client, 2, "", filter).await?;
        assert_eq!(page.total_count as usize, expected.len(), "total_count for {filter:?}");
        let got: Vec<i64> = list_all(&mut client, 1, filter).await?.iter().map(|u| u.id).collect();
        let want: Vec<i64> = expected.iter().map(|i| ids[*i]).collect();
        assert_eq!(got, want, "filter {filter:?}");
    }

    for bad in [
        "nme = x",
        "status : ACTIVE",
        "roles = admin",
        "name = \"open",
        "roles:admin OR roles:x",
        "status = BOGUS",
        "name =",
    ] {
        let status = list(&mut client, 1, "", bad).await.expect_err("bad filter");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violations(&status)[0].0, "filter");
        assert!(status.message().contains("position"), "points at the problem: {}", status.message());
    }
    Ok(())
}

async fn paging_stays_correct_while_users_are_inserted_and_deleted(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let requests: Vec<_> = (0..400).map(|i| create_request("Stable", &format!("stable{i}@example.com"))).collect();
    let stable: BTreeSet<i64> = client
        .batch_create_users(futures::stream::iter(requests))
        .await?
        .into_inner()
        .users
        .iter()
        .map(|u| u.id)
        .collect();
    // Users that will be deleted while the listing runs, interleaved with the stable ones' ids.
    let mut doomed = Vec::new();
    for i in 0..100 {
        doomed.push(create(&mut client, "Doomed", &format!("doomed{i}@example.com")).await.id);
    }

    let mut writer = server.client().await;
    let churn = tokio::spawn(async move {
        for (i, id) in doomed.into_iter().enumerate() {
            writer.delete_user(DeleteUserRequest { id }).await.expect("delete");
            writer.create_user(create_request("New", &format!("new{i}@example.com"))).await.expect("create");
        }
    });

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut client, 7, &token, "name = Stable").await?;
        seen.extend(page.users.iter().map(|u| u.id));
        tokio::task::yield_now().await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    churn.await?;
    let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "no user twice");
    assert_eq!(seen_set, stable, "every stable user exactly once, whatever happened between pages");

    // Unfiltered paging during churn: never a duplicate, ascending ids.
    let all = list_all(&mut client, 13, "").await?;
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    Ok(())
}

/// ListUsers filters in SQL, WatchUsers in memory: both must select the same users.
async fn sql_and_in_memory_filtering_agree(backend: Backend) -> TestResult {
    use portico::user_service::filter::Filter;
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let names = ["Ada", "ada", "ÅDA Ås", "Grace Hopper", "Ünïcode Üser", "Percent % Under_score"];
    let roles = [vec![], vec!["admin"], vec!["admin", "ops"], vec!["ops"]];
    for (i, name) in names.iter().enumerate() {
        let request = CreateUserRequest {
            roles: roles[i % roles.len()].iter().map(|r| r.to_string()).collect(),
            ..create_request(name, &format!("{}.{i}@Example{}.com", name.split(' ').next().unwrap_or("x"), i % 2))
        };
        let user = client.create_user(request).await?.into_inner();
        if i % 3 == 0 {
            let suspend = UpdateUserRequest {
                user: Some(User { id: user.id, status: UserStatus::Suspended as i32, ..Default::default() }),
                update_mask: None,
            };
            client.update_user(suspend).await?;
        }
    }
    let everyone = list_all(&mut client, 100, "").await?;
    let filters = [
        "name = Ada",
        "name = ada",
        "name != Ada",
        "name:ada",
        "name:\"å\"",
        "name:%",
        "name:_",
        "name:\"ü\"",
        "email = ADA.0@example0.com",
        "email:EXAMPLE1",
        "email != ada.1@example1.com",
        "roles:admin",
        "roles:ops",
        "roles:adm",
        "status = SUSPENDED",
        "status != ACTIVE",
        "roles:admin AND status = ACTIVE",
        "name:a AND email:1",
    ];
    for filter in filters {
        let parsed = Filter::parse(filter)?;
        let in_memory: Vec<i64> = everyone.iter().filter(|u| parsed.matches(u)).map(|u| u.id).collect();
        let in_sql: Vec<i64> = list_all(&mut client, 3, filter).await?.iter().map(|u| u.id).collect();
        assert_eq!(in_sql, in_memory, "filter {filter:?}");
    }
    Ok(())
}

per_backend!(
    pages_follow_id_order_with_defaults_and_clamping,
    bad_page_arguments_are_invalid_argument,
    filters_select_users_and_count_them,
    paging_stays_correct_while_users_are_inserted_and_deleted,
    sql_and_in_memory_filtering_agree,
);
