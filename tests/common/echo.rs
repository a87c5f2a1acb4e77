//! A gRPC echo server for any descriptors, with tonic's server reflection (v1): each unary call answers its
//! own request bytes, a server stream answers them three times, a client stream answers its last message.
//! Every answer carries `echo-server: <name>` metadata, so a test can tell which upstream served a call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running echo server; stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Calls answered so far (reflection excluded).
    pub calls: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl EchoServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Starts an echo server for the services of `encoded` (an encoded FileDescriptorSet) on 127.0.0.1:0.
pub async fn start(encoded: Vec<u8>, name: &'static str) -> EchoServer {
    let pool = DescriptorPool::decode(encoded.as_slice()).expect("the echo server's descriptors decode");
    let bytes: &'static [u8] = Box::leak(encoded.into_boxed_slice());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(bytes)
        .build_v1()
        .expect("reflection service");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let router = tonic::service::Routes::new(reflection).into_axum_router().fallback(move |request: Request| {
        let (pool, counter) = (pool.clone(), Arc::clone(&counter));
        async move { echo(&pool, name, &counter, request).await }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    EchoServer { addr, calls, shutdown }
}

async fn echo(pool: &DescriptorPool, name: &'static str, calls: &AtomicUsize, request: Request) -> Response {
    let path = request.uri().path().trim_start_matches('/').to_string();
    let (service, method) = path.split_once('/').unwrap_or_default();
    let Some(method) = pool.get_service_by_name(service).and_then(|s| s.methods().find(|m| m.name() == method)) else {
        return grpc_response(name, Vec::new(), "12");
    };
    calls.fetch_add(1, Ordering::SeqCst);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let last = frames(body).pop().unwrap_or_default();
    let count = if method.is_server_streaming() { 3 } else { 1 };
    grpc_response(name, vec![last; count], "0")
}

/// The messages of a gRPC request body (uncompressed frames).
fn frames(mut body: Bytes) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while body.len() >= 5 {
        body.advance(1);
        let length = body.get_u32() as usize;
        if body.len() < length {
            break;
        }
        messages.push(body.split_to(length));
    }
    messages
}

fn grpc_response(name: &'static str, messages: Vec<Bytes>, status: &'static str) -> Response {
    let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = Vec::new();
    for message in messages {
        let mut frame = BytesMut::with_capacity(message.len() + 5);
        frame.extend_from_slice(&[0]);
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&message);
        frames.push(Ok(Frame::data(frame.freeze())));
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(Body::new(StreamBody::new(futures::stream::iter(frames))));
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response.headers_mut().insert("echo-server", http::HeaderValue::from_static(name));
    response
}
