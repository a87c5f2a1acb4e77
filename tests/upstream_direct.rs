//! Unary calls straight over HTTP/2 (`upstream/direct.rs`), against a real HTTP/2 server on a real socket that
//! answers each path in its own way: well, or in one of the ways gRPC servers and the proxies in front of them
//! go wrong. Each answer must become the status gRPC's spec gives it, and failures must keep the cause the retry
//! loop reads ("was anything sent?").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use portico::proto::DESCRIPTOR_POOL;
use portico::upstream::call::{Classified, classify};
use portico::upstream::direct::{DirectConnection, DirectSettings};
use portico::upstream::retry::Failure;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::metadata::MetadataMap;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn user_descriptor() -> Result<MessageDescriptor, String> {
    DESCRIPTOR_POOL.get_message_by_name("user.User").ok_or_else(|| "user.User is in the pool".to_string())
}

/// A user message of `name_len` name characters, length-prefixed as gRPC sends it.
fn framed_user(id: i64, name_len: usize) -> Bytes {
    let user = portico::proto::user::User { id, name: "n".repeat(name_len), ..Default::default() };
    let encoded = user.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    frame.put_slice(&encoded);
    frame.freeze()
}

fn grpc_headers(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn trailers(code: i32, extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    for (name, value) in extra {
        trailers.append(*name, HeaderValue::from_static(value));
    }
    trailers
}

/// Answers one stream according to its path.
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    // The whole request, as a server reads it before answering.
    let mut received = 0;
    while let Some(data) = body.data().await {
        let data = data?;
        received += data.len();
        let _ = body.flow_control().release_capacity(data.len());
    }
    match path.as_str() {
        "/ok" => {
            let mut headers = grpc_headers(StatusCode::OK);
            headers.headers_mut().insert("x-answered-by", HeaderValue::from_static("test"));
            let mut stream = respond.send_response(headers, false)?;
            stream.send_data(framed_user(i64::try_from(received).unwrap_or(-1), 10), false)?;
            stream.send_trailers(trailers(0, &[("x-trailer", "t")]))?;
        }
        "/large" => {
            // A message of some 300 KiB, in pieces smaller than HTTP/2's frames, with the prefix split too.
            let frame = framed_user(7, 300 * 1024);
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            for piece in frame.chunks(3000) {
                stream.send_data(Bytes::copy_from_slice(piece), false)?;
            }
            stream.send_trailers(trailers(0, &[]))?;
        }
        "/trailers-only" => {
            let mut headers = grpc_headers(StatusCode::OK);
            headers.headers_mut().insert("grpc-status", HeaderValue::from_static("5"));
            headers.headers_mut().insert("grpc-message", HeaderValue::from_static("no%20such%20user"));
            respond.send_response(headers, true)?;
        }
        "/error-after-headers" => {
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            stream.send_trailers(trailers(9, &[]))?;
        }
        "/http-503" => {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let mut stream = respond.send_response(response, false)?;
            stream.send_data(Bytes::from_static(b"upstream connect error"), true)?;
        }
        "/two-messages" => {
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            stream.send_data(framed_user(1, 1), false)?;
            stream.send_data(framed_user(2, 1), false)?;
            stream.send_trailers(trailers(0, &[]))?;
        }
        "/no-trailers" => {
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            stream.send_data(framed_user(1, 1), true)?;
        }
        "/cut-inside-a-message" => {
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            stream.send_data(framed_user(1, 50).slice(..20), false)?;
            stream.send_trailers(trailers(0, &[]))?;
        }
        "/compressed" => {
            let mut frame = BytesMut::from(&framed_user(1, 1)[..]);
            frame[0] = 1;
            let mut stream = respond.send_response(grpc_headers(StatusCode::OK), false)?;
            stream.send_data(frame.freeze(), false)?;
            stream.send_trailers(trailers(0, &[]))?;
        }
        "/refused" => respond.send_reset(h2::Reason::REFUSED_STREAM),
        _ => {
            let mut headers = grpc_headers(StatusCode::OK);
            headers.headers_mut().insert("grpc-status", HeaderValue::from_static("12"));
            respond.send_response(headers, true)?;
        }
    }
    Ok(())
}

/// An HTTP/2 server on a free port; counts the connections it accepted. Each connection is closed by the server
/// after `streams_per_connection` streams (None: kept open).
async fn server(streams_per_connection: Option<usize>) -> std::io::Result<(http::Uri, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let uri: http::Uri = format!("http://{}", listener.local_addr()?).parse().map_err(std::io::Error::other)?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                let mut served = 0;
                while let Some(Ok((request, respond))) = connection.accept().await {
                    tokio::spawn(answer(request, respond));
                    served += 1;
                    if streams_per_connection.is_some_and(|limit| served >= limit) {
                        // Let the answer go out (the connection moves frames only while it is polled), then
                        // close the connection abruptly, as a crashing server does.
                        let drive = async { while connection.accept().await.is_some() {} };
                        let _ = tokio::time::timeout(Duration::from_millis(100), drive).await;
                        return;
                    }
                }
            });
        }
    });
    Ok((uri, accepted))
}

