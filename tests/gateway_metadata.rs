//! Headers ⇄ metadata end to end, against a fake UserService that records what reaches it: the allow-list,
//! `Grpc-Metadata-*` stripping, X-Forwarded-*, the request id, the deadline as `grpc-timeout`, and upstream
//! response metadata coming back as `Grpc-Metadata-*` headers.

mod common;

use std::sync::{Arc, Mutex};

use common::TestResult;
use common::rest::send;
use http::Method;
use portico::proto::user::user_service_server::{UserService, UserServiceServer};
use portico::proto::user::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Answers GetUser and remembers the metadata of the last call; everything else is UNIMPLEMENTED.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Option<MetadataMap>>>,
}

#[tonic::async_trait]
impl UserService for Recorder {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(request.metadata().clone());
        }
        let user = User { id: request.get_ref().id, name: "Recorded".into(), ..Default::default() };
        let mut response = Response::new(GetUserResponse { user: Some(user) });
        response.metadata_mut().insert("x-served-by", "recorder".parse().map_err(|_| Status::internal("metadata"))?);
        Ok(response)
    }
    async fn list_users(&self, _: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
    async fn create_user(&self, _: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
    async fn update_user(&self, _: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
    async fn delete_user(&self, _: Request<DeleteUserRequest>) -> Result<Response<pbjson_types::Empty>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
    type WatchUsersStream = ReceiverStream<Result<UserEvent, Status>>;
    async fn watch_users(&self, _: Request<WatchUsersRequest>) -> Result<Response<Self::WatchUsersStream>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
    async fn batch_create_users(
        &self,
        _: Request<Streaming<CreateUserRequest>>,
    ) -> Result<Response<BatchCreateUsersResponse>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
}

#[tokio::test]
async fn headers_cross_as_metadata_and_back() -> TestResult {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let service = UserServiceServer::new(recorder.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let config =
        portico::gateway::GatewayConfig { upstreams: vec![format!("http://{upstream}")], ..Default::default() };
    let (gateway, shutdown) = common::spawn_gateway(config).await;

    let headers = [
        ("authorization", "Bearer token-1"),
        ("x-request-id", "req-42"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("grpc-metadata-tenant", "acme"),
        ("grpc-metadata-grpc-status", "13"),
        ("cookie", "session=secret"),
        ("x-forwarded-for", "203.0.113.7"),
        ("grpc-timeout", "5S"),
    ];
    let reply = send(gateway, Method::GET, "/v1/users/7", &headers, "").await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["name"], "Recorded");
    assert_eq!(reply.header("grpc-metadata-x-served-by"), Some("recorder"), "response metadata comes back");

    let seen = recorder.seen.lock().map_err(|_| "lock")?.clone().ok_or("the upstream was called")?;
    let get = |key: &str| seen.get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(get("authorization").as_deref(), Some("Bearer token-1"));
    assert_eq!(get("x-request-id").as_deref(), Some("req-42"));
    assert!(get("traceparent").is_some());
    assert_eq!(get("tenant").as_deref(), Some("acme"), "Grpc-Metadata- prefix stripped");
    assert_eq!(get("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(get("x-forwarded-host").as_deref(), Some(gateway.to_string().as_str()));
    assert!(get("cookie").is_none(), "not on the allow-list");
    assert!(get("grpc-status").is_none(), "reserved keys never cross");
    // The deadline went upstream as grpc-timeout: at most the client's 5 s (minus time already spent).
    let timeout = get("grpc-timeout").ok_or("grpc-timeout sent upstream")?;
    let (digits, unit) = timeout.split_at(timeout.len() - 1);
    let value: u64 = digits.parse()?;
    let micros = match unit {
        "H" => value * 3_600_000_000,
        "M" => value * 60_000_000,
        "S" => value * 1_000_000,
        "m" => value * 1_000,
        "u" => value,
        "n" => value / 1_000,
        other => return Err(format!("unit {other}").into()),
    };
    assert!(micros > 4_000_000 && micros <= 5_000_000, "grpc-timeout {timeout}");
    shutdown.cancel();
    Ok(())
}
