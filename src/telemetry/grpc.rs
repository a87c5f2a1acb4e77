//! gRPC spans and labels: the gateway's client span per upstream attempt, and the UserService's server span
//! per call, named and attributed after the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`).
//!
//! Spans are only made when traces are exported: without an exporter these return [`tracing::Span::none`],
//! which costs nothing.

use tonic::Code;
use tracing::field::Empty;

use crate::telemetry::traces;

/// `package.Service` and `Method` of a gRPC path `/package.Service/Method`.
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The client span of one attempt of an upstream call: `path` is `/package.Service/Method`, `endpoint` the
/// address picked for this attempt. Record the outcome with [`record_code`].
pub fn client_span(cluster: &str, path: &str, endpoint: &http::Uri, attempt: u32) -> tracing::Span {
    if !traces::enabled() {
        return tracing::Span::none();
    }
    let (service, method) = split_path(path);
    tracing::info_span!(
        "grpc.client",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        server.address = endpoint.host().unwrap_or_default(),
        server.port = endpoint.port_u16().map(i64::from),
        portico.cluster = cluster,
        portico.attempt = attempt,
    )
}

/// The server span of a UserService call, continuing the caller's trace context from the request's
/// metadata (`traceparent`).
pub fn server_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !traces::enabled() {
        return tracing::Span::none();
    }
    let (service, method) = split_path(path);
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
    );
    traces::set_parent(&span, headers);
    span
}

/// Records a call's or an attempt's gRPC status on its span; codes that mean the server failed mark the
/// span as an error (per the RPC conventions, a client's mistake like NOT_FOUND does not, on the server).
pub fn record_code(span: &tracing::Span, code: Code, server: bool) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    let error = if server {
        matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        )
    } else {
        code != Code::Ok
    };
    if error {
        span.record("otel.status_code", "error");
    }
}

/// The `rpc` label of a UserService call: its path without the leading `/`, or `unknown` for a method the
/// server does not have (clients choose paths; labels must not grow with what they send).
pub fn rpc_label(path: &str, code: Code) -> String {
    if code == Code::Unimplemented { "unknown".to_owned() } else { path.trim_start_matches('/').to_owned() }
}