fn connection(uri: &http::Uri) -> Result<DirectConnection, String> {
    let settings =
        DirectSettings { connect_timeout: Duration::from_secs(2), keep_alive_interval: Duration::from_secs(30) };
    DirectConnection::new(uri, settings).ok_or_else(|| format!("{uri} is plain text"))
}

/// A call whose answer (the message's wire bytes) is decoded as a user, to look into.
async fn call(
    connection: &DirectConnection,
    path: &'static str,
    message: &Bytes,
) -> Result<tonic::Response<DynamicMessage>, tonic::Status> {
    let descriptor = user_descriptor().map_err(tonic::Status::internal)?;
    let mut metadata = MetadataMap::new();
    metadata.insert("x-request-id", "abc".parse().map_err(|_| tonic::Status::internal("metadata"))?);
    let answer = connection.unary(&http::uri::PathAndQuery::from_static(path), metadata, message).await?;
    let (metadata, wire, extensions) = answer.into_parts();
    let user = DynamicMessage::decode(descriptor, wire).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::from_parts(metadata, user, extensions))
}

fn field_i64(message: &DynamicMessage, name: &str) -> Option<i64> {
    message.get_field_by_name(name).and_then(|value| value.as_i64())
}

#[tokio::test]
async fn answers_become_messages_with_their_metadata_or_the_status_the_spec_gives() -> TestResult {
    let (uri, accepted) = server(None).await?;
    let connection = connection(&uri)?;
    let message = Bytes::from_static(b"\x08\x2a");

    let ok = call(&connection, "/ok", &message).await?;
    // The server saw the 2-byte message behind its 5-byte prefix.
    assert_eq!(field_i64(ok.get_ref(), "id"), Some(7));
    assert_eq!(ok.metadata().get("x-answered-by").and_then(|v| v.to_str().ok()), Some("test"));
    assert_eq!(ok.metadata().get("x-trailer").and_then(|v| v.to_str().ok()), Some("t"), "trailers are metadata");

    let large = call(&connection, "/large", &message).await?;
    let name_len = large.get_ref().get_field_by_name("name").map(|v| v.as_str().map_or(0, str::len));
    assert_eq!(name_len, Some(300 * 1024));

    let expected = [
        ("/trailers-only", Code::NotFound),
        ("/error-after-headers", Code::FailedPrecondition),
        ("/http-503", Code::Unavailable),
        ("/two-messages", Code::Internal),
        ("/no-trailers", Code::Unknown),
        ("/cut-inside-a-message", Code::Internal),
        ("/compressed", Code::Internal),
        ("/unknown-method", Code::Unimplemented),
    ];
    for (path, code) in expected {
        let status = call(&connection, path, &message).await.err().ok_or(format!("{path} must fail"))?;
        assert_eq!(status.code(), code, "{path}: {status:?}");
        assert_ne!(classify(&status).failure, Failure::ConnectFailed, "{path} reached the server");
    }
    let not_found = call(&connection, "/trailers-only", &message).await.err().ok_or("must fail")?;
    assert_eq!(not_found.message(), "no such user", "grpc-message is percent-decoded");

    // REFUSED_STREAM: the protocol says the server did not process it, so it may go elsewhere whatever the method.
    let refused = call(&connection, "/refused", &message).await.err().ok_or("must fail")?;
    assert_eq!(classify(&refused), Classified { failure: Failure::Refused, sent: false });

    assert_eq!(accepted.load(Ordering::SeqCst), 1, "every call shared one connection");
    Ok(())
}

#[tokio::test]
async fn a_closed_connection_is_made_again_and_an_unreachable_endpoint_sent_nothing() -> TestResult {
    let (uri, accepted) = server(Some(1)).await?;
    let connection = connection(&uri)?;
    let message = Bytes::from_static(b"\x08\x01");
    for round in 1..=3 {
        call(&connection, "/ok", &message).await?;
        // The server drops the connection after each answer; the next call must notice and connect again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while connection.is_open() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!connection.is_open(), "round {round}: the closed connection is noticed");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Nobody listens on a port that was just free: a connect failure, with nothing sent.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let unreachable = self::connection(&format!("http://127.0.0.1:{port}").parse()?)?;
    let status = call(&unreachable, "/ok", &message).await.err().ok_or("nobody listens")?;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(classify(&status), Classified { failure: Failure::ConnectFailed, sent: false });
    Ok(())
}
