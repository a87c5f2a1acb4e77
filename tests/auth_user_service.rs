//! JWT authentication and the proto's access rules in the UserService, over real gRPC: calls without a valid
//! token are UNAUTHENTICATED; each rule of the policy holds; health and (by default) reflection stay open.

mod common;

use std::path::Path;

use common::jwt::{self, SigningKey};
use common::{TestResult, TestServer, create_request};
use portico::auth::{AuthConfig, KeySource};
use portico::proto::user::{
    DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User, UserStatus, WatchUsersRequest,
};
use tonic::Code;
use tonic::metadata::MetadataValue;

fn auth_config(jwks_file: &Path) -> AuthConfig {
    AuthConfig {
        issuer: Some(jwt::ISSUER.into()),
        audience: Some(jwt::AUDIENCE.into()),
        ..AuthConfig::new(KeySource::JwksFile(jwks_file.to_path_buf()))
    }
}

/// A UserService that trusts `key`, and the JWKS file it reads.
async fn secured(key: &SigningKey, protect_reflection: bool) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwt::jwks(&[key])).expect("write JWKS");
    let config = auth_config(&jwks_file);
    let server = common::start_with(common::Backend::Sqlite, move |c| {
        c.auth = Some(config);
        c.auth_reflection = protect_reflection;
    })
    .await;
    (server, dir)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(jwt::bearer(token)) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() -> TestResult {
    let key = SigningKey::es256("k1");
    let (server, _dir) = secured(&key, false).await;
    let mut client = server.client().await;

    let missing = client.list_users(ListUsersRequest::default()).await.expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");

    let stranger = SigningKey::es256("k1");
    let expired = jwt::with(jwt::claims("1", &["admin"]), &[("exp", (jwt::now() - 3600).into())]);
    for (name, token) in [
        ("garbage", "not-a-token".to_string()),
        ("signed by another key", stranger.sign(&jwt::claims("1", &["admin"]))),
        ("expired", key.sign(&expired)),
        ("wrong audience", key.sign(&jwt::with(jwt::claims("1", &["admin"]), &[("aud", "other".into())]))),
    ] {
        let status = client.list_users(with_token(ListUsersRequest::default(), &token)).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    // Streams too: refused before the first message.
    let admin = key.sign(&jwt::claims("1", &["admin"]));
    let watch = client.watch_users(WatchUsersRequest::default()).await.expect_err("watch without token");
    assert_eq!(watch.code(), Code::Unauthenticated);
    assert!(client.list_users(with_token(ListUsersRequest::default(), &admin)).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn health_stays_open_and_reflection_is_open_unless_protected() -> TestResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let key = SigningKey::es256("k1");
    for protect in [false, true] {
        let (server, _dir) = secured(&key, protect).await;
        let _ = server.client().await;
        let channel = server.endpoint().connect().await?;
        let mut health = HealthClient::new(channel.clone());
        assert!(health.check(HealthCheckRequest { service: String::new() }).await.is_ok(), "health, protect={protect}");

        let list = || {
            futures::stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }])
        };
        let mut reflection = ServerReflectionClient::new(channel);
        let anonymous = reflection.server_reflection_info(list()).await;
        if protect {
            assert_eq!(anonymous.map(|_| ()).map_err(|s| s.code()), Err(Code::Unauthenticated));
            let admin = key.sign(&jwt::claims("1", &[]));
            assert!(reflection.server_reflection_info(with_token(list(), &admin)).await.is_ok());
        } else {
            assert!(anonymous.is_ok());
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_policy_declared_in_the_proto_holds() -> TestResult {
    let key = SigningKey::eddsa("ed");
    let (server, _dir) = secured(&key, false).await;
    let mut client = server.client().await;
    let admin = key.sign(&jwt::claims("999", &["admin"]));
    let auditor = key.sign(&jwt::claims("998", &["auditor"]));

    let alice =
        client.create_user(with_token(create_request("Alice", "alice@example.com"), &admin)).await?.into_inner();
    let bob = client.create_user(with_token(create_request("Bob", "bob@example.com"), &admin)).await?.into_inner();
    let as_alice = key.sign(&jwt::claims(&alice.id.to_string(), &[]));

    // CreateUser, BatchCreateUsers and DeleteUser need admin.
    let denied =
        client.create_user(with_token(create_request("Eve", "eve@example.com"), &as_alice)).await.expect_err("create");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("admin"), "{denied:?}");
    let batch = client
        .batch_create_users(with_token(futures::stream::iter([create_request("Eve", "eve@example.com")]), &auditor))
        .await
        .expect_err("batch");
    assert_eq!(batch.code(), Code::PermissionDenied);
    let delete = client.delete_user(with_token(DeleteUserRequest { id: bob.id }, &auditor)).await.expect_err("delete");
    assert_eq!(delete.code(), Code::PermissionDenied);

    // ListUsers and WatchUsers need admin or auditor.
    assert!(client.list_users(with_token(ListUsersRequest::default(), &auditor)).await.is_ok());
    assert!(client.watch_users(with_token(WatchUsersRequest::default(), &auditor)).await.is_ok());
    let list = client.list_users(with_token(ListUsersRequest::default(), &as_alice)).await.expect_err("list");
    assert_eq!(list.code(), Code::PermissionDenied);
    assert!(list.message().contains("admin") && list.message().contains("auditor"), "{list:?}");
    let watch = client.watch_users(with_token(WatchUsersRequest::default(), &as_alice)).await.expect_err("watch");
    assert_eq!(watch.code(), Code::PermissionDenied);

    // GetUser on itself; another user is refused the same way whether it exists or not.
    assert!(client.get_user(with_token(GetUserRequest { id: alice.id }, &as_alice)).await.is_ok());
    let other = client.get_user(with_token(GetUserRequest { id: bob.id }, &as_alice)).await.expect_err("other");
    let missing = client.get_user(with_token(GetUserRequest { id: 424_242 }, &as_alice)).await.expect_err("missing");
    assert_eq!((other.code(), missing.code()), (Code::PermissionDenied, Code::PermissionDenied));
    assert_eq!(other.message(), missing.message(), "a denial must not tell whether the user exists");

    // UpdateUser on itself, but roles and status need admin.
    let rename =
        |user: User| UpdateUserRequest { user: Some(User { name: "Alice B".into(), ..user }), update_mask: None };
    let own = User { id: alice.id, ..User::default() };
    assert_eq!(client.update_user(with_token(rename(own.clone()), &as_alice)).await?.into_inner().name, "Alice B");
    let promote =
        UpdateUserRequest { user: Some(User { roles: vec!["admin".into()], ..own.clone() }), update_mask: None };
    let promoted = client.update_user(with_token(promote.clone(), &as_alice)).await.expect_err("own roles");
    assert_eq!(promoted.code(), Code::PermissionDenied);
    assert!(promoted.message().contains("roles"), "{promoted:?}");
    let suspend = UpdateUserRequest {
        user: Some(User { status: UserStatus::Active as i32, ..own.clone() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["status".into()] }),
    };
    assert_eq!(
        client.update_user(with_token(suspend, &as_alice)).await.expect_err("own status").code(),
        Code::PermissionDenied
    );
    let bob_update =
        UpdateUserRequest { user: Some(User { id: bob.id, name: "B".into(), ..User::default() }), update_mask: None };
    assert_eq!(
        client.update_user(with_token(bob_update, &as_alice)).await.expect_err("other").code(),
        Code::PermissionDenied
    );

    // Admin may do everything, roles included.
    assert_eq!(client.update_user(with_token(promote, &admin)).await?.into_inner().roles, ["admin"]);
    assert!(client.delete_user(with_token(DeleteUserRequest { id: bob.id }, &admin)).await.is_ok());
    Ok(())
}
