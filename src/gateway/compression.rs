//! Response compression that costs nothing on the responses it leaves alone.
//!
//! tower-http's compression body is an enum with every encoder's state inline, brotli's included, so each
//! response that passes through its layer carries more than 5 KiB, compressed or not. Most are not: every SSE
//! and NDJSON stream (whose events must not wait in an encoder), small answers, clients without
//! `Accept-Encoding`. For a long-lived stream that is 5 KiB per watcher for its whole life, so a response that
//! was not encoded gets its own body back.
//!
//! [`Compressible`] decides which responses are encoded at all.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use tower_http::compression::CompressionBody;
use tower_http::compression::Predicate;

use crate::gateway::stream::NDJSON;

/// The responses the compression layer encodes, when the client accepts an encoding: not a body known to be
/// under 32 bytes, nor gRPC, nor an image (SVG excepted), nor a stream (SSE and NDJSON: an event must not wait
/// in an encoder's buffer). That is tower-http's `DefaultPredicate` with NDJSON added, decided with one look
/// at the content type where the four predicates combined looked it up four times, on every response,
/// whatever the client accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compressible;

impl Predicate for Compressible {
    fn should_compress<B: http_body::Body>(&self, response: &http::Response<B>) -> bool {
        const MIN_BYTES: u64 = 32;
        const NEVER: [&[u8]; 4] = [b"application/grpc", b"image/", b"text/event-stream", NDJSON.as_bytes()];
        let size = response
            .body()
            .size_hint()
            .exact()
            .or_else(|| response.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok());
        if size.is_some_and(|size| size < MIN_BYTES) {
            return false;
        }
        // A value that is not visible ASCII reads as no content type, as tower-http reads it.
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
        content_type == "image/svg+xml" || !NEVER.iter().any(|never| content_type.as_bytes().starts_with(never))
    }
}

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

#[cfg(test)]
mod tests {
    use tower_http::compression::predicate::{DefaultPredicate, NotForContentType};

    use super::*;

    #[test]
    fn compressible_agrees_with_tower_https_predicates() -> Result<(), http::Error> {
        let tower = DefaultPredicate::new().and(NotForContentType::const_new(NDJSON));
        let content_types = [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("application/grpc"),
            Some("application/grpc+proto"),
            Some("image/png"),
            Some("image/svg+xml"),
            Some("text/event-stream"),
            Some("text/html"),
            Some(NDJSON),
            Some("application/x-ndjson; charset=utf-8"),
        ];
        for content_type in content_types {
            for body in ["", "short", &"x".repeat(31), &"x".repeat(32), &"x".repeat(500)] {
                for content_length in [None, Some("10"), Some("4096"), Some("junk")] {
                    let response = |body: Option<&str>| {
                        let mut builder = http::Response::builder();
                        if let Some(content_type) = content_type {
                            builder = builder.header(CONTENT_TYPE, content_type);
                        }
                        if let Some(length) = content_length {
                            builder = builder.header(CONTENT_LENGTH, length);
                        }
                        // A body of known size, or one whose size is unknown until it ends (a stream).
                        let body = match body {
                            Some(body) => {
                                http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(body.to_owned())))
                            }
                            None => http_body_util::Either::Right(http_body_util::StreamBody::new(
                                futures::stream::empty::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(),
                            )),
                        };
                        builder.body(body)
                    };
                    let known = response(Some(body))?;
                    let unknown = response(None)?;
                    let case = format!("{content_type:?} {} bytes, content-length {content_length:?}", body.len());
                    assert_eq!(Compressible.should_compress(&known), tower.should_compress(&known), "{case}");
                    assert_eq!(Compressible.should_compress(&unknown), tower.should_compress(&unknown), "{case}");
                }
            }
        }
        Ok(())
    }
}
