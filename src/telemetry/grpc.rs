//! gRPC spans and labels: the gateway's client span per upstream attempt, and the UserService's server span
//! per call, named and attributed after the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`).
//!
//! Spans are only made when traces are exported (see `spans.rs`): without an exporter these return no span,
//! which costs nothing.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind};
use tonic::Code;

use crate::telemetry::spans::{self, RequestSpan};
use crate::telemetry::traces;

/// `package.Service` and `Method` of a gRPC path `/package.Service/Method`.
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The client span of one attempt of an upstream call: `rpc` is `package.Service/Method`, `endpoint` the
/// address picked for this attempt, `parent` the request's server span. Finish it with [`ClientSpan::finish`].
///
/// Nothing is logged inside an attempt, so unlike a request span it is not shared: the attempt owns it.
pub fn client_span(
    parent: Option<&SpanContext>,
    cluster: &str,
    rpc: &str,
    endpoint: &http::Uri,
    attempt: u32,
) -> ClientSpan {
    if !traces::enabled() {
        return ClientSpan(None);
    }
    let (service, method) = split_path(rpc);
    let mut attributes = Vec::with_capacity(8);
    attributes.extend([
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("server.address", endpoint.host().unwrap_or_default().to_owned()),
    ]);
    if let Some(port) = endpoint.port_u16() {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    attributes.extend([
        KeyValue::new("portico.cluster", cluster.to_owned()),
        KeyValue::new("portico.attempt", i64::from(attempt)),
    ]);
    ClientSpan(spans::start(rpc.to_owned(), SpanKind::Client, attributes, parent))
}

/// An upstream attempt's span (see [`client_span`]); none while traces are not exported.
pub struct ClientSpan(Option<opentelemetry_sdk::trace::Span>);

impl ClientSpan {
    /// The span's context, for the upstream's `traceparent`.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.0.as_ref().map(opentelemetry::trace::Span::span_context)
    }

    /// Records the attempt's gRPC status and ends the span; any code but OK marks a client span as an error.
    pub fn finish(self, code: Code) {
        let Some(mut span) = self.0 else { return };
        if span.is_recording() {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != Code::Ok {
                span.set_status(opentelemetry::trace::Status::error(""));
            }
        }
        span.end();
    }
}

/// The server span of a UserService call, continuing the caller's trace context from the request's
/// metadata (`traceparent`); `None` while traces are not exported.
pub fn server_span(path: &str, headers: &http::HeaderMap) -> Option<RequestSpan> {
    if !traces::enabled() {
        return None;
    }
    let (service, method) = split_path(path);
    let attributes = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
    ];
    RequestSpan::start(path.trim_start_matches('/').to_owned(), attributes, traces::remote_parent(headers).as_ref())
}

/// Records a call's gRPC status on its server span; codes that mean the server failed mark the span as an
/// error (per the RPC conventions, a client's mistake like NOT_FOUND does not, on the server).
pub fn record_server_code(span: &RequestSpan, code: Code) {
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.set_error();
    }
}

/// The `rpc` label of a UserService call: its path without the leading `/`, or `unknown` for a method the
/// server does not have (clients choose paths; labels must not grow with what they send).
pub fn rpc_label(path: &str, code: Code) -> String {
    if code == Code::Unimplemented { "unknown".to_owned() } else { path.trim_start_matches('/').to_owned() }
}
