//! Streams over HTTP: server streams as Server-Sent Events or NDJSON, client streams from a JSON array or
//! NDJSON body.
//!
//! SSE (`Accept: text/event-stream`): one `data:` event per message, its `id:` from the route's
//! `event_id_field`, keep-alive comments, and an `error` event carrying the google.rpc.Status on failure.
//! Otherwise NDJSON, grpc-gateway's format: `{"result": …}` lines and a final `{"error": …}` on failure.
//! The upstream stream lives inside the response body: a client that goes away drops the body, which drops
//! the upstream call (RST_STREAM), which ends the server's work.

pub mod split;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, header};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tokio::sync::mpsc;

use crate::gateway::error::{GatewayError, status_json};
use crate::gateway::handler::raw_content_type;
use crate::gateway::rules::Route;
use crate::gateway::transcode::http_body;
use crate::gateway::transcode::{message_json, parse_message};
use crate::upstream::Lease;
use crate::upstream::call::StreamItem;
use split::{JsonSplitter, SplitLimits};

/// The messages of a server stream, as they arrive from the upstream; an `Err` ends it.
pub trait UpstreamStream: Stream<Item = Result<DynamicMessage, tonic::Status>> + Send + 'static {}

impl<S: Stream<Item = Result<DynamicMessage, tonic::Status>> + Send + 'static> UpstreamStream for S {}

/// Ends `upstream` with DEADLINE_EXCEEDED when `expires_at` passes first. tonic times only the wait for the
/// response headers, so a stream's deadline is enforced here, for the whole stream.
pub fn with_deadline(upstream: impl UpstreamStream, expires_at: Option<tokio::time::Instant>) -> impl UpstreamStream {
    let expired = expires_at.map(tokio::time::sleep_until);
    futures::stream::unfold(
        (Box::pin(upstream), expired.map(Box::pin), false),
        |(mut upstream, mut expired, done)| async move {
            if done {
                return None;
            }
            let next = match expired.as_mut() {
                Some(timer) => tokio::select! {
                    item = upstream.next() => item,
                    () = timer.as_mut() => Some(Err(tonic::Status::deadline_exceeded("the deadline expired during the stream"))),
                },
                None => upstream.next().await,
            };
            let last = matches!(next, Some(Err(_)));
            next.map(|item| (item, (upstream, expired, last)))
        },
    )
}

/// The NDJSON media type used for streams.
pub const NDJSON: &str = "application/x-ndjson";

