//! The gateway's HTTP server layer: one span per request when traces are exported (continuing the client's
//! `traceparent`), the request log line (`access_log.rs`), the `traceresponse` header, and the request metrics (duration by method, route template
//! and status; requests in flight; open streams; body bytes).
//!
//! The span and the metrics last as long as the response body: a server stream is one span and one
//! observation for its whole life, with an event per message rather than a span.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::MatchedPath;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use opentelemetry::KeyValue;
use prometheus_client::metrics::gauge::Gauge;
use tower::{Layer, Service};

use crate::gateway::handler::RoutedRpc;
use crate::gateway::rules::Route;
use crate::telemetry::metrics::{self, HandleCache, RequestLabels, RouteLabels};
use crate::telemetry::spans::RequestSpan;
use crate::telemetry::{access_log, traces};

/// The request id header, set (or kept from the client) by the layer in front of this one.
/// A constant name, not a `&str`: a `&str` key is parsed and checked on every lookup.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The route label of a request that matched no route.
static UNMATCHED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("unmatched"));

/// Finds the route template of a request before it is handled, so the span can be named after it. Only
/// called when traces are exported.
pub type RouteHint = Arc<dyn Fn(&Method, &str) -> Option<Arc<str>> + Send + Sync>;

/// Adds [`HttpTelemetry`] to a service.
#[derive(Clone)]
pub struct HttpTelemetryLayer {
    route_hint: RouteHint,
}

impl HttpTelemetryLayer {
    /// Registers the gateway's metric families (so they show before the first request).
    pub fn new(route_hint: RouteHint) -> Self {
        let _ = metrics::gateway();
        Self { route_hint }
    }
}

impl<S> Layer<S> for HttpTelemetryLayer {
    type Service = HttpTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpTelemetry { inner, route_hint: Arc::clone(&self.route_hint) }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct HttpTelemetry<S> {
    inner: S,
    route_hint: RouteHint,
}

impl<S, B> Service<Request<Body>> for HttpTelemetry<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let matched: Option<Arc<str>> = request.extensions().get::<MatchedPath>().map(|path| Arc::from(path.as_str()));
        let span = if traces::enabled() { self.server_span(&request, method.clone(), matched.as_ref()) } else { None };
        if let Some(span) = &span {
            request.extensions_mut().insert(traces::ServerSpanContext(span.span_context().clone()));
        }
        // What the request line needs from the request: a reference count on the path, a copy of the id.
        let logged = access_log::enabled()
            .then(|| (request.uri().clone(), request.headers().get(&REQUEST_ID).cloned(), request.method().clone()));
        let gateway = metrics::gateway();
        gateway.requests_in_flight.inc();
        let in_flight = InFlight(gateway.requests_in_flight.clone());
        let request_bytes = if request.body().is_end_stream() { None } else { Some(Arc::new(ByteCount::default())) };
        let request = match &request_bytes {
            Some(count) => request.map(|body| Body::new(CountedRequestBody { inner: body, count: Arc::clone(count) })),
            None => request,
        };
        let response = match &span {
            Some(span) => span.sync_scope(|| self.inner.call(request)),
            None => self.inner.call(request),
        };
        Box::pin(async move {
            let response = match &span {
                Some(span) => span.clone().scope(response).await?,
                None => response.await?,
            };
            let status = response.status();
            let trace_id = span.as_ref().map(|span| traces::TraceIdHex::new(span.span_context()));
            let routed = response.extensions().get::<RoutedRpc>().cloned();
            if let Some((uri, request_id, request_method)) = &logged {
                access_log::write(&access_log::RequestLine {
                    method: request_method.as_str(),
                    path: uri.path(),
                    status: status.as_u16(),
                    duration: started.elapsed(),
                    rpc: routed.as_ref().map_or("-", |routed| routed.0.rpc_name()),
                    request_id: request_id.as_ref().map(HeaderValue::as_bytes),
                    trace_id: trace_id.as_ref().map(traces::TraceIdHex::as_str),
                });
            }
            let route: Arc<str> = match (&routed, matched) {
                (Some(routed), _) => Arc::clone(routed.0.template.label()),
                (None, Some(path)) => path,
                (None, None) => Arc::clone(&UNMATCHED),
            };
            let (mut parts, body) = response.into_parts();
            if let Some(span) = &span {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
                if status.is_server_error() {
                    span.set_error();
                }
                parts.headers.insert("traceresponse", traces::traceresponse(span.span_context()));
            }
            let route_labels = RouteLabels { method: method.clone(), route: route.clone() };
            let stream = is_stream(&parts.headers).then(|| {
                let gauge = gateway.open_streams.get_or_create_owned(&route_labels);
                gauge.inc();
                InFlight(gauge)
            });
            let finished = Finished {
                route: routed.map(|routed| routed.0),
                started,
                labels: RequestLabels { method, route, status: status.as_u16() },
                route_labels,
                request_bytes,
                response_bytes: 0,
                span,
                stream,
                _in_flight: in_flight,
            };
            Ok(Response::from_parts(parts, Body::new(ObservedBody { inner: body, finished })))
        })
    }
}

