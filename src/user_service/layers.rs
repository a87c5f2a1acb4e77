//! Tower layers around the gRPC server: one log line, one duration observation and (when traces are
//! exported) one server span per call, and panic recovery.
//!
//! [`CallLogLayer`] logs when a call is over: when the response body ends (its trailers carry the status) or is
//! dropped (the client went away: CANCELLED). A streaming call is thus logged once, with its whole duration. It
//! logs the method, the status code and the duration only; never a message, so never a password.
//!
//! A panic in a handler becomes an INTERNAL status (a trailers-only response), and the connection and server
//! keep serving.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use crate::telemetry::spans::RequestSpan;

/// Adds [`CallLog`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLogLayer;

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLog { inner }
    }
}

/// Logs each gRPC call once and turns handler panics into INTERNAL.
#[derive(Debug, Clone)]
pub struct CallLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CallLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        // The call's server span (only when traces are exported) is current for the handler (the store's spans
        // are its children, its lines carry its trace id) and for this layer's log line.
        let span = crate::telemetry::grpc::server_span(&method, request.headers());
        let response = match &span {
            Some(span) => span.sync_scope(|| self.inner.call(request)),
            None => self.inner.call(request),
        };
        Box::pin(async move {
            let response = AssertUnwindSafe(response).catch_unwind();
            let outcome = match &span {
                Some(span) => span.clone().scope(response).await,
                None => response.await,
            };
            match outcome {
                Ok(Ok(response)) => {
                    let code = grpc_status(response.headers());
                    let record = CallRecord { method, started, code, finished: None, span };
                    Ok(response.map(|body| LoggedBody { inner: Some(body), record }))
                }
                Ok(Err(error)) => {
                    let warn = || {
                        tracing::warn!(rpc = %method, duration_ms = elapsed_ms(started), "grpc call failed in transport");
                    };
                    match &span {
                        Some(span) => {
                            span.sync_scope(warn);
                            span.end();
                        }
                        None => warn(),
                    }
                    Err(error)
                }
                Err(panic) => {
                    tracing::error!(rpc = %method, panic = panic_message(panic.as_ref()), "handler panicked");
                    let record = CallRecord { method, started, code: Some(Code::Internal), finished: None, span };
                    Ok(internal_error_response().map(|()| LoggedBody { inner: None, record }))
                }
            }
        })
    }
}

/// A trailers-only gRPC response carrying INTERNAL.
fn internal_error_response() -> Response<()> {
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
    headers.insert("grpc-message", HeaderValue::from_static("internal error"));
    response
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

struct CallRecord {
    method: String,
    started: Instant,
    code: Option<Code>,
    finished: Option<Instant>,
    span: Option<RequestSpan>,
}

impl Drop for CallRecord {
    /// The single log line of a call, written when its response body is done with.
    fn drop(&mut self) {
        // Dropped before the end of the body and without a status: the client went away.
        let code = self.code.unwrap_or(if self.finished.is_some() { Code::Ok } else { Code::Cancelled });
        let duration = self.finished.unwrap_or_else(Instant::now).duration_since(self.started);
        let duration_ms = duration.as_secs_f64() * 1000.0;
        crate::telemetry::metrics::user_service()
            .rpc_duration
            .get_or_create(&crate::telemetry::metrics::RpcLabels {
                rpc: crate::telemetry::grpc::rpc_label(&self.method, code),
                code: code_name(code),
            })
            .observe(duration.as_secs_f64());
        let name = code_name(code);
        let log = || {
            if matches!(name, "INTERNAL" | "UNKNOWN" | "DATA_LOSS") {
                tracing::warn!(rpc = %self.method, code = name, duration_ms, "grpc call");
            } else {
                tracing::info!(rpc = %self.method, code = name, duration_ms, "grpc call");
            }
        };
        match &self.span {
            Some(span) => {
                crate::telemetry::grpc::record_server_code(span, code);
                span.sync_scope(log);
                span.end();
            }
            None => log(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's status from its trailers and logs when dropped.
    pub struct LoggedBody<B> {
        #[pin]
        inner: Option<B>,
        record: CallRecord,
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            this.record.finished.get_or_insert_with(Instant::now);
            return Poll::Ready(None);
        };
        let polled = inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.record.code = Some(code);
                    this.record.finished = Some(Instant::now());
                }
            }
            Poll::Ready(None) => {
                this.record.finished.get_or_insert_with(Instant::now);
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The canonical name of a gRPC code, as in the gRPC spec and logs of other implementations.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_becomes_internal_and_the_service_keeps_working()
    -> Result<(), Box<dyn std::error::Error>> {
        let inner = tower::service_fn(|request: Request<()>| async move {
            assert!(request.uri().path() != "/boom", "handler exploded");
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                b"ok",
            ))))
        });
        let mut service = CallLogLayer.layer(inner);

        let boom = service.ready().await?.call(Request::builder().uri("/boom").body(())?).await?;
        assert_eq!(boom.status(), http::StatusCode::OK);
        assert_eq!(boom.headers().get("grpc-status").map(HeaderValue::as_bytes), Some(&b"13"[..]));
        assert!(boom.into_body().collect().await?.to_bytes().is_empty());

        let fine = service.ready().await?.call(Request::builder().uri("/fine").body(())?).await?;
        assert!(fine.headers().get("grpc-status").is_none());
        assert_eq!(fine.into_body().collect().await?.to_bytes(), "ok");
        Ok(())
    }
}