/// A server stream as SSE. `lease` keeps the upstream connection counted as busy until the stream ends.
pub fn sse_response(route: &Route, upstream: impl UpstreamStream, lease: Lease, keep_alive: Duration) -> Response {
    let id_field = route.sse.event_id_field.clone();
    let events = rendered_items(upstream, lease).map(move |item| {
        let event = match item {
            Ok((message, data)) => {
                let mut event = Event::default().data(String::from_utf8_lossy(&data));
                if let Some(field) = &id_field {
                    event = event.id(event_id(&message.get_field(field)));
                }
                event
            }
            Err(status) => Event::default().event("error").data(String::from_utf8_lossy(&error_json(&status))),
        };
        Ok::<_, Infallible>(event)
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)).into_response();
    // Proxies (nginx) must pass events through as they come.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A server stream as NDJSON lines.
pub fn ndjson_response(upstream: impl UpstreamStream, lease: Lease) -> Response {
    let lines = rendered_items(upstream, lease).map(|item| {
        // Written by hand around the already-serialized message, so field order is kept and nothing is
        // parsed twice.
        let (key, json) = match item {
            Ok((_, json)) => (&b"{\"result\":"[..], Bytes::from(json)),
            Err(status) => (&b"{\"error\":"[..], error_json(&status)),
        };
        let mut line = Vec::with_capacity(key.len() + json.len() + 2);
        line.extend_from_slice(key);
        line.extend_from_slice(&json);
        line.extend_from_slice(b"}\n");
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A server stream of `google.api.HttpBody` as a streamed download: the Content-Type of the first message,
/// then each message's data as it arrives. An error before the first message is an ordinary error response;
/// an error later cuts the body off (an HTTP/2 reset, or a closed HTTP/1.1 connection without the final
/// chunk), so a client never mistakes a truncated download for a complete one.
pub async fn download_response(
    route: &Route,
    upstream: impl UpstreamStream,
    lease: Lease,
) -> Result<Response, GatewayError> {
    // Fused: the first message is awaited here, and a stream that ended before it must not be polled again.
    let mut items = Box::pin(stream_items(upstream, lease).fuse());
    let (content_type, first) = match items.next().await {
        Some(Ok(message)) => http_body::response_parts(route, &message),
        Some(Err(status)) => return Err(GatewayError::Upstream(status)),
        None => (String::new(), Bytes::new()),
    };
    let route = route.clone();
    let rest = items.map(move |item| match item {
        Ok(message) => Ok(http_body::response_parts(&route, &message).1),
        Err(status) => Err(std::io::Error::other(format!("the stream failed: {}", status.message()))),
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, raw_content_type(&content_type));
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The upstream messages with their JSON, then at most one error. A message that cannot be rendered (an Any
/// whose type the descriptors lack, say) ends the stream with an INTERNAL error event or line, rather than an
/// empty event or an invalid line that the client would take for data.
fn rendered_items(
    upstream: impl UpstreamStream,
    lease: impl Send + 'static,
) -> impl Stream<Item = Result<(DynamicMessage, Vec<u8>), tonic::Status>> + Send + 'static {
    let rendered = upstream.map(|item| {
        let message = item?;
        match message_json(&message) {
            Ok(json) => Ok((message, json)),
            Err(error) => Err(tonic::Status::internal(format!("a stream message cannot be rendered as JSON: {error}"))),
        }
    });
    stream_items(rendered, lease)
}

/// The items, then at most one error; the lease (whatever keeps the upstream counted as busy) is released when
/// the stream ends or is dropped.
fn stream_items<T: Send + 'static>(
    upstream: impl Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    lease: impl Send + 'static,
) -> impl Stream<Item = Result<T, tonic::Status>> + Send + 'static {
    futures::stream::unfold(Some((Box::pin(upstream), lease)), |state| async move {
        let (mut upstream, lease) = state?;
        match upstream.next().await? {
            Ok(message) => Some((Ok(message), Some((upstream, lease)))),
            Err(status) => Some((Err(status), None)),
        }
    })
}

fn error_json(status: &tonic::Status) -> Bytes {
    status_json(status.code(), status.message(), status.details())
}

/// The SSE id for a field value: its decimal or string form; the default value gives an empty id (which
/// resets the client's last event id, so a reconnect starts over rather than resuming from a bogus point).
fn event_id(value: &Value) -> String {
    let text = match value {
        Value::I64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::String(v) => v.clone(),
        _ => String::new(),
    };
    if text == "0" { String::new() } else { text.replace(['\n', '\r'], "") }
}

/// Limits for a streamed request body.
#[derive(Debug, Clone, Copy)]
pub struct RequestStreamLimits {
    /// The longest wait for the next piece of the body.
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_depth: usize,
    /// The body was declared `application/json`: one JSON array, not NDJSON.
    pub array_only: bool,
}

/// Feeds a JSON-array or NDJSON `body` into `sink` as request messages, one as soon as it has arrived.
///
/// A body read to its end closes the stream with [`StreamItem::End`]. On any problem (bad framing, invalid
/// message, body too large, broken connection) a [`StreamItem::Failed`] goes into the sink instead, which
/// aborts the upstream call rather than ending it cleanly, and the error is returned for the client; so does
/// a sink dropped without either (the client went away and this future with it).
pub async fn feed_request_stream(
    body: Body,
    descriptor: MessageDescriptor,
    limits: RequestStreamLimits,
    sink: mpsc::Sender<StreamItem>,
) -> Result<(), GatewayError> {
    let result = read_messages(body, &descriptor, limits, &sink).await;
    let last = match &result {
        Ok(()) => StreamItem::End,
        Err(error) => {
            StreamItem::Failed(tonic::Status::cancelled(format!("the HTTP client's request stream failed: {error}")))
        }
    };
    // If the upstream has stopped reading, the channel may be full; it is dropped either way after this.
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.send(last)).await;
    result
}

async fn read_messages(
    body: Body,
    descriptor: &MessageDescriptor,
    limits: RequestStreamLimits,
    sink: &mpsc::Sender<StreamItem>,
) -> Result<(), GatewayError> {
    let mut splitter = JsonSplitter::new(SplitLimits {
        max_message_bytes: limits.max_message_bytes,
        max_depth: limits.max_depth,
        array_only: limits.array_only,
    });
    let mut chunks = body.into_data_stream();
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(limits.idle_timeout, chunks.next())
            .await
            .map_err(|_| GatewayError::BodyTimeout(limits.idle_timeout))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| GatewayError::BadRequest(format!("cannot read the request body: {e}")))?;
        total += chunk.len();
        if total > limits.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge { limit: limits.max_body_bytes });
        }
        let pieces = splitter.push(&chunk).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        // `emitted` already counts every piece of this chunk; number them from the first.
        let first_index = splitter.emitted() - pieces.len();
        for (offset, piece) in pieces.into_iter().enumerate() {
            let index = first_index + offset;
            let message = parse_message(descriptor, &piece, limits.max_depth).map_err(|e| match e {
                GatewayError::BadRequest(message) => GatewayError::BadRequest(format!("message {index}: {message}")),
                other => other,
            })?;
            if sink.send(StreamItem::Message(prost::Message::encode_to_vec(&message).into())).await.is_err() {
                // The upstream call is over; its status is what the client gets.
                return Ok(());
            }
        }
    }
    splitter.finish().map_err(|e| GatewayError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Any whose type the descriptors do not know cannot be rendered as proto3 JSON.
    fn unrenderable() -> DynamicMessage {
        let any = crate::proto::DESCRIPTOR_POOL.get_message_by_name("google.protobuf.Any").expect("Any in the pool");
        let mut message = DynamicMessage::new(any);
        message.set_field_by_name("type_url", Value::String("type.googleapis.com/not.Known".into()));
        message
    }

    fn renderable() -> DynamicMessage {
        let empty = crate::proto::DESCRIPTOR_POOL.get_message_by_name("google.protobuf.Empty").expect("Empty");
        DynamicMessage::new(empty)
    }

    #[tokio::test]
    async fn a_message_that_cannot_be_rendered_ends_the_stream_with_an_error() {
        let upstream = futures::stream::iter([Ok(renderable()), Ok(unrenderable()), Ok(renderable())]);
        let items: Vec<_> = rendered_items(upstream, ()).collect().await;
        assert_eq!(items.len(), 2, "the stream ends at the message it cannot render");
        assert!(items[0].as_ref().is_ok_and(|(_, json)| json == b"{}"));
        let error = items[1].as_ref().expect_err("an error item");
        assert_eq!(error.code(), tonic::Code::Internal);
        assert!(error.message().contains("cannot be rendered"), "{}", error.message());
    }
}