impl<S> HttpTelemetry<S> {
    /// The request's server span, continuing the client's trace; only made when traces are exported (the
    /// request line is not a span event, see `access_log.rs`).
    fn server_span(
        &self,
        request: &Request<Body>,
        method: Cow<'static, str>,
        matched: Option<&Arc<str>>,
    ) -> Option<RequestSpan> {
        let route: Option<Arc<str>> =
            matched.cloned().or_else(|| (self.route_hint)(request.method(), request.uri().path()));
        let name: Cow<'static, str> = match &route {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => method.clone(),
        };
        let mut attributes = Vec::with_capacity(5);
        attributes.push(KeyValue::new("http.request.method", method));
        if let Some(route) = &route {
            attributes.push(KeyValue::new("http.route", Arc::clone(route)));
        }
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new("url.scheme", "http"));
        RequestSpan::start(name, attributes, traces::remote_parent(request.headers()).as_ref())
    }
}

/// The method as a label: the standard ones by name, anything else as `_OTHER` (a client must not be able
/// to invent label values).
fn method_label(method: &Method) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    KNOWN.iter().find(|known| **known == method.as_str()).map_or(Cow::Borrowed("_OTHER"), |known| Cow::Borrowed(*known))
}

fn is_stream(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes).is_some_and(|content_type| {
        content_type.starts_with(b"text/event-stream")
            || content_type.starts_with(crate::gateway::stream::NDJSON.as_bytes())
    })
}

/// Decrements a gauge when dropped.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Default)]
struct ByteCount(std::sync::atomic::AtomicU64);

pin_project_lite::pin_project! {
    struct CountedRequestBody {
        #[pin]
        inner: Body,
        count: Arc<ByteCount>,
    }
}

impl http_body::Body for CountedRequestBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count.0.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is recorded when the response body is done with (ended, or dropped because the client left): the
/// metrics, and the end of the span.
struct Finished {
    /// The route it took, whose metric handles are cached; None for requests that matched none.
    route: Option<Arc<Route>>,
    started: Instant,
    labels: RequestLabels,
    route_labels: RouteLabels,
    request_bytes: Option<Arc<ByteCount>>,
    response_bytes: u64,
    span: Option<RequestSpan>,
    /// Held while a server stream is open: the open-streams gauge.
    stream: Option<InFlight>,
    _in_flight: InFlight,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let gateway = metrics::gateway();
        let seconds = metrics::seconds(self.started.elapsed());
        let method = &self.labels.method;
        // A routed request's handles are cached on its route; one that matched no route asks the families.
        let handles = self.route.as_ref().map(|route| &*route.metrics);
        let status = (method.clone(), self.labels.status);
        let duration = || gateway.request_duration.get_or_create_owned(&self.labels);
        HandleCache::get_or_create_in(handles.map(|h| &h.duration), &status, duration).observe(seconds);
        let sent = || gateway.response_bytes.get_or_create_owned(&self.route_labels);
        HandleCache::get_or_create_in(handles.map(|h| &h.response_bytes), method, sent).inc_by(self.response_bytes);
        if let Some(count) = &self.request_bytes {
            let read = count.0.load(std::sync::atomic::Ordering::Relaxed);
            let counter = || gateway.request_bytes.get_or_create_owned(&self.route_labels);
            HandleCache::get_or_create_in(handles.map(|h| &h.request_bytes), method, counter).inc_by(read);
        }
        if let Some(span) = &self.span {
            span.end();
        }
    }
}

pin_project_lite::pin_project! {
    struct ObservedBody<B> {
        #[pin]
        inner: B,
        finished: Finished,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.finished.response_bytes += data.len() as u64;
            // A stream's messages become events of its one span; SSE keep-alive comments (":") do not.
            if let Some(span) = &this.finished.span
                && this.finished.stream.is_some()
                && !data.starts_with(b":")
            {
                span.add_event("message", vec![KeyValue::new("bytes", data.len() as i64)]);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
