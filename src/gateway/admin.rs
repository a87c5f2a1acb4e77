//! The admin view: the upstream's targets, endpoints (health, breaker, calls in flight, recent errors), the
//! bulkhead and the retry budget, as JSON at `GET /admin/upstreams`.
//!
//! It says where the replicas are and what is wrong with them, which is nobody's business on the public
//! listener: the binary serves it only on `--admin-listen`, an address of its own (loopback by convention).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, StatusCode, Uri};

use crate::gateway::error::GatewayError;
use crate::gateway::{json_response, operational_method_not_allowed};
use crate::upstream::Upstream;

/// The admin router.
pub fn router(upstream: Upstream) -> Router {
    Router::new()
        .route("/admin/upstreams", get(upstreams).fallback(operational_method_not_allowed))
        .fallback(not_found)
        .with_state(upstream)
}

async fn upstreams(State(upstream): State<Upstream>) -> Response {
    // One upstream today; a list, so that several named upstreams fit without changing the shape.
    let body = serde_json::json!({ "upstreams": [ { "name": "default", "state": upstream.snapshot() } ] });
    json_response(StatusCode::OK, body)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    GatewayError::NoRoute { method, path: uri.path().to_string() }.into_response()
}
