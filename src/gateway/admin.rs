//! The admin view: every upstream cluster's targets, endpoints (health, breaker, calls in flight, recent
//! errors), bulkhead and retry budget at `GET /admin/upstreams`; the descriptor sources, the services with
//! their route counts and the last reload at `GET /admin/descriptors`; readiness with its reasons (each
//! cluster's endpoints, health and breaker states) at `GET /admin/readyz`; Prometheus metrics at `GET /metrics`.
//!
//! It says where the replicas are and what is wrong with them, which is nobody's business on the public
//! listener: the binary serves it only on `--admin-listen`, an address of its own (loopback by convention).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, StatusCode, Uri};

use crate::gateway::catalog::LiveCatalog;
use crate::gateway::error::GatewayError;
use crate::gateway::ops::{json_response, operational_method_not_allowed};

/// The admin router.
pub fn router(catalog: Arc<LiveCatalog>) -> Router {
    Router::new()
        .route("/admin/upstreams", get(upstreams).fallback(operational_method_not_allowed))
        .route("/admin/descriptors", get(descriptors).fallback(operational_method_not_allowed))
        .route("/admin/readyz", get(readiness).fallback(operational_method_not_allowed))
        .route("/metrics", get(crate::telemetry::metrics::serve).fallback(operational_method_not_allowed))
        .fallback(not_found)
        .with_state(catalog)
}

async fn upstreams(State(catalog): State<Arc<LiveCatalog>>) -> Response {
    let clusters: Vec<serde_json::Value> = catalog
        .clusters()
        .iter()
        .map(|cluster| serde_json::json!({ "name": cluster.name, "state": cluster.upstream.snapshot() }))
        .collect();
    json_response(StatusCode::OK, serde_json::json!({ "upstreams": clusters }))
}

/// `/readyz` with its reasons: each cluster's endpoints, their health and breaker states.
async fn readiness(State(catalog): State<Arc<LiveCatalog>>) -> Response {
    let (ready, details) = crate::gateway::ops::readiness(catalog.clusters());
    json_response(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, details)
}

async fn descriptors(State(catalog): State<Arc<LiveCatalog>>) -> Response {
    json_response(StatusCode::OK, catalog.admin_view())
}

async fn not_found(method: Method, uri: Uri) -> Response {
    GatewayError::NoRoute { method, path: uri.path().to_string() }.into_response()
}
