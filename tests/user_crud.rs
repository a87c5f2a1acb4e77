//! Create, get, update and delete over a real socket, with every error path's code and details.

mod common;

use common::{Backend, TestResult, create, create_request, start_on, violations};
use portico::proto::user::{CreateUserRequest, DeleteUserRequest, GetUserRequest, UpdateUserRequest, User, UserStatus};
use tonic::Code;

async fn create_then_get_returns_the_stored_user_without_the_password(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let request = CreateUserRequest {
        roles: vec!["admin".into(), "ops".into()],
        ..create_request("Ada Lovelace", "Ada@Example.com")
    };
    let created = client.create_user(request).await?.into_inner();
    assert!(created.id > 0);
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.email, "Ada@Example.com", "the email is stored as given");
    assert_eq!(created.roles, ["admin", "ops"]);
    assert_eq!(created.status, UserStatus::Active as i32);
    let created_at = created.created_at.ok_or("created_at is set")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    assert!((now - created_at.seconds).abs() < 60, "created_at {created_at:?} is now");

    let fetched = client.get_user(GetUserRequest { id: created.id }).await?.into_inner().user;
    assert_eq!(fetched.as_ref(), Some(&created));
    let second = create(&mut client, "Grace", "grace@example.com").await;
    assert!(second.id > created.id, "ids increase");
    Ok(())
}

async fn create_rejects_invalid_input_with_field_violations(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let cases: Vec<(CreateUserRequest, &[&str])> = vec![
        (CreateUserRequest { name: String::new(), ..create_request("", "a@example.com") }, &["name"]),
        (create_request(&"x".repeat(201), "a@example.com"), &["name"]),
        (create_request("Ada", ""), &["email"]),
        (create_request("Ada", "not-an-email"), &["email"]),
        (create_request("Ada", "ada@localhost"), &["email"]),
        (CreateUserRequest { password: "xyzzy12".into(), ..create_request("Ada", "a@example.com") }, &["password"]),
        (CreateUserRequest { password: String::new(), ..create_request("Ada", "a@example.com") }, &["password"]),
        (CreateUserRequest { roles: vec!["bad role".into()], ..create_request("Ada", "a@example.com") }, &["roles"]),
        (
            CreateUserRequest { name: String::new(), email: "x".into(), password: "1".into(), roles: vec![] },
            &["name", "email", "password"],
        ),
    ];
    for (request, fields) in cases {
        let status = client.create_user(request.clone()).await.expect_err("invalid request must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let got: Vec<String> = violations(&status).into_iter().map(|(field, _)| field).collect();
        assert_eq!(got, fields, "{request:?}");
        if request.password == "xyzzy12" {
            assert!(!format!("{status:?}").contains("xyzzy12"), "the password is never echoed: {status:?}");
        }
    }
    // Nothing invalid was stored.
    let list = client.list_users(portico::proto::user::ListUsersRequest::default()).await?.into_inner();
    assert_eq!(list.total_count, 0);
    Ok(())
}

async fn emails_are_unique_regardless_of_case_on_create_and_update(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    let status = client.create_user(create_request("Other Ada", "ADA@example.COM")).await.expect_err("clash");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(violations(&status).first().map(|v| v.0.as_str()), Some("user.email"));

    let grace = create(&mut client, "Grace", "grace@example.com").await;
    let update = UpdateUserRequest {
        user: Some(User { id: grace.id, email: "Ada@Example.com".into(), ..Default::default() }),
        update_mask: None,
    };
    let status = client.update_user(update).await.expect_err("clash on update");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let unchanged = client.get_user(GetUserRequest { id: grace.id }).await?.into_inner().user;
    assert_eq!(unchanged.map(|u| u.email), Some("grace@example.com".to_string()));

    // A user may change the case of their own email.
    let update = UpdateUserRequest {
        user: Some(User { id: ada.id, email: "ADA@example.com".into(), ..Default::default() }),
        update_mask: None,
    };
    assert_eq!(client.update_user(update).await?.into_inner().email, "ADA@example.com");
    Ok(())
}

async fn ids_must_be_positive_and_exist(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    for id in [0, -1, i64::MIN] {
        let status = client.get_user(GetUserRequest { id }).await.expect_err("bad id");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violations(&status).first().map(|v| v.0.as_str()), Some("id"));
        let status = client.delete_user(DeleteUserRequest { id }).await.expect_err("bad id");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = client.get_user(GetUserRequest { id: 4242 }).await.expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("4242"), "{}", status.message());
    let status = client.delete_user(DeleteUserRequest { id: 4242 }).await.expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    let update =
        UpdateUserRequest { user: Some(User { id: 4242, name: "X".into(), ..Default::default() }), update_mask: None };
    assert_eq!(client.update_user(update).await.expect_err("unknown id").code(), Code::NotFound);
    Ok(())
}

