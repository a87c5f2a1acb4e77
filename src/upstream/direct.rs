//! Unary calls straight over an HTTP/2 connection, for plain-text (`http://`) endpoints.
//!
//! A tonic `Channel` hands every request to tasks of its own: a buffer worker, then hyper's dispatcher in front
//! of the connection, each a queue and a wake-up between the caller and the socket. A unary call needs none of
//! that: its request is one encoded message, its answer one message and a status. So the calling task talks to
//! the `h2` connection itself: it opens the stream, queues the request's frames, and reads the answer as it
//! comes; the connection's own task (spawned once per connection) only moves frames between the socket and the
//! streams. Streams and TLS endpoints keep using tonic.
//!
//! The protocol is gRPC over HTTP/2 as the spec writes it (PROTOCOL-HTTP2.md): the same headers tonic sends, a
//! length-prefixed message, the status from the trailers (or from the headers of a trailers-only answer, or
//! inferred from the HTTP status when there is none), and h2 resets mapped to codes as the spec maps them.
//! Errors keep their h2 or I/O cause as the status's source, so [`super::call::classify`] judges them as it
//! judges tonic's: a connection that could not be made, or that was found closed before the stream opened,
//! sent nothing ([`tonic::ConnectError`]); a refused stream was not processed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use tokio::net::TcpStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The largest answer a unary call takes, as tonic's default decoding limit.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How long a keep-alive ping may go unanswered before the connection is given up (tonic's default).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 settings, as hyper's client chooses them: windows large enough that a message of a few MiB does not
/// wait for window updates.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The gRPC request headers that do not change from call to call.
const CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");
const TE: HeaderValue = HeaderValue::from_static("trailers");
const USER_AGENT: HeaderValue = HeaderValue::from_static(concat!("portico/", env!("CARGO_PKG_VERSION")));

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct DirectSettings {
    pub connect_timeout: Duration,
    pub keep_alive_interval: Duration,
}

/// One HTTP/2 connection to an endpoint, made on first use and made again after it closes.
pub struct DirectConnection {
    authority: Authority,
    settings: DirectSettings,
    live: Mutex<Option<Live>>,
    /// Held while connecting, so that calls arriving meanwhile wait for that connection instead of each making
    /// their own.
    connecting: tokio::sync::Mutex<()>,
}

/// An open connection: the handle streams are opened on, and whether its task has seen it close.
struct Live {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl DirectConnection {
    /// A connection to `address` (an `http://` URL), not made until the first call.
    pub fn new(address: &Uri, settings: DirectSettings) -> Option<Self> {
        if address.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let authority = address.authority()?.clone();
        Some(Self { authority, settings, live: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) })
    }

    /// Whether the connection is open (or believed to be: its task has not seen it close).
    pub fn is_open(&self) -> bool {
        self.lock().as_ref().is_some_and(|live| !live.closed.load(Ordering::Acquire))
    }

    /// Calls `path` with the encoded `message`, and returns the answer's message as its wire bytes.
    ///
    /// # Errors
    ///
    /// The upstream's status, or one standing for what went wrong on the way (see the module's notes).
    pub async fn unary(
        &self,
        path: &PathAndQuery,
        metadata: MetadataMap,
        message: &Bytes,
    ) -> Result<tonic::Response<Bytes>, Status> {
        let frame = framed(message)?;
        let request = self.request(path, metadata)?;
        let (mut sender, closed) = self.ready_sender().await?;
        let (answer, mut body) = match sender.send_request(request, false) {
            Ok(opened) => opened,
            // The stream could not even be opened: the connection had closed, and nothing went out.
            Err(error) if error.is_io() || error.is_go_away() || error.reason().is_some() => {
                closed.store(true, Ordering::Release);
                return Err(not_sent(error));
            }
            // h2 refused the request itself (headers HTTP/2 does not allow); the gateway builds them, so this is
            // its own fault, not the connection's.
            Err(error) => return Err(Status::internal(format!("the request cannot be sent upstream: {error}"))),
        };
        body.send_data(frame, true).map_err(Status::from)?;
        let answer = answer.await.map_err(Status::from)?;
        read_answer(answer).await
    }

