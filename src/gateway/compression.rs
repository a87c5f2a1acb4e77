//! Response compression that costs nothing on the responses it leaves alone.
//!
//! tower-http's compression body is an enum with every encoder's state inline, brotli's included, so each
//! response that passes through its layer carries more than 5 KiB, compressed or not. Most are not: every SSE
//! and NDJSON stream (whose events must not wait in an encoder), small answers, clients without
//! `Accept-Encoding`. For a long-lived stream that is 5 KiB per watcher for its whole life, so a response that
//! was not encoded gets its own body back.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_ENCODING;
use tower_http::compression::CompressionBody;

/// Unwraps the body of a response the compression layer did not encode; an encoded one keeps its encoder.
/// Use it with `map_response` just outside the `CompressionLayer`.
pub fn unwrap_unencoded<B>(response: http::Response<CompressionBody<B>>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let (parts, body) = response.into_parts();
    // The layer marks what it encodes with Content-Encoding. A response that came with its own encoding is
    // passed through by the layer, so keeping the wrapper for it changes nothing.
    let body =
        if parts.headers.contains_key(CONTENT_ENCODING) { Body::new(body) } else { Body::new(body.into_inner()) };
    Response::from_parts(parts, body)
}
