//! The accept loop: HTTP/1.1 and h2c on one listener (or, with TLS, HTTP/1.1 and h2 by ALPN), with a header
//! read timeout and a graceful drain, all on the gateway's worker threads (`workers.rs`).
//!
//! A connection's protocol is decided first (by peeking for the HTTP/2 preface, or from ALPN), then hyper's own
//! HTTP/1 or HTTP/2 connection serves it. hyper-util's auto connection would decide by reading the first bytes
//! and handing them back, which costs a long-lived SSE watcher on HTTP/1.1 memory for its whole life: hyper's
//! read buffer gets only those bytes on its first read, needs a second read for the rest of the request and
//! doubles from 8 to 16 KiB, and the connection's task is sized for the larger HTTP/2 state.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::gateway::GatewayConfig;
use crate::gateway::peer::Peer;
use crate::gateway::workers::{Connections, Occupancy, Scheduling, StartError, Workers};

/// What a client sends first to speak HTTP/2 without TLS ("prior knowledge", RFC 9113 §3.3).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait before peeking again at a connection that has sent only part of the preface.
const PREFACE_RETRY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// The connection settings, built once.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(config: &GatewayConfig) -> Self {
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        Self { http1, http2 }
    }

    /// Serves `io` on a task of its own (on the workers), sized for its protocol only; the task holds the
    /// connection's `occupancy` of its thread until the connection ends.
    fn spawn<I>(
        &self,
        io: I,
        protocol: Protocol,
        router: &Router,
        peer: SocketAddr,
        watcher: Watcher,
        occupancy: Occupancy,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // The router is built once; a connection only tags its requests with its peer (for X-Forwarded-For
        // and the rate limiter), rather than layering the whole router again.
        let router = router.clone();
        let tag = Peer::new(peer);
        let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(tag.clone());
            router.clone().oneshot(request)
        });
        let service = TowerToHyperService::new(service);
        match protocol {
            Protocol::Http1 => {
                tokio::spawn(finish(watcher.watch(self.http1.serve_connection(io, service)), peer, occupancy));
            }
            Protocol::Http2 => {
                tokio::spawn(finish(watcher.watch(self.http2.serve_connection(io, service)), peer, occupancy));
            }
        }
    }
}

/// Whether a plain-text connection starts with the HTTP/2 preface. Peeked, not read, so that hyper's HTTP/1
/// parser reads the whole request itself. A connection that closes first counts as HTTP/1 (hyper sees the end).
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let peeked = stream.peek(&mut start).await?;
        if peeked == 0 || start[..peeked] != H2_PREFACE[..peeked] {
            return Ok(Protocol::Http1);
        }
        if peeked == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // A part of the preface so far. Peeking again at once would find the same bytes, so wait a little; the
        // caller's timeout ends a client that never sends the rest.
        tokio::time::sleep(PREFACE_RETRY).await;
    }
}

async fn finish<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    peer: SocketAddr,
    _occupancy: Occupancy,
) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `config.drain_timeout`.
///
/// Clients get `config.header_read_timeout` to send their request headers, so a slow-loris client cannot hold
/// a connection open. Accept errors (e.g. out of file descriptors) are logged and retried, never fatal.
///
/// # Errors
///
/// The `config.workers` threads that serve the connections cannot be started, or the listener cannot be
/// handed to them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run(listener, router, None, config, shutdown).await
}

/// Serves `router` over TLS on `listener`, as [`serve`] does in plain text. The TLS handshake runs on the
/// connection's own task, within `config.header_read_timeout`, so a slow handshake holds up nobody else.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: TlsAcceptor,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run(listener, router, Some(tls), config, shutdown).await
}

/// Starts the workers and runs the accept loop on them, the listener moved to their reactor once (shared, every
/// connection it accepts is then theirs from the start; pinned, each moves on to its own thread's); then ends
/// the workers, which closes whatever outlived the drain. Dropped before that, it ends them all the same: the
/// loop holds only where to send connections, not the threads.
async fn run(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let scheduling = if config.pin_connections { Scheduling::Pinned } else { Scheduling::Shared };
    let workers = Workers::start(config.workers, scheduling)?;
    let listener = listener.into_std()?;
    let settings = LoopSettings {
        builders: Builders::new(config),
        handshake_timeout: config.header_read_timeout,
        drain_timeout: config.drain_timeout,
    };
    let accepting = workers.spawn(accept_loop(listener, router, tls, settings, shutdown, workers.connections()));
    let ended = accepting.await;
    drop(workers);
    match ended {
        Ok(registered) => Ok(registered?),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Ok(()),
    }
}

/// What the accept loop needs from the gateway's settings.
struct LoopSettings {
    builders: Builders,
    handshake_timeout: Duration,
    drain_timeout: Duration,
}

async fn accept_loop(
    listener: std::net::TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    settings: LoopSettings,
    shutdown: CancellationToken,
    connections: Connections,
) -> std::io::Result<()> {
    let LoopSettings { builders, handshake_timeout, drain_timeout } = settings;
    let listener = TcpListener::from_std(listener)?;
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builders, router, watcher, tls) = (builders.clone(), router.clone(), graceful.watcher(), tls.clone());
        // The protocol is found on a task of its own, so a slow client holds up nobody else; the connection is
        // then served on a task sized for its protocol, on the same thread when the threads are pinned.
        connections.serve(stream, move |stream, occupancy| async move {
            let Some(tls) = tls else {
                match tokio::time::timeout(handshake_timeout, sniff(&stream)).await {
                    Ok(Ok(protocol)) => {
                        builders.spawn(TokioIo::new(stream), protocol, &router, peer, watcher, occupancy);
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "connection failed before its first request"),
                    Err(_) => tracing::debug!(%peer, "no request within the header read timeout"),
                }
                return;
            };
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // Over TLS, HTTP/2 is chosen by ALPN (RFC 9113 §3.2); a client that did not ask for it speaks HTTP/1.1.
            let protocol =
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
            builders.spawn(TokioIo::new(stream), protocol, &router, peer, watcher, occupancy);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(timeout = ?drain_timeout, "drain timed out; closing remaining connections"),
    }
    Ok(())
}