    fn request(&self, path: &PathAndQuery, metadata: MetadataMap) -> Result<http::Request<()>, Status> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| Status::internal(format!("cannot build the upstream URI: {e}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        *headers = metadata.into_headers();
        headers.insert(header::CONTENT_TYPE, CONTENT_TYPE);
        headers.insert(header::TE, TE);
        headers.insert(header::USER_AGENT, USER_AGENT);
        Ok(request)
    }

    /// The connection's stream opener, once it can open a stream: the open connection, or a new one when there
    /// is none or it turns out to have closed.
    /// Returns it with the connection's closed flag, for a caller that finds it closed after all.
    async fn ready_sender(&self) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), Status> {
        if let Some((sender, closed)) = self.open_sender() {
            match sender.ready().await {
                Ok(ready) => return Ok((ready, closed)),
                Err(_) => closed.store(true, Ordering::Release),
            }
        }
        let _connecting = self.connecting.lock().await;
        // Another call may have connected while this one waited.
        let (sender, closed) = match self.open_sender() {
            Some(open) => open,
            None => self.connect().await?,
        };
        Ok((sender.ready().await.map_err(not_sent)?, closed))
    }

    fn open_sender(&self) -> Option<(SendRequest<Bytes>, Arc<AtomicBool>)> {
        self.lock()
            .as_ref()
            .filter(|live| !live.closed.load(Ordering::Acquire))
            .map(|live| (live.sender.clone(), Arc::clone(&live.closed)))
    }

    async fn connect(&self) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), Status> {
        let connect = async {
            let address = resolve(&self.authority).await?;
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .max_header_list_size(MAX_HEADER_LIST)
                .enable_push(false)
                .handshake::<_, Bytes>(stream)
                .await
                .map_err(|e| e.into_io().unwrap_or_else(|| std::io::Error::other("the HTTP/2 handshake failed")))
        };
        let (sender, connection) = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(made)) => made,
            Ok(Err(error)) => return Err(not_sent(error)),
            Err(_) => return Err(not_sent(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))),
        };
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(PollAfterOthers::new(drive(connection, Arc::clone(&closed), self.settings.keep_alive_interval)));
        *self.lock() = Some(Live { sender: sender.clone(), closed: Arc::clone(&closed) });
        Ok((sender, closed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connection's task: moves frames until the connection ends, pinging it when it has been quiet for
/// `keep_alive`, and giving it up when a ping goes unanswered. Marks it closed at the end, so the next call
/// makes a new one.
async fn drive(
    mut connection: h2::client::Connection<TcpStream, Bytes>,
    closed: Arc<AtomicBool>,
    keep_alive: Duration,
) {
    let mut ping_pong = connection.ping_pong();
    let mut connection = std::pin::pin!(connection);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection closed");
                }
                break;
            }
            () = tokio::time::sleep(keep_alive) => {}
        }
        let Some(ping_pong) = ping_pong.as_mut() else { continue };
        let pong = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque()));
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection closed");
                }
                break;
            }
            answered = pong => if !matches!(answered, Ok(Ok(_))) {
                tracing::warn!("upstream connection gave no answer to a keep-alive ping; closing it");
                break;
            }
        }
    }
    // Dropping the connection fails whatever streams it still carries.
    closed.store(true, Ordering::Release);
}

pin_project_lite::pin_project! {
    /// Polls a future one scheduler turn after it is woken rather than at once, so that the other tasks
    /// already woken on its thread run first.
    ///
    /// For the connection's task this batches writes: a call wakes it as soon as the call's frames are
    /// queued, and tokio runs a task woken by another straight after that one yields (its "LIFO slot"), so
    /// each call's frames went out in a `writev` of their own while the calls behind it, woken by the same
    /// epoll round, waited. Sent one turn later, the frames of every call queued meanwhile go out together:
    /// fewer system calls here, and fewer reads and wake-ups at the server.
    struct PollAfterOthers<F> {
        #[pin]
        inner: F,
        deferred: bool,
    }
}

impl<F> PollAfterOthers<F> {
    fn new(inner: F) -> Self {
        Self { inner, deferred: false }
    }
}

impl<F: std::future::Future> std::future::Future for PollAfterOthers<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        if !*this.deferred {
            // A task that wakes itself while it runs goes to the back of its thread's run queue.
            *this.deferred = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        *this.deferred = false;
        this.inner.poll(cx)
    }
}

