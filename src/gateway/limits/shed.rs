//! Load shedding by concurrent requests: a request takes a slot before anything reads its body and keeps it
//! until its response head is ready; with every slot taken it is answered 503 with `Retry-After` at once,
//! so a flood cannot make the gateway hold `--max-body-bytes` for each of an unbounded number of requests.
//! Probes are never shed.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::gateway::error::GatewayError;
use crate::gateway::limits::{LimitFuture, is_probe};

/// Adds [`LoadShed`] to a service.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl LoadShedLayer {
    pub fn new(max_concurrent_requests: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max_concurrent_requests)), limit: max_concurrent_requests }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, slots: Arc::clone(&self.slots), limit: self.limit }
    }
}

/// Refuses requests beyond the concurrency limit.
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for LoadShed<S>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LimitFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_probe(request.uri().path()) {
            return Either::Left(Box::pin(self.inner.call(request)));
        }
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => {
                let future = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let response = future.await;
                    drop(slot);
                    response
                }))
            }
            Err(_) => {
                crate::telemetry::metrics::gateway().reject("overload");
                let error = GatewayError::Unavailable {
                    message: format!("the gateway is serving its limit of {} requests; retry shortly", self.limit),
                    retry_after: std::time::Duration::from_secs(1),
                };
                Either::Right(futures::future::ready(Ok(error.into_response())))
            }
        }
    }
}
