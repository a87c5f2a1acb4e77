//! `--reflection`: descriptors read from an upstream's gRPC server reflection.
//!
//! `grpc.reflection.v1` first; a server that does not implement it (UNIMPLEMENTED) is asked over
//! `grpc.reflection.v1alpha`, which older servers and Python's grpcio-reflection serve. The two versions have
//! the same messages on the wire, so one session type speaks both and only the method path differs.
//!
//! One session per load: list the services, fetch the file that defines each (servers send its imports
//! along, but need not), then ask by file name for every import still missing, until the set is complete.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};
use tonic_prost::ProstCodec;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use super::LoadError;
use super::fileset::FileSet;
use crate::upstream::tls::UpstreamTls;

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Services every reflecting server lists besides its API; their descriptors are not needed.
const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// What one server's reflection gave.
pub struct Reflected {
    /// The services the server lists (reflection itself left out).
    pub services: Vec<String>,
    /// `v1` or `v1alpha`.
    pub version: &'static str,
}

/// Reads every service of the server at `address` with its files (and their imports) into `files`.
///
/// # Errors
///
/// [`LoadError::Reflection`]: the server cannot be reached within `timeout`, serves neither reflection
/// version, answers with an error, or cannot provide an imported file.
pub async fn fetch(
    address: &Uri,
    timeout: Duration,
    tls: &UpstreamTls,
    files: &mut FileSet,
) -> Result<Reflected, LoadError> {
    let failed = |reason: String| LoadError::Reflection { endpoint: address.to_string(), reason };
    // An https:// upstream is read with the same CA and client certificate as its calls use.
    let endpoint = tls.apply(address, Endpoint::from(address.clone()));
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| failed(format!("cannot connect: {}", error_chain(&e))))?;
    let work = async {
        let (mut session, version) = match Session::open(channel.clone(), V1).await {
            Ok(session) => (session, "v1"),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                (Session::open(channel, V1ALPHA).await.map_err(|s| failed(status_text(&s)))?, "v1alpha")
            }
            Err(status) => return Err(failed(status_text(&status))),
        };
        let origin = format!("reflection of {address} ({version})");
        let services = session.list_services().await.map_err(&failed)?;
        for service in &services {
            for file in session.files(MessageRequest::FileContainingSymbol(service.clone())).await.map_err(&failed)? {
                files.add_file(file, &origin)?;
            }
        }
        // Imports the server did not send along with the files that use them.
        loop {
            let missing: Vec<String> = files.missing_imports();
            if missing.is_empty() {
                break;
            }
            for name in missing {
                let fetched = session
                    .files(MessageRequest::FileByFilename(name.clone()))
                    .await
                    .map_err(|reason| failed(format!("cannot fetch imported file {name}: {reason}")))?;
                for file in fetched {
                    files.add_file(file, &origin)?;
                }
                if !files.contains(&name) {
                    return Err(failed(format!("the server did not provide imported file {name}")));
                }
            }
        }
        Ok(Reflected { services, version })
    };
    tokio::time::timeout(timeout * 4, work)
        .await
        .map_err(|_| failed(format!("no complete answer within {:?}", timeout * 4)))?
}

/// One bidirectional ServerReflectionInfo stream: a request, then its response, in turn.
struct Session {
    requests: mpsc::Sender<ServerReflectionRequest>,
    responses: tonic::Streaming<ServerReflectionResponse>,
}

impl Session {
    async fn open(channel: tonic::transport::Channel, path: &'static str) -> Result<Self, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        let (requests, receiver) = mpsc::channel(4);
        // The first request goes out with the stream, so a server without this version answers UNIMPLEMENTED
        // right away instead of waiting for a message.
        requests
            .send(list_services_request())
            .await
            .map_err(|_| tonic::Status::internal("reflection request channel closed"))?;
        let codec = ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
        let response = grpc
            .streaming(tonic::Request::new(ReceiverStream::new(receiver)), PathAndQuery::from_static(path), codec)
            .await?;
        Ok(Self { requests, responses: response.into_inner() })
    }

    /// The answer to the ListServices request that opened the session.
    async fn list_services(&mut self) -> Result<Vec<String>, String> {
        match self.next().await? {
            MessageResponse::ListServicesResponse(list) => Ok(list
                .service
                .into_iter()
                .map(|service| service.name)
                .filter(|name| !REFLECTION_SERVICES.contains(&name.as_str()))
                .collect()),
            other => Err(format!("unexpected answer to ListServices: {other:?}")),
        }
    }

    async fn files(&mut self, request: MessageRequest) -> Result<Vec<Bytes>, String> {
        let message = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        self.requests.send(message).await.map_err(|_| "the server closed the reflection stream".to_string())?;
        match self.next().await? {
            MessageResponse::FileDescriptorResponse(files) => {
                Ok(files.file_descriptor_proto.into_iter().map(Bytes::from).collect())
            }
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    async fn next(&mut self) -> Result<MessageResponse, String> {
        match self.responses.next().await {
            Some(Ok(response)) => match response.message_response {
                Some(MessageResponse::ErrorResponse(error)) => {
                    Err(format!("{} (code {})", error.error_message, error.error_code))
                }
                Some(answer) => Ok(answer),
                None => Err("an empty reflection response".into()),
            },
            Some(Err(status)) => Err(status_text(&status)),
            None => Err("the server ended the reflection stream".into()),
        }
    }
}

fn list_services_request() -> ServerReflectionRequest {
    ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
