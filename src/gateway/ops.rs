//! The public operational endpoints: liveness, readiness and the OpenAPI document of the current catalog.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::gateway::GatewayState;
use crate::gateway::clusters::Clusters;
use crate::gateway::error::GatewayError;

/// Operational endpoints answer other methods like API routes do: 405 with `Allow` and a Status body.
pub(crate) async fn operational_method_not_allowed(method: http::Method, uri: http::Uri) -> Response {
    GatewayError::MethodNotAllowed { method, path: uri.path().to_string(), allow: vec![http::Method::GET] }
        .into_response()
}

/// The process is alive.
pub(crate) async fn healthz() -> Response {
    json_response(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// Ready when every cluster has an endpoint confirmed SERVING by its health check and not ejected by its
/// breaker. The public answer says only that: where the endpoints are and how their breakers stand is for the
/// admin listener (`/admin/readyz`).
pub(crate) async fn readyz(State(state): State<Arc<GatewayState>>) -> Response {
    let (ready, _) = readiness(&state.clusters);
    let (code, status) = if ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
    json_response(code, serde_json::json!({ "status": status }))
}

/// Whether the gateway is ready, and the details: each cluster's endpoints as the health checks and breakers
/// see them (`upstreams` repeats the default cluster's).
pub(crate) fn readiness(clusters: &Clusters) -> (bool, serde_json::Value) {
    let mut ready = true;
    let mut details = Vec::new();
    let mut upstreams = Vec::new();
    for cluster in clusters.iter() {
        let snapshot = cluster.upstream.snapshot();
        ready &= snapshot.ready;
        let endpoints: Vec<serde_json::Value> = snapshot
            .endpoints
            .iter()
            .map(|e| serde_json::json!({ "endpoint": e.address, "status": e.health, "breaker": e.breaker.state }))
            .collect();
        if cluster.name == crate::gateway::clusters::DEFAULT_CLUSTER {
            upstreams.clone_from(&endpoints);
        }
        details.push(serde_json::json!({ "name": cluster.name, "ready": snapshot.ready, "endpoints": endpoints }));
    }
    let status = if ready { "ready" } else { "not ready" };
    (ready, serde_json::json!({ "status": status, "upstreams": upstreams, "clusters": details }))
}

/// The OpenAPI document of the catalog serving now.
pub(crate) async fn openapi(State(state): State<Arc<GatewayState>>) -> Response {
    let document = state.catalog.current().openapi.clone();
    let mut response = Response::new(axum::body::Body::from(document));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
