//! Response compression that costs nothing on the responses it leaves alone.
//!
//! tower-http's compression body is an enum with every encoder's state inline, brotli's included, so each
//! response that passes through its layer carries more than 5 KiB, compressed or not, and that much is moved
//! through every future and adapter on the way out. Most responses are not encoded: every SSE and NDJSON stream
//! (whose events must not wait in an encoder), small answers, and every request without `Accept-Encoding`
//! (curl's, most API clients'). So [`CompressWhenAcceptedLayer`] sends a request that accepts no encoding
//! past tower-http altogether, writing the one header tower-http would have added (`Vary: accept-encoding`), and
//! a response that tower-http did not encode gets its own body back. For a long-lived stream that is 5 KiB per
//! watcher for its whole life.
//!
//! [`Compressible`] decides which responses are encoded at all.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::BoxError;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderValue, Request};
use tower::{Layer, Service};
use tower_http::compression::{Compression, CompressionBody, CompressionLayer, Predicate};

use crate::gateway::stream::NDJSON;

/// Compresses responses with tower-http's [`CompressionLayer`] when the request has `Accept-Encoding`, and
/// only then (see the module's text).
#[derive(Debug, Clone, Default)]
pub struct CompressWhenAcceptedLayer {
    compression: CompressionLayer<Compressible>,
}

impl CompressWhenAcceptedLayer {
    pub fn new() -> Self {
        Self { compression: CompressionLayer::new().compress_when(Compressible) }
    }
}

impl<S> Layer<S> for CompressWhenAcceptedLayer {
    type Service = CompressWhenAccepted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CompressWhenAccepted { inner, compression: self.compression.clone() }
    }
}

/// See [`CompressWhenAcceptedLayer`].
#[derive(Debug, Clone)]
pub struct CompressWhenAccepted<S> {
    inner: S,
    compression: CompressionLayer<Compressible>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CompressWhenAccepted<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CompressFuture<S::Future, <Compression<S, Compressible> as Service<Request<ReqBody>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !request.headers().contains_key(ACCEPT_ENCODING) {
            return CompressFuture::Identity { inner: self.inner.call(request) };
        }
        // The service that was polled ready serves this request, inside tower-http's layer (whose readiness is
        // its inner service's); the clone waits for the next one.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        CompressFuture::Negotiated { inner: self.compression.layer(ready).call(request) }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`CompressWhenAccepted`]: straight from the inner service, or through tower-http.
    #[project = CompressFutureProjection]
    pub enum CompressFuture<Identity, Negotiated> {
        Identity { #[pin] inner: Identity },
        Negotiated { #[pin] inner: Negotiated },
    }
}

impl<Identity, Negotiated, B, E> Future for CompressFuture<Identity, Negotiated>
where
    Identity: Future<Output = Result<http::Response<B>, E>>,
    Negotiated: Future<Output = Result<http::Response<CompressionBody<B>>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CompressFutureProjection::Identity { inner } => {
                let mut response = ready!(inner.poll(cx))?;
                vary_as_tower_http_would(&mut response);
                Poll::Ready(Ok(response.map(Body::new)))
            }
            CompressFutureProjection::Negotiated { inner } => {
                Poll::Ready(Ok(unwrap_unencoded(ready!(inner.poll(cx))?)))
            }
        }
    }
}

