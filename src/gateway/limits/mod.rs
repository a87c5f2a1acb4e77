//! Limits that keep one client, or a flood, from taking the whole gateway: a keyed rate limit (`rate`), load
//! shedding by concurrent requests (`shed`), and a cap on open server streams (`streams`). Each is off unless
//! configured. `client_ip` says who a request comes from when X-Forwarded-For may be trusted.

pub mod client_ip;
pub mod rate;
pub mod shed;
pub mod streams;

pub use client_ip::{Cidr, CidrError};
pub use rate::{Rate, RateLimitConfig, RateLimitKey, RateLimitLayer, RateParseError};
pub use shed::LoadShedLayer;
pub use streams::StreamSlots;

/// The gateway's limits; everything off by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsConfig {
    /// Requests per client key over time.
    pub rate_limit: Option<RateLimitConfig>,
    /// Requests being served at once (counted before their bodies are read); beyond it, 503 at once.
    pub max_concurrent_requests: Option<usize>,
    /// Open server streams (SSE and NDJSON); beyond it, 503 at once.
    pub max_streams: Option<usize>,
}

/// Probes answer even when the gateway is at its limits: a load balancer must not mistake a busy gateway for
/// a dead one.
/// The future of a limiting layer: the inner service's, boxed, or an answer the limit gives at once.
pub(crate) type LimitFuture<E> = futures::future::Either<
    futures::future::BoxFuture<'static, Result<axum::response::Response, E>>,
    futures::future::Ready<Result<axum::response::Response, E>>,
>;

pub(crate) fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}
