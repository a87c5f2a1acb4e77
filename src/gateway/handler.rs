//! The request handler, in phases: match the route → transcode the request → call the upstream → respond.
//! Each phase is a function; errors from any of them become responses in `error.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use prost_reflect::DynamicMessage;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;

use crate::gateway::GatewayState;
use crate::gateway::error::GatewayError;
use crate::gateway::metadata;
use crate::gateway::peer::Peer;
use crate::gateway::rules::{BodyRule, CallKind, Route, RouteMatch};
use crate::gateway::stream::{self, NDJSON, RequestStreamLimits};
use crate::gateway::template::PathMatch;
use crate::gateway::transcode;
use crate::gateway::transcode::http_body;
use crate::telemetry::traces::ServerSpanContext;
use crate::upstream::CallOptions;

/// The route a request took, left in the response's extensions for the request log (a reference count, not
/// a copy of the name, on every request).
#[derive(Debug, Clone)]
pub struct RoutedRpc(pub Arc<Route>);

/// Serves every request that is not an operational endpoint.
pub async fn handle(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // The route (and through it the descriptors) is kept to the end of the request: a reload meanwhile
    // does not touch it.
    let catalog = state.catalog.current();
    let (route, path) = match catalog.routes.find(&parts.method, parts.uri.path()) {
        RouteMatch::Found(route, path) => (Arc::clone(route), path),
        RouteMatch::MethodNotAllowed(allow) => {
            let path = parts.uri.path().to_string();
            return GatewayError::MethodNotAllowed { method: parts.method, path, allow }.into_response();
        }
        RouteMatch::NotFound => {
            let path = parts.uri.path().to_string();
            return GatewayError::NoRoute { method: parts.method, path }.into_response();
        }
    };
    drop(catalog);
    let mut response = match route.kind {
        CallKind::Unary => unary(&state, &route, path, parts, body).await,
        CallKind::ServerStreaming => server_streaming(&state, &route, path, parts, body).await,
        CallKind::ClientStreaming => client_streaming(&state, &route, parts, body).await,
    }
    .unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RoutedRpc(route));
    response
}

async fn unary(
    state: &GatewayState,
    route: &Route,
    path: PathMatch,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = tokio::time::Instant::now();
    let body = read_body(route, &parts, body, state.config.max_body_bytes, state.config.body_read_timeout).await?;
    let request = match route.path_only.as_ref().and_then(|plan| plan.request(&path, parts.uri.query(), &body)) {
        Some(wire) => wire?,
        None => encode(&transcode_request(state, route, path, &parts, body)?),
    };
    let client_timeout = metadata::client_timeout(&parts.headers)?;
    let timeout = metadata::deadline(client_timeout, state.config.default_timeout);
    let options = call_options(route, &parts, timeout, timeout != state.config.default_timeout, started)?;
    let response = state.clusters.get(route.cluster).upstream.unary(&route.grpc, &options, request).await?;
    json_response(route, response)
}

fn call_options(
    route: &Route,
    parts: &Parts,
    timeout: Option<Duration>,
    client_deadline: bool,
    started: tokio::time::Instant,
) -> Result<CallOptions, GatewayError> {
    Ok(CallOptions {
        metadata: request_metadata(parts)?,
        idempotent: route.idempotent,
        timeout,
        started,
        client_deadline,
        trace_parent: parts.extensions.get::<ServerSpanContext>().map(|parent| parent.0.clone()),
    })
}

fn encode(message: &DynamicMessage) -> Bytes {
    Bytes::from(prost::Message::encode_to_vec(message))
}

/// Reads the body and transcodes path, query and body into the request message.
async fn request_message(
    state: &GatewayState,
    route: &Route,
    path: PathMatch,
    parts: &Parts,
    body: Body,
) -> Result<DynamicMessage, GatewayError> {
    let body = read_body(route, parts, body, state.config.max_body_bytes, state.config.body_read_timeout).await?;
    transcode_request(state, route, path, parts, body)
}

/// Transcodes path, query and the body read into the request message.
fn transcode_request(
    state: &GatewayState,
    route: &Route,
    path: PathMatch,
    parts: &Parts,
    body: Bytes,
) -> Result<DynamicMessage, GatewayError> {
    if route.raw_request_body {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        return transcode::raw_body_request_message(
            route,
            path,
            parts.uri.query(),
            body,
            content_type,
            &state.config.transcode,
        );
    }
    transcode::request_message(route, path, parts.uri.query(), &body, &state.config.transcode)
}

