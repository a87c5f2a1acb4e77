//! The gateway: HTTP/JSON in, gRPC out. Routes come from the `google.api.http` rules in the descriptors;
//! nothing here knows any particular service.
//!
//! ```text
//! client ─▶ accept loop (TLS) ─▶ layers (request id, log line, CORS, compression, panic → 500, load shedding,
//!        JWT → 401, rate limit → 429) ─▶ route table (fallback service)
//!        ─▶ transcode in ─▶ upstream (deadline, bulkhead, retries, p2c, breakers) ─▶ transcode out / SSE / NDJSON
//! ```
//!
//! The route table lives in the catalog (`catalog/`), which reloads and swaps it whole; the clusters
//! (`clusters.rs`) are the upstreams the routes call. The accept loop is `server.rs` (with `tls.rs` for
//! HTTPS), the operational endpoints `ops.rs`; `auth.rs` checks tokens and `limits/` holds the rate limit,
//! load shedding and the stream cap. The admin view (`admin.rs`) is a separate router, served on its own listener, never on
//! the public one. `workers.rs` runs the threads that serve connections, each with its own upstream lane.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod clusters;
mod compression;
pub mod error;
pub mod handler;
mod json_check;
pub mod limits;
pub mod metadata;
pub mod openapi;
mod ops;
pub mod peer;
mod request_id;
pub mod rules;
pub mod server;
pub mod stream;
pub mod template;
pub mod tls;
pub mod transcode;
pub mod workers;

pub use server::{serve, serve_tls};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{Stream, StreamExt};
use http::HeaderValue;
use prost_reflect::DescriptorPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::settings::ConfigError;
use crate::telemetry::http::{HttpTelemetryLayer, RouteHint};
use crate::upstream::{UpstreamConfig, UpstreamError};
use catalog::{DescriptorSources, LiveCatalog, LoadError, Loader};
use clusters::{Clusters, ServiceUpstream};
use error::GatewayError;
use rules::RouteOptions;
use transcode::TranscodeOptions;