async fn update_changes_only_masked_or_populated_fields(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let request = CreateUserRequest { roles: vec!["admin".into()], ..create_request("Ada", "ada@example.com") };
    let ada = client.create_user(request).await?.into_inner();

    // No mask: the populated fields change, the rest stays.
    let update = UpdateUserRequest {
        user: Some(User { id: ada.id, name: "Ada L.".into(), ..Default::default() }),
        update_mask: None,
    };
    let updated = client.update_user(update).await?.into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.email.as_str(), updated.roles.as_slice()),
        ("Ada L.", "ada@example.com", &["admin".to_string()][..])
    );
    assert_eq!(updated.created_at, ada.created_at);

    // A mask: exactly the named fields change, even to empty (roles cleared); unmasked values are ignored.
    let update = UpdateUserRequest {
        user: Some(User {
            id: ada.id,
            name: "Ignored".into(),
            roles: vec![],
            status: UserStatus::Suspended as i32,
            ..Default::default()
        }),
        update_mask: Some(pbjson_types::FieldMask {
            paths: vec!["roles".into(), "status".into(), "created_at".into()],
        }),
    };
    let updated = client.update_user(update).await?.into_inner();
    assert_eq!(updated.name, "Ada L.");
    assert!(updated.roles.is_empty());
    assert_eq!(updated.status, UserStatus::Suspended as i32);
    assert_eq!(updated.created_at, ada.created_at, "created_at is output-only");
    let stored = client.get_user(GetUserRequest { id: ada.id }).await?.into_inner().user.ok_or("user")?;
    assert_eq!(stored, updated);

    // An unknown mask path is INVALID_ARGUMENT and changes nothing.
    let update = UpdateUserRequest {
        user: Some(User { id: ada.id, name: "Nope".into(), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["name".into(), "password".into()] }),
    };
    let status = client.update_user(update).await.expect_err("unknown path");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("\"password\""), "{}", status.message());
    assert_eq!(violations(&status).first().map(|v| v.0.as_str()), Some("update_mask"));
    let stored = client.get_user(GetUserRequest { id: ada.id }).await?.into_inner().user.ok_or("user")?;
    assert_eq!(stored.name, "Ada L.");

    // Invalid new values are rejected with the field named.
    let update = UpdateUserRequest {
        user: Some(User { id: ada.id, email: "broken".into(), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["email".into()] }),
    };
    let status = client.update_user(update).await.expect_err("bad email");
    assert_eq!(violations(&status).first().map(|v| v.0.as_str()), Some("user.email"));
    let status = client.update_user(UpdateUserRequest::default()).await.expect_err("no user");
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

async fn delete_removes_the_user_and_its_id_is_never_reused(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    client.delete_user(DeleteUserRequest { id: ada.id }).await?;
    assert_eq!(client.get_user(GetUserRequest { id: ada.id }).await.expect_err("deleted").code(), Code::NotFound);
    assert_eq!(client.delete_user(DeleteUserRequest { id: ada.id }).await.expect_err("twice").code(), Code::NotFound);
    // The email is free again, and the new user gets a new id.
    let again = create(&mut client, "Ada", "ada@example.com").await;
    assert!(again.id > ada.id);
    Ok(())
}

#[tokio::test]
async fn an_in_memory_database_works_too() -> TestResult {
    let server = common::start_with(Backend::Sqlite, |config| config.database_url = "sqlite::memory:".into()).await;
    let mut client = server.client().await;
    let ada = create(&mut client, "Ada", "ada@example.com").await;
    let fetched = client.get_user(GetUserRequest { id: ada.id }).await?.into_inner().user;
    assert_eq!(fetched, Some(ada));
    Ok(())
}

async fn passwords_are_stored_only_as_argon2id_hashes(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let mut client = server.client().await;
    let request =
        CreateUserRequest { password: "Plaintext-Canary-42".into(), ..create_request("Ada", "ada@example.com") };
    client.create_user(request).await?;

    let hashes = server.storage.password_hashes().await?;
    assert_eq!(hashes.len(), 1);
    assert!(hashes.iter().all(|hash| hash.starts_with("$argon2id$v=19$")), "{hashes:?}");
    let dump = server.storage.user_rows_as_text().await?;
    assert!(dump.iter().all(|row| !row.contains("Plaintext-Canary-42")));
    Ok(())
}

per_backend!(
    create_then_get_returns_the_stored_user_without_the_password,
    create_rejects_invalid_input_with_field_violations,
    emails_are_unique_regardless_of_case_on_create_and_update,
    ids_must_be_positive_and_exist,
    update_changes_only_masked_or_populated_fields,
    delete_removes_the_user_and_its_id_is_never_reused,
    passwords_are_stored_only_as_argon2id_hashes,
);
