//! The accept loop: HTTP/1.1 and h2c on one listener, with a header read timeout and a graceful drain.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::gateway::GatewayConfig;

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `config.drain_timeout`.
///
/// Clients get `config.header_read_timeout` to send their request headers, so a slow-loris client cannot hold
/// a connection open. Accept errors (e.g. out of file descriptors) are logged and retried, never fatal.
pub async fn serve(listener: TcpListener, router: Router, config: &GatewayConfig, shutdown: CancellationToken) {
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
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(timeout = ?drain_timeout, "drain timed out; closing remaining connections"),
    }
}