async fn resolve(authority: &Authority) -> std::io::Result<SocketAddr> {
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address")))
}

/// A failure before anything went out: the status carries a [`tonic::ConnectError`], which
/// [`super::call::classify`] reads as nothing sent.
fn not_sent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Status {
    let error = tonic::ConnectError(error.into());
    let mut status = Status::unavailable(format!("cannot reach the upstream: {}", error.0));
    status.set_source(Arc::new(error));
    status
}

/// The message with gRPC's length prefix (uncompressed).
fn framed(message: &Bytes) -> Result<Bytes, Status> {
    let length = u32::try_from(message.len())
        .map_err(|_| Status::resource_exhausted("the request message is larger than gRPC's 4 GiB frame"))?;
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.put_slice(message);
    Ok(frame.freeze())
}

/// Reads a unary answer: headers, one message, trailers.
async fn read_answer(answer: http::Response<h2::RecvStream>) -> Result<tonic::Response<Bytes>, Status> {
    let (parts, mut body) = answer.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // A trailers-only answer: the status is all there is.
        return Err(if status.code() == Code::Ok { Status::internal("Missing response message.") } else { status });
    }
    if parts.status != http::StatusCode::OK {
        return Err(status_from_http(parts.status));
    }
    let mut buffer = BytesMut::new();
    let mut message: Option<Bytes> = None;
    while let Some(data) = body.data().await {
        let data = data.map_err(Status::from)?;
        let _ = body.flow_control().release_capacity(data.len());
        buffer.extend_from_slice(&data);
        while let Some(next) = take_message(&mut buffer)? {
            if message.replace(next).is_some() {
                return Err(Status::internal("the upstream sent more than one message for a unary call"));
            }
        }
    }
    if !buffer.is_empty() {
        return Err(Status::internal("the upstream's answer ended inside a message"));
    }
    let trailers = body.trailers().await.map_err(Status::from)?;
    // The common answer, `grpc-status: 0`, is read as it is: tonic's parser copies the whole trailer map into
    // the status's metadata before the code can be looked at.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let ok = trailers.as_ref().and_then(|trailers| trailers.get(&GRPC_STATUS)).is_some_and(|code| code == "0");
    if !ok {
        let status = trailers.as_ref().and_then(Status::from_header_map).unwrap_or_else(|| {
            Status::unknown("protocol error: missing grpc-status trailer, stream was terminated without a final status")
        });
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    let message = message.ok_or_else(|| Status::internal("Missing response message."))?;
    let mut metadata = parts.headers;
    if let Some(trailers) = trailers {
        merge(&mut metadata, trailers);
    }
    Ok(tonic::Response::from_parts(MetadataMap::from_headers(metadata), message, tonic::Extensions::default()))
}