/// The gateway's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Where the descriptors come from (the embedded ones when none is set).
    pub descriptors: DescriptorSources,
    /// Which services become routes, and whether services without rules are auto-routed.
    pub routes: RouteOptions,
    /// The default upstream's targets: `http://host:port`, `dns://name:port` or `file://path.json`.
    pub upstreams: Vec<String>,
    /// Services whose calls go to a cluster of their own.
    pub service_upstreams: Vec<ServiceUpstream>,
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
    /// JWT authentication of API requests; off when unset.
    pub auth: Option<crate::auth::AuthConfig>,
    /// Rate limit, load shedding and the stream cap; all off by default.
    pub limits: limits::LimitsConfig,
    /// HTTPS at the edge; plain HTTP when unset.
    pub tls: Option<tls::EdgeTlsConfig>,
    /// Threads that serve client connections, each with its own upstream connections (`workers.rs`).
    pub workers: usize,
    /// Each connection stays on the worker thread that took it, on a single-threaded runtime, instead of the
    /// threads sharing one work-stealing runtime (`workers.rs`).
    pub pin_connections: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            descriptors: DescriptorSources::default(),
            routes: RouteOptions::default(),
            upstreams: vec!["http://127.0.0.1:50051".into()],
            service_upstreams: Vec::new(),
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
            auth: None,
            limits: limits::LimitsConfig::default(),
            tls: None,
            workers: workers::default_count(),
            pin_connections: false,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings that their types cannot; [`start`] calls it, so a config built in code is checked
    /// as one built from flags is. Errors name the flag that sets the value.
    ///
    /// # Errors
    ///
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.upstream.validate().map_err(|e| ConfigError { flag: "upstream-*", reason: e.to_string() })?;
        for (flag, value) in [
            ("upstream-connections", self.upstream.pool.connections_per_endpoint),
            ("workers", self.workers),
            ("max-body-bytes", self.max_body_bytes),
            ("max-json-depth", self.transcode.max_json_depth),
            ("max-concurrent-requests", self.limits.max_concurrent_requests.unwrap_or(1)),
            ("max-streams", self.limits.max_streams.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ConfigError { flag, reason: "must be at least 1".into() });
            }
        }
        for (flag, value) in
            [("header-read-timeout", self.header_read_timeout), ("sse-keep-alive", self.sse_keep_alive)]
        {
            if value.is_zero() {
                return Err(ConfigError { flag, reason: "must be longer than 0".into() });
            }
        }
        Ok(())
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load the descriptors: {0}")]
    Descriptors(#[from] LoadError),
    #[error("invalid upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("invalid CORS origin {0:?}")]
    Cors(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What every request handler shares.
pub struct GatewayState {
    /// The routes, swapped whole on reload: load it once per request.
    pub catalog: Arc<LiveCatalog>,
    pub clusters: Clusters,
    pub config: GatewayConfig,
    /// Slots for open server streams (`--max-streams`).
    pub streams: limits::StreamSlots,
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

/// A started gateway: its routers, and the catalog that reloads behind them.
pub struct Gateway {
    /// Operational endpoints, OpenAPI and Swagger UI, and every route of the catalog.
    pub public: Router,
    /// The admin view, to serve on a listener of its own.
    pub admin: Router,
    pub catalog: Arc<LiveCatalog>,
    /// The edge's TLS (certificates reloaded as their files change), for [`serve_tls`]; None for plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Starts the upstream clusters (discovery and health checks, which stop with `shutdown`), loads the
/// descriptors (`embedded` unless `config.descriptors` names sources), starts watching the sources for
/// changes, and builds the routers.
///
/// # Errors
///
/// Invalid upstream settings or CORS origins, and descriptors that cannot be loaded or served.
pub async fn start(
    embedded: &DescriptorPool,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<Gateway, GatewayStartError> {
    config.validate()?;
    let cors = cors_layer(&config.cors_allowed_origins)?;
    let tls = config.tls.as_ref().map(|tls| tls::acceptor(tls, &shutdown)).transpose()?;
    let authenticate = match &config.auth {
        Some(auth) => Some(auth::AuthenticateLayer::new(crate::auth::Verifier::start(auth).await?)),
        None => {
            tracing::info!("JWT authentication is off: API requests need no token (see --jwt-jwks)");
            None
        }
    };
    // Every endpoint's pool has a lane of connections for each worker that `serve` will run.
    let mut upstream = config.upstream.clone();
    upstream.pool.worker_lanes = config.workers;
    let clusters = Clusters::start(&config.upstreams, &config.service_upstreams, &upstream, &shutdown)?;
    let loader = Loader {
        sources: config.descriptors.clone(),
        routes: config.routes.clone(),
        idempotent_rpcs: config.idempotent_rpcs.clone(),
        non_idempotent_rpcs: config.non_idempotent_rpcs.clone(),
        embedded: embedded.clone(),
        clusters: clusters.clone(),
        upstream_tls: config.upstream.pool.tls.clone(),
    };
    let catalog = Arc::new(LiveCatalog::start(loader).await?);
    crate::telemetry::upstream::observe(&clusters);
    catalog::reload::spawn(&catalog, &shutdown);
    let admin = admin::router(Arc::clone(&catalog));
    let shed = config.limits.max_concurrent_requests.map(limits::LoadShedLayer::new);
    let rate_limit = config.limits.rate_limit.clone().map(limits::RateLimitLayer::new);
    let streams = limits::StreamSlots::new(config.limits.max_streams);
    let state = Arc::new(GatewayState { catalog: Arc::clone(&catalog), clusters, config, streams, shutdown });

    // Layers, outermost first: the request id exists before anything logs; the telemetry layer (span, log
    // line, metrics) sees the final response (compressed, CORS headers, even a caught panic's 500);
    // compression and CORS wrap the handler.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(request_id::MakeRandomRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(HttpTelemetryLayer::new(route_hint(&catalog)))
        .option_layer(cors)
        .layer(compression::CompressWhenAcceptedLayer::new())
        .layer(CatchPanicLayer::custom(|_| {
            GatewayError::Upstream(tonic::Status::internal("internal error in the gateway")).into_response()
        }))
        // Inside CORS, so preflights are answered and refusals carry CORS headers. Shedding comes first: it
        // bounds the work of everything after it, token checks included. The rate limit follows
        // authentication, so it can key on the verified subject.
        .option_layer(shed)
        .option_layer(authenticate)
        .option_layer(rate_limit);

    let public = Router::new()
        .route("/healthz", get(ops::healthz).fallback(ops::operational_method_not_allowed))
        .route("/readyz", get(ops::readyz).fallback(ops::operational_method_not_allowed))
        .route("/openapi.json", get(ops::openapi).fallback(ops::operational_method_not_allowed))
        // Swagger UI fetches the document from /openapi.json, so it always shows the current catalog.
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
        .fallback(handler::handle)
        .with_state(state)
        .layer(layers);
    Ok(Gateway { public, admin, catalog, tls })
}

/// The route template a request will match, for naming its span before the handler runs.
fn route_hint(catalog: &Arc<LiveCatalog>) -> RouteHint {
    let catalog = Arc::clone(catalog);
    Arc::new(move |method, path| catalog.current().routes.label_for(method, path).cloned())
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
