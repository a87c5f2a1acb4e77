//! The gateway: HTTP/JSON in, gRPC out. Routes come from the `google.api.http` rules in the descriptors;
//! nothing here knows any particular service.
//!
//! ```text
//! client ─▶ layers (request id, log line, CORS, compression, panic → 500) ─▶ route table (fallback service)
//!        ─▶ transcode in ─▶ upstream (deadline, bulkhead, retries, p2c, breakers) ─▶ transcode out / SSE / NDJSON
//! ```
//!
//! The admin view (`admin.rs`) is a separate router, served on its own listener, never on the public one.

pub mod admin;
pub mod error;
pub mod handler;
mod json_check;
pub mod metadata;
pub mod openapi;
pub mod rules;
pub mod stream;
pub mod template;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::upstream::{Upstream, UpstreamConfig, UpstreamError};
use error::GatewayError;
use handler::RoutedRpc;
use rules::{RouteTable, RuleError};
use transcode::TranscodeOptions;

/// The gateway's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Upstream targets: `http://host:port`, `dns://name:port` or `file://path.json`.
    pub upstreams: Vec<String>,
    pub upstream: UpstreamConfig,
    /// RPCs (`package.Service.Method`) whose calls may be retried after reaching a server, besides those
    /// bound to GET and those marked idempotent in their proto options.
    pub idempotent_rpcs: Vec<String>,
    /// RPCs never retried after reaching a server, even when bound to GET.
    pub non_idempotent_rpcs: Vec<String>,
    /// Request bodies beyond this are refused with 413.
    pub max_body_bytes: usize,
    pub transcode: TranscodeOptions,
    /// The deadline of unary and client-streaming calls when the client sets a longer one or none.
    pub default_timeout: Option<Duration>,
    /// Time a client has to send a request's headers (slowloris protection).
    pub header_read_timeout: Duration,
    /// Time a client has to send a unary request's body, and the longest pause between two pieces of a
    /// streamed body.
    pub body_read_timeout: Duration,
    /// Origins allowed by CORS; empty turns CORS off, `*` allows any.
    pub cors_allowed_origins: Vec<String>,
    pub sse_keep_alive: Duration,
    /// How long in-flight requests may finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            upstreams: vec!["http://127.0.0.1:50051".into()],
            upstream: UpstreamConfig::default(),
            idempotent_rpcs: Vec::new(),
            non_idempotent_rpcs: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            transcode: TranscodeOptions::default(),
            default_timeout: Some(Duration::from_secs(30)),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
            sse_keep_alive: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    #[error("cannot build routes from the descriptors: {0}")]
    Rules(#[from] RuleError),
    #[error("invalid upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("invalid CORS origin {0:?}")]
    Cors(String),
}

/// What every request handler shares.
pub struct GatewayState {
    pub routes: RouteTable,
    pub upstream: Upstream,
    pub config: GatewayConfig,
    shutdown: CancellationToken,
}

impl GatewayState {
    /// Ends a server stream when the gateway shuts down, with a final UNAVAILABLE (an SSE `error` event or an
    /// NDJSON error line). EventSource clients then reconnect, to another instance, with Last-Event-ID and
    /// lose nothing.
    fn until_shutdown(
        &self,
        upstream: tonic::Streaming<prost_reflect::DynamicMessage>,
    ) -> impl Stream<Item = Result<prost_reflect::DynamicMessage, tonic::Status>> + Send + 'static {
        let shutdown = self.shutdown.clone();
        let stopped = shutdown.clone();
        // The tail is evaluated when the upstream part ends: only a shutdown adds the error item.
        let tail = futures::stream::once(async move { stopped.is_cancelled() }).filter_map(|stopped| async move {
            if stopped {
                Some(Err(tonic::Status::unavailable("the gateway is shutting down; reconnect")))
            } else {
                None
            }
        });
        upstream.take_until(shutdown.cancelled_owned()).chain(tail)
    }
}

/// The gateway's routers: the public one, and the admin view to serve on a separate listener.
pub struct Routers {
    pub public: Router,
    pub admin: Router,
}

/// The gateway's public router: operational endpoints, OpenAPI and Swagger UI, and every route of the
/// descriptors. Starts the upstream's discovery and health checks, which stop with `shutdown`.
pub fn router(
    descriptors: &DescriptorPool,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<Router, GatewayStartError> {
    Ok(routers(descriptors, config, shutdown)?.public)
}

/// [`router`] and the admin router, sharing one upstream.
pub fn routers(
    descriptors: &DescriptorPool,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<Routers, GatewayStartError> {
    let mut routes = RouteTable::from_pool(descriptors)?;
    routes.override_idempotency(&config.idempotent_rpcs, &config.non_idempotent_rpcs)?;
    let document = openapi::document(&routes);
    let upstream = Upstream::start(&config.upstreams, config.upstream.clone(), shutdown.clone())?;
    let cors = cors_layer(&config.cors_allowed_origins)?;
    let admin = admin::router(upstream.clone());
    let state = Arc::new(GatewayState { routes, upstream, config, shutdown });

    // Streams must not be compressed: the encoder would hold events back until its buffer fills.
    let compress = DefaultPredicate::new().and(NotForContentType::const_new(stream::NDJSON));

    // Layers, outermost first: the request id exists before anything logs; the log line sees the final
    // response (compressed, CORS headers, even a caught panic's 500); compression and CORS wrap the handler.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &http::Request<_>| {
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(|response: &http::Response<_>, latency: Duration, _: &tracing::Span| {
                    let rpc = response.extensions().get::<RoutedRpc>().map_or("-", |routed| routed.0.rpc_name());
                    tracing::info!(status = response.status().as_u16(), duration_ms = latency.as_secs_f64() * 1000.0, rpc, "request");
                })
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .option_layer(cors)
        .layer(CompressionLayer::new().compress_when(compress))
        .layer(CatchPanicLayer::custom(|_| {
            GatewayError::Upstream(tonic::Status::internal("internal error in the gateway")).into_response()
        }));

    let public = Router::new()
        .route("/healthz", get(healthz).fallback(operational_method_not_allowed))
        .route("/readyz", get(readyz).fallback(operational_method_not_allowed))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", document))
        .fallback(handler::handle)
        .with_state(state)
        .layer(layers);
    Ok(Routers { public, admin })
}

fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, GatewayStartError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| GatewayStartError::Cors(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(CorsLayer::new().allow_origin(allow_origin).allow_methods(Any).allow_headers(Any).expose_headers(Any)))
}

/// Operational endpoints answer other methods like API routes do: 405 with `Allow` and a Status body.
pub(crate) async fn operational_method_not_allowed(method: http::Method, uri: http::Uri) -> Response {
    GatewayError::MethodNotAllowed { method, path: uri.path().to_string(), allow: vec![http::Method::GET] }
        .into_response()
}

/// The process is alive.
async fn healthz() -> Response {
    json_response(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// Ready when some upstream endpoint is confirmed SERVING by its health check and not ejected by its breaker.
/// The body lists every endpoint's state, as the health checks and breakers see it.
async fn readyz(State(state): State<Arc<GatewayState>>) -> Response {
    let snapshot = state.upstream.snapshot();
    let upstreams: Vec<serde_json::Value> = snapshot
        .endpoints
        .iter()
        .map(|e| serde_json::json!({ "endpoint": e.address, "status": e.health, "breaker": e.breaker.state }))
        .collect();
    let (code, status) =
        if snapshot.ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
    json_response(code, serde_json::json!({ "status": status, "upstreams": upstreams }))
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

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
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
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