/// The next whole message in `buffer`, taken out of it.
fn take_message(buffer: &mut BytesMut) -> Result<Option<Bytes>, Status> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    let compressed = buffer[0];
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if compressed != 0 {
        return Err(Status::internal("the upstream sent a compressed message, though the gateway asks for none"));
    }
    if length > MAX_RESPONSE_BYTES {
        return Err(Status::out_of_range(format!(
            "the upstream's message of {length} bytes is larger than the limit of {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    if buffer.len() < 5 + length {
        buffer.reserve(5 + length - buffer.len());
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(length).freeze()))
}

/// Adds the trailers to the headers, as tonic merges them into a unary answer's metadata.
fn merge(headers: &mut HeaderMap, trailers: HeaderMap) {
    let mut name = None;
    for (key, value) in trailers {
        if key.is_some() {
            name = key;
        }
        if let Some(name) = &name {
            headers.append(name.clone(), value);
        }
    }
}

/// The code for an answer without a gRPC status, from its HTTP status (gRPC's http-grpc-status-mapping).
fn status_from_http(status: http::StatusCode) -> Status {
    let code = match status {
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the upstream answered HTTP {status} without a gRPC status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each poll of the connection stand-in and keeps its waker, as h2's connection does.
    #[derive(Clone, Default)]
    struct Journal {
        entries: Arc<Mutex<Vec<&'static str>>>,
        waker: Arc<Mutex<Option<std::task::Waker>>>,
    }

    impl Journal {
        fn write(&self, entry: &'static str) {
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
        }

        fn read(&self) -> Vec<&'static str> {
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }

        fn wake_connection(&self) {
            if let Some(waker) = self.waker.lock().unwrap_or_else(PoisonError::into_inner).take() {
                waker.wake();
            }
        }

        /// Pending forever, writing "connection" on every poll.
        fn connection(&self) -> impl std::future::Future<Output = ()> + use<> {
            let journal = self.clone();
            std::future::poll_fn(move |cx| {
                journal.write("connection");
                *journal.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
                std::task::Poll::Pending
            })
        }
    }

    /// What the connection sees when a call queues its frames and wakes it while another call is ready to
    /// run on the same thread.
    fn order_of_polls(deferred: bool) -> Result<Vec<&'static str>, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build()?;
        let journal = Journal::default();
        runtime.block_on(async {
            let connection = journal.connection();
            if deferred {
                tokio::spawn(PollAfterOthers::new(connection));
            } else {
                tokio::spawn(connection);
            }
            while journal.read().is_empty() {
                tokio::task::yield_now().await;
            }
            let first_call = journal.clone();
            tokio::spawn(async move {
                first_call.write("first call");
                // The next call becomes ready on this thread, then this one wakes the connection.
                let second_call = first_call.clone();
                tokio::spawn(async move { second_call.write("second call") });
                first_call.wake_connection();
            })
            .await?;
            while journal.read().len() < 4 {
                tokio::task::yield_now().await;
            }
            Ok::<_, tokio::task::JoinError>(())
        })?;
        Ok(journal.read())
    }

    #[test]
    fn the_connection_runs_after_the_calls_already_ready() -> Result<(), Box<dyn std::error::Error>> {
        // tokio alone runs the woken connection first: the first call's frames would go out on their own.
        assert_eq!(order_of_polls(false)?, ["connection", "first call", "connection", "second call"]);
        assert_eq!(order_of_polls(true)?, ["connection", "first call", "second call", "connection"]);
        Ok(())
    }

    #[test]
    fn messages_are_taken_whole_from_a_buffer_that_fills_in_pieces() -> Result<(), Status> {
        let mut buffer = BytesMut::new();
        let frame = framed(&Bytes::from_static(b"hello"))?;
        buffer.extend_from_slice(&frame[..3]);
        assert_eq!(take_message(&mut buffer)?, None);
        buffer.extend_from_slice(&frame[3..7]);
        assert_eq!(take_message(&mut buffer)?, None);
        buffer.extend_from_slice(&frame[7..]);
        assert_eq!(take_message(&mut buffer)?.as_deref(), Some(&b"hello"[..]));
        assert!(buffer.is_empty());
        Ok(())
    }

    #[test]
    fn compressed_and_oversized_messages_are_refused_before_they_are_buffered() {
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 1, 7][..]);
        assert_eq!(take_message(&mut compressed).map_err(|s| s.code()), Err(Code::Internal));
        let mut huge = BytesMut::new();
        huge.put_u8(0);
        huge.put_u32(u32::MAX);
        assert_eq!(take_message(&mut huge).map_err(|s| s.code()), Err(Code::OutOfRange));
    }

    #[test]
    fn trailers_join_the_headers_every_value_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let mut trailers = HeaderMap::new();
        trailers.append("x-a", HeaderValue::from_static("2"));
        trailers.append("x-b", HeaderValue::from_static("3"));
        trailers.append("x-b", HeaderValue::from_static("4"));
        merge(&mut headers, trailers);
        let values = |name| headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("?")).collect::<Vec<_>>();
        assert_eq!(values("x-a"), ["1", "2"]);
        assert_eq!(values("x-b"), ["3", "4"]);
    }

    #[test]
    fn only_plain_text_endpoints_are_called_directly() -> Result<(), http::uri::InvalidUri> {
        let settings =
            DirectSettings { connect_timeout: Duration::from_secs(1), keep_alive_interval: Duration::from_secs(30) };
        assert!(DirectConnection::new(&"http://127.0.0.1:1".parse()?, settings).is_some());
        assert!(DirectConnection::new(&"https://127.0.0.1:1".parse()?, settings).is_none());
        Ok(())
    }
}