/// A unary answer (the response message's wire bytes) as proto3 JSON, or the raw bytes of a
/// google.api.HttpBody answer, with the upstream's response metadata as `Grpc-Metadata-*` headers.
fn json_response(route: &Route, response: tonic::Response<Bytes>) -> Result<Response, GatewayError> {
    let (metadata, wire, _) = response.into_parts();
    let mut response = if route.raw_response_body {
        let message = transcode::decode_answer(&route.grpc.response, &wire)?;
        let (content_type, data) = http_body::response_parts(route, &message);
        let mut response = Response::new(Body::from(data));
        response.headers_mut().insert(header::CONTENT_TYPE, raw_content_type(&content_type));
        response
    } else {
        let json = transcode::wire_response_json(route, &wire)?;
        let mut response = Response::new(Body::from(json));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    metadata::response_headers(metadata, response.headers_mut());
    Ok(response)
}

/// The Content-Type of a raw answer: what the service set, or `application/octet-stream` when it set none or
/// something that is not a media type (`type/subtype`, optionally with parameters).
pub(crate) fn raw_content_type(content_type: &str) -> HeaderValue {
    Some(content_type)
        .filter(|text| is_media_type(text))
        .and_then(|text| HeaderValue::from_str(text).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"))
}

/// `type/subtype` made of RFC 9110 token characters, then anything as parameters after a `;`.
fn is_media_type(text: &str) -> bool {
    let essence = text.split(';').next().unwrap_or_default().trim();
    let token = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    essence.split_once('/').is_some_and(|(kind, subtype)| token(kind) && token(subtype))
        && text.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

async fn server_streaming(
    state: &GatewayState,
    route: &Route,
    path: PathMatch,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = tokio::time::Instant::now();
    let mut message = request_message(state, route, path, &parts, body).await?;
    resume_from_last_event_id(route, &parts, &mut message)?;
    // Streams may be long-lived: only a deadline the client asked for applies.
    let timeout = metadata::client_timeout(&parts.headers)?;
    // The deadline counts from the request's arrival, not from the moment the stream starts.
    let expires_at = timeout.map(|d| started + d);
    let options = call_options(route, &parts, timeout, timeout.is_some(), started)?;
    // Taken before the upstream call: a stream beyond the cap never reaches the upstream.
    let slot = state.streams.take()?;
    let (response, lease) =
        state.clusters.get(route.cluster).upstream.server_streaming(&route.grpc, &options, encode(&message)).await?;
    let upstream = response.into_inner();

    let wants_sse = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("text/event-stream"));
    let upstream = stream::with_deadline(state.until_shutdown(upstream), expires_at);
    if route.raw_response_body {
        return stream::download_response(route, upstream, lease).await.map(|r| slot.hold_until_body_ends(r));
    }
    Ok(slot.hold_until_body_ends(if wants_sse {
        stream::sse_response(route, upstream, lease, state.config.sse_keep_alive)
    } else {
        stream::ndjson_response(upstream, lease)
    }))
}

/// A reconnecting EventSource sends `Last-Event-ID`; it becomes the route's resume field, so the stream goes
/// on right after the last event the client saw. It overrides the same field in the query string, which
/// holds the position of the original request.
fn resume_from_last_event_id(route: &Route, parts: &Parts, message: &mut DynamicMessage) -> Result<(), GatewayError> {
    let (Some(field), Some(value)) = (&route.sse.resume_field, parts.headers.get("last-event-id")) else {
        return Ok(());
    };
    let text =
        value.to_str().map_err(|_| GatewayError::BadRequest("Last-Event-ID must be visible ASCII".into()))?.trim();
    if text.is_empty() {
        return Ok(());
    }
    let value =
        transcode::scalar_value(field, text).map_err(|e| GatewayError::BadRequest(format!("Last-Event-ID: {e}")))?;
    message.set_field(field, value);
    Ok(())
}

async fn client_streaming(
    state: &GatewayState,
    route: &Route,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = tokio::time::Instant::now();
    check_content_type(&parts, &["application/json", NDJSON, "application/jsonl", "application/x-jsonlines"])?;
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty())
        && state.config.transcode.unknown_query_params == transcode::UnknownQueryParams::Reject
    {
        return Err(GatewayError::BadRequest(format!(
            "unknown query parameters {query:?}: a streamed request takes every field from its body"
        )));
    }
    if let Some(length) = content_length(&parts)
        && length > state.config.max_body_bytes
    {
        return Err(GatewayError::PayloadTooLarge { limit: state.config.max_body_bytes });
    }
    let client_timeout = metadata::client_timeout(&parts.headers)?;
    let timeout = metadata::deadline(client_timeout, state.config.default_timeout);
    let options = call_options(route, &parts, timeout, timeout != state.config.default_timeout, started)?;
    let limits = RequestStreamLimits {
        idle_timeout: state.config.body_read_timeout,
        max_body_bytes: state.config.max_body_bytes,
        max_message_bytes: state.config.max_body_bytes,
        max_depth: state.config.transcode.max_json_depth,
        array_only: declared_media_type(&parts).is_some_and(|media_type| media_type == "application/json"),
    };

    let (sink, messages) = mpsc::channel(16);
    let call = state.clusters.get(route.cluster).upstream.client_streaming(&route.grpc, &options, messages);
    let feed = stream::feed_request_stream(body, route.rpc.input(), limits, sink);
    tokio::pin!(call, feed);
    // Both run together, so each message goes upstream as it arrives. A body error wins over the call's
    // status: the feed has already aborted the upstream call.
    let mut feeding = true;
    let response = loop {
        tokio::select! {
            fed = &mut feed, if feeding => {
                fed?;
                feeding = false;
            }
            response = &mut call => {
                if feeding {
                    // The upstream answered before the body was complete (typically an error on an early
                    // item): report the body's problem if it has one ready, else the upstream's answer.
                    if let Some(Err(error)) = futures::FutureExt::now_or_never(&mut feed) {
                        return Err(error);
                    }
                }
                break response?;
            }
        }
    };
    json_response(route, response)
}

fn request_metadata(parts: &Parts) -> Result<MetadataMap, GatewayError> {
    metadata::request_metadata(&parts.headers, parts.extensions.get::<Peer>())
}

/// Reads a unary body: JSON (415 otherwise, checked before reading), within the size limit (413) and within the
/// body read timeout (408), so a client that sends its body slowly cannot hold a connection forever.
async fn read_body(
    route: &Route,
    parts: &Parts,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, GatewayError> {
    if !matches!(route.body, BodyRule::None) && !route.raw_request_body && has_body(parts) {
        check_content_type(parts, &["application/json"])?;
    }
    if let Some(length) = content_length(parts)
        && length > limit
    {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    // No body at all (a GET, a DELETE): nothing to wait for, so no timer to arm and cancel.
    if ::http_body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let collected = tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect())
        .await
        .map_err(|_| GatewayError::BodyTimeout(timeout))?;
    let bytes = collected.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            GatewayError::PayloadTooLarge { limit }
        } else {
            GatewayError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    Ok(bytes.to_bytes())
}

/// Whether the request announces a body (a non-zero Content-Length, or chunked transfer).
fn has_body(parts: &Parts) -> bool {
    content_length(parts).is_some_and(|length| length > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING)
}

fn content_length(parts: &Parts) -> Option<usize> {
    parts.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The media type of the request's Content-Type, lowercased, without parameters.
fn declared_media_type(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(header::CONTENT_TYPE)?;
    Some(value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// A body must be declared as one of `accepted` (parameters such as charset ignored; any `+json` type is
/// JSON). A missing Content-Type is taken as JSON, for hand-written requests.
fn check_content_type(parts: &Parts, accepted: &[&'static str]) -> Result<(), GatewayError> {
    let Some(essence) = declared_media_type(parts) else { return Ok(()) };
    if accepted.contains(&essence.as_str()) || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType { got: essence, expected: accepted[0] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_answers_carry_only_well_formed_media_types() {
        for (given, sent) in [
            ("text/csv", "text/csv"),
            ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
            ("application/vnd.api+json", "application/vnd.api+json"),
            ("", "application/octet-stream"),
            ("csv", "application/octet-stream"),
            ("text/", "application/octet-stream"),
            ("te xt/plain", "application/octet-stream"),
            ("text/plain\u{7f}", "application/octet-stream"),
            ("gýÚô/x", "application/octet-stream"),
        ] {
            assert_eq!(raw_content_type(given), sent, "{given:?}");
        }
    }
}
