//! Authentication and authorization of UserService calls.
//!
//! [`AuthenticateLayer`] (a tower layer on the gRPC server) refuses calls without a valid bearer token with
//! UNAUTHENTICATED, before any message is read, and leaves the verified [`Caller`] in the request's
//! extensions. grpc.health.v1 stays open, and so does server reflection unless configured otherwise.
//!
//! [`Authorized`] then applies the access rules declared in the proto (`portico.auth`, see
//! [`crate::auth::policy`]) to each call, with the request message in hand (a caller may act on itself), and
//! refuses with PERMISSION_DENIED naming the role that would be needed, before the store is touched: a denial
//! never tells whether the target exists.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prost_reflect::ReflectMessage;
use tonic::{Request, Response, Status, Streaming};
use tower::{Layer, Service};

use crate::auth::policy::Policy;
use crate::auth::{Caller, Verifier};
use crate::proto::user::user_service_server::UserService;
use crate::proto::user::{
    BatchCreateUsersResponse, CreateUserRequest, DeleteUserRequest, GetUserRequest, GetUserResponse, ListUsersRequest,
    ListUsersResponse, UpdateUserRequest, User, WatchUsersRequest,
};
use crate::user_service::UserServiceImpl;

const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION: [&str; 2] = ["/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Adds [`Authenticate`] to the gRPC server.
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<Verifier>,
    protect_reflection: bool,
}

impl AuthenticateLayer {
    pub fn new(verifier: Arc<Verifier>, protect_reflection: bool) -> Self {
        Self { verifier, protect_reflection }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, verifier: Arc::clone(&self.verifier), protect_reflection: self.protect_reflection }
    }
}

/// Refuses calls without a valid bearer token (UNAUTHENTICATED, trailers-only).
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
    protect_reflection: bool,
}

impl<S> Authenticate<S> {
    fn is_open(&self, path: &str) -> bool {
        path.starts_with(HEALTH) || (!self.protect_reflection && REFLECTION.iter().any(|r| path.starts_with(r)))
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.is_open(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let verifier = Arc::clone(&self.verifier);
        Box::pin(async move {
            match verifier.authenticate(request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::unauthenticated(error.to_string()).into_http()),
            }
        })
    }
}

/// The UserService behind the access rules of the proto. Without a policy (auth off) every call passes.
#[derive(Clone)]
pub struct Authorized {
    inner: UserServiceImpl,
    policy: Option<Arc<Policy>>,
}

impl Authorized {
    pub fn new(inner: UserServiceImpl, policy: Option<Arc<Policy>>) -> Self {
        Self { inner, policy }
    }

    /// Decides a call of `method` (a gRPC path) by the caller the authentication layer verified; `message` is
    /// the request, None for a client stream (then only roles count).
    fn authorize<M: ReflectMessage>(
        &self,
        method: &str,
        extensions: &tonic::Extensions,
        message: Option<&M>,
    ) -> Result<(), Status> {
        let Some(policy) = &self.policy else { return Ok(()) };
        // Without a caller the layer did not run for this path: refuse rather than allow.
        let caller = extensions.get::<Caller>().ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        policy.authorize(method, caller, message).map_err(|denied| {
            tracing::debug!(rpc = method, subject = caller.subject.as_deref().unwrap_or("-"), %denied, "call refused");
            Status::permission_denied(denied.to_string())
        })
    }

    fn check<M: ReflectMessage>(&self, method: &str, request: &Request<M>) -> Result<(), Status> {
        self.authorize(method, request.extensions(), Some(request.get_ref()))
    }
}

#[tonic::async_trait]
impl UserService for Authorized {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        self.check("/user.UserService/GetUser", &request)?;
        self.inner.get_user(request).await
    }

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        self.check("/user.UserService/ListUsers", &request)?;
        self.inner.list_users(request).await
    }

    async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        self.check("/user.UserService/CreateUser", &request)?;
        self.inner.create_user(request).await
    }

    async fn update_user(&self, request: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        self.check("/user.UserService/UpdateUser", &request)?;
        self.inner.update_user(request).await
    }

    async fn delete_user(&self, request: Request<DeleteUserRequest>) -> Result<Response<pbjson_types::Empty>, Status> {
        self.check("/user.UserService/DeleteUser", &request)?;
        self.inner.delete_user(request).await
    }

    type WatchUsersStream = crate::user_service::events::WatchStream;

    async fn watch_users(
        &self,
        request: Request<WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        self.check("/user.UserService/WatchUsers", &request)?;
        self.inner.watch_users(request).await
    }

    async fn batch_create_users(
        &self,
        request: Request<Streaming<CreateUserRequest>>,
    ) -> Result<Response<BatchCreateUsersResponse>, Status> {
        self.authorize::<CreateUserRequest>("/user.UserService/BatchCreateUsers", request.extensions(), None)?;
        self.inner.batch_create_users(request).await
    }
}
