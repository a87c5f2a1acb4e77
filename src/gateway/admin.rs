//! The admin view: the upstream's targets, endpoints (health, breaker, calls in flight, recent errors), the
//! bulkhead and the retry budget, as JSON at `GET /admin/upstreams`.
//!
//! It says where the replicas are and what is wrong with them, which is nobody's business on the public
//! listener: the binary serves it only on `--admin-listen`, an address of its own (loopback by convention).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, Method, Uri, header};

use crate::gateway::error::GatewayError;
use crate::upstream::Upstream;

/// The admin router.
pub fn router(upstream: Upstream) -> Router {
    Router::new()
        .route("/admin/upstreams", get(upstreams).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(upstream)
}

async fn upstreams(State(upstream): State<Upstream>) -> Response {
    // One upstream today; a list, so that several named upstreams fit without changing the shape.
    let body = serde_json::json!({ "upstreams": [ { "name": "default", "state": upstream.snapshot() } ] });
    let mut response = serde_json::to_vec_pretty(&body).unwrap_or_default().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    GatewayError::MethodNotAllowed { method, path: uri.path().to_string(), allow: vec![Method::GET] }.into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    GatewayError::NoRoute { method, path: uri.path().to_string() }.into_response()
}
