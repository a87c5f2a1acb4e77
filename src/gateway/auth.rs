//! JWT authentication at the edge: a request to an API route needs a valid bearer token before anything is
//! transcoded or sent upstream; without one it is answered 401 with `WWW-Authenticate` (RFC 6750) and a
//! google.rpc.Status body. The operational endpoints, the OpenAPI document and Swagger UI stay open.
//!
//! Only authenticity is checked here; what a caller may do is the service's decision (it reads the same token,
//! which the gateway forwards in `authorization`). The verified [`Caller`] is left in the request's extensions
//! for the layers and handler after this one (the rate limiter keys on its subject).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::auth::Verifier;
use crate::gateway::error::GatewayError;

/// Paths served without a token: probes, the API description and its UI.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/docs") || path.starts_with("/docs/")
}

/// Adds [`Authenticate`] to a service.
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<Verifier>,
}

impl AuthenticateLayer {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, verifier: Arc::clone(&self.verifier) }
    }
}

/// Refuses API requests without a valid bearer token.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // CORS preflights never get here: the CORS layer outside answers them.
        if is_open(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let verifier = Arc::clone(&self.verifier);
        Box::pin(async move {
            match verifier.authenticate(request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::debug!(%error, "request refused: no valid bearer token");
                    Ok(GatewayError::Unauthenticated(error).into_response())
                }
            }
        })
    }
}