/// What tower-http's layer does to a response it does not encode for a request that accepts only identity:
/// a response it would encode for another client varies with `Accept-Encoding`, so caches must know.
fn vary_as_tower_http_would<B: http_body::Body>(response: &mut http::Response<B>) {
    let headers = response.headers();
    let encodable = !headers.contains_key(CONTENT_ENCODING)
        && !headers.contains_key(CONTENT_RANGE)
        && Compressible.should_compress(response);
    if encodable && !varies_with_accept_encoding(response.headers()) {
        response.headers_mut().append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

fn varies_with_accept_encoding(headers: &HeaderMap) -> bool {
    const NAME: &[u8] = b"accept-encoding";
    headers.get_all(VARY).iter().any(|value| value.as_bytes().windows(NAME.len()).any(|w| w.eq_ignore_ascii_case(NAME)))
}

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
fn unwrap_unencoded<B>(response: http::Response<CompressionBody<B>>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
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

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// Answers with the content type, Vary, Content-Encoding and Content-Range the request asks for (in
    /// `x-answer-*` headers), and a body of `x-answer-bytes` bytes.
    async fn answer(request: Request<Body>) -> Result<http::Response<Body>, std::convert::Infallible> {
        let asked = |name: &str| request.headers().get(format!("x-answer-{name}"));
        let mut response = http::Response::builder();
        for (name, header) in
            [("content-type", CONTENT_TYPE), ("vary", VARY), ("encoding", CONTENT_ENCODING), ("range", CONTENT_RANGE)]
        {
            if let Some(value) = asked(name) {
                response = response.header(header, value);
            }
        }
        let bytes = asked("bytes").and_then(|value| value.to_str().ok()?.parse().ok()).unwrap_or(0);
        let body = Body::from("{\"name\": \"Ada Lovelace\"}".repeat(bytes / 24 + 1)[..bytes].to_owned());
        Ok(response.body(body).unwrap_or_default())
    }

    async fn parts(response: Response) -> (http::StatusCode, Vec<(String, String)>, Bytes) {
        let (parts, body) = response.into_parts();
        let mut headers: Vec<_> = parts
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        headers.sort();
        (parts.status, headers, body.collect().await.map(|body| body.to_bytes()).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_layer_answers_exactly_as_tower_https_layer() -> Result<(), http::Error> {
        let ours = CompressWhenAcceptedLayer::new().layer(tower::service_fn(answer));
        let tower = tower::ServiceBuilder::new()
            .map_response(unwrap_unencoded)
            .layer(CompressionLayer::new().compress_when(Compressible))
            .service_fn(answer);
        let mut cases = 0;
        for accept in [None, Some("gzip"), Some("br;q=1, gzip;q=0.5"), Some("identity"), Some("identity;q=0")] {
            for content_type in [None, Some("application/json"), Some("text/event-stream"), Some(NDJSON)] {
                for vary in [None, Some("origin"), Some("Accept-Encoding")] {
                    for (encoding, range) in [(None, None), (Some("gzip"), None), (None, Some("bytes 0-99/500"))] {
                        for bytes in ["0", "31", "4000"] {
                            let mut request = Request::builder().uri("/v1/users").header("x-answer-bytes", bytes);
                            let headers = [
                                ("accept-encoding", accept),
                                ("x-answer-content-type", content_type),
                                ("x-answer-vary", vary),
                                ("x-answer-encoding", encoding),
                                ("x-answer-range", range),
                            ];
                            for (name, value) in headers {
                                if let Some(value) = value {
                                    request = request.header(name, value);
                                }
                            }
                            let ours = ours.clone().oneshot(request_copy(&request)?).await;
                            let tower = tower.clone().oneshot(request_copy(&request)?).await;
                            let (Ok(ours), Ok(tower)) = (ours, tower);
                            let case = format!("{headers:?} {bytes} bytes");
                            let (ours, tower) = (parts(ours).await, parts(tower).await);
                            assert_eq!((ours.0, &ours.1), (tower.0, &tower.1), "{case}");
                            assert!(ours.2 == tower.2, "{case}: the bodies differ");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 4 * 3 * 3 * 3);
        Ok(())
    }

    fn request_copy(builder: &http::request::Builder) -> Result<Request<Body>, http::Error> {
        let mut request = Request::builder().uri("/v1/users");
        for (name, value) in builder.headers_ref().into_iter().flatten() {
            request = request.header(name, value);
        }
        request.body(Body::empty())
    }

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
