//! grpc.health.v1 follows the database; server reflection (v1 and v1alpha) describes the API.

mod common;

use common::{Backend, TestResult, start_on};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_reports_serving_for_the_server_and_the_service(backend: Backend) -> TestResult {
    let server = start_on(backend).await;
    let _ = server.client().await; // waits until the server is up
    let mut health = HealthClient::new(server.endpoint().connect().await?);
    for service in ["", "user.UserService"] {
        let mut status = ServingStatus::Unknown as i32;
        for _ in 0..50 {
            status = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown =
        health.check(HealthCheckRequest { service: "nope.Service".into() }).await.expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Shutdown flips the status to NOT_SERVING for watchers of the health stream.
    let mut watch = health.watch(HealthCheckRequest { service: "user.UserService".into() }).await?.into_inner();
    assert_eq!(watch.next().await.ok_or("health stream")??.status, ServingStatus::Serving as i32);
    server.shutdown.cancel();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await?;
    // The server may also close the stream as it drains; what it must never do is keep saying SERVING.
    if let Some(Ok(response)) = next {
        assert_eq!(response.status, ServingStatus::NotServing as i32);
    }
    Ok(())
}

async fn reflection_v1_and_v1alpha_list_and_describe_the_service(backend: Backend) -> TestResult {
    use tonic_reflection::pb::v1;
    use tonic_reflection::pb::v1alpha;

    let server = start_on(backend).await;
    let _ = server.client().await;
    let channel = server.endpoint().connect().await?;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "user.UserService".into(),
            )),
        },
    ];
    let mut responses = client.server_reflection_info(futures::stream::iter(requests)).await?.into_inner();
    let listed = responses.next().await.ok_or("list response")??;
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = listed.message_response
    else {
        return Err("expected a service list".into());
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"user.UserService".to_string()), "{names:?}");
    let file = responses.next().await.ok_or("file response")??;
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) = file.message_response
    else {
        return Err("expected file descriptors".into());
    };
    let decoded: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost::Message::decode(bytes.as_slice()))
        .collect::<Result<_, _>>()?;
    let user_proto = decoded.iter().find(|f| f.name() == "user.proto").ok_or("user.proto is served")?;
    let methods: Vec<&str> = user_proto.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["GetUser", "ListUsers", "CreateUser", "UpdateUser", "DeleteUser", "WatchUsers", "BatchCreateUsers"]
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = alpha.server_reflection_info(futures::stream::iter(vec![request])).await?.into_inner();
    let listed = responses.next().await.ok_or("v1alpha list response")??;
    assert!(matches!(
        listed.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
    Ok(())
}

per_backend!(
    health_reports_serving_for_the_server_and_the_service,
    reflection_v1_and_v1alpha_list_and_describe_the_service,
);
