//! The accept loop: HTTP/1.1 and h2c on one listener (or, with TLS, HTTP/1.1 and h2 by ALPN), with a header
//! read timeout and a graceful drain.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::gateway::GatewayConfig;

async fn finish<E: std::fmt::Display>(connection: impl Future<Output = Result<(), E>>, peer: SocketAddr) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `config.drain_timeout`.
///
/// Clients get `config.header_read_timeout` to send their request headers, so a slow-loris client cannot hold
/// a connection open. Accept errors (e.g. out of file descriptors) are logged and retried, never fatal.
pub async fn serve(listener: TcpListener, router: Router, config: &GatewayConfig, shutdown: CancellationToken) {
    accept_loop(listener, router, None, config, shutdown).await;
}

/// Serves `router` over TLS on `listener`, as [`serve`] does in plain text. The TLS handshake runs on the
/// connection's own task, within `config.header_read_timeout`, so a slow handshake holds up nobody else.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: TlsAcceptor,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) {
    accept_loop(listener, router, Some(tls), config, shutdown).await;
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) {
    let handshake_timeout = config.header_read_timeout;
    let drain_timeout = config.drain_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        // The router is built once; a connection only tags its requests with the peer address (for
        // X-Forwarded-For), rather than layering the whole router again.
        let router = router.clone();
        let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request)
        });
        let service = TowerToHyperService::new(service);
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let Some(tls) = tls.clone() else {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            tokio::spawn(finish(watcher.watch(connection), peer));
            continue;
        };
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            finish(watcher.watch(connection), peer).await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(timeout = ?drain_timeout, "drain timed out; closing remaining connections"),
    }
}
