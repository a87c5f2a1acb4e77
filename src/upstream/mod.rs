//! The gateway's upstream: where its endpoints come from, how each call is placed and retried, and how
//! endpoints that die, hang or drain are kept out of the way.
//!
//! ```text
//! call.rs       deadline ▶ bulkhead ▶ retries (retry.rs: policy, backoff, budget)
//! balancer.rs   ▶ power of two choices over endpoints that take traffic
//! endpoint.rs   ▶ per-endpoint breaker (breaker.rs) and health (health.rs) ▶ pooled HTTP/2 connections (pool.rs)
//! direct.rs     unary calls to plain-text endpoints, straight over h2 rather than through tonic's channel
//! cluster.rs    holds it together with discovery (discovery.rs, dns.rs) and serves the admin snapshot
//! ```

pub mod balancer;
pub mod breaker;
pub mod call;
pub mod cluster;
pub mod codec;
pub mod direct;
pub mod discovery;
pub mod dns;
pub mod endpoint;
pub mod health;
pub mod limit;
pub mod pool;
pub mod retry;
pub mod tls;

pub use call::{CallError, CallOptions, GrpcMethod};
pub use cluster::{Upstream, UpstreamSnapshot};
pub use codec::{DynamicCodec, WireCodec};
pub use endpoint::Lease;
pub use pool::PoolConfig;

use breaker::{BreakerConfig, BreakerConfigError};
use discovery::{DiscoveryConfig, TargetError};
use health::HealthConfig;
use limit::LimitConfig;
use retry::{Backoff, RetryBudgetConfig, RetryConfigError, RetryPolicy};

/// Every upstream setting.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamConfig {
    pub pool: PoolConfig,
    pub discovery: DiscoveryConfig,
    pub health: HealthConfig,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
    pub limit: LimitConfig,
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryConfig {
    pub policy: RetryPolicy,
    pub backoff: Backoff,
    pub budget: RetryBudgetConfig,
}

/// Why the upstream cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream given")]
    NoTargets,
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Breaker(#[from] BreakerConfigError),
    #[error(transparent)]
    Retry(#[from] RetryConfigError),
    #[error("{0}")]
    Setting(String),
    #[error("cannot set up DNS resolution: {0}")]
    Dns(#[from] dns::DnsError),
}

impl UpstreamConfig {
    /// Checks the settings once at start-up.
    ///
    /// # Errors
    ///
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), UpstreamError> {
        self.breaker.validate()?;
        self.retry.policy.validate()?;
        self.retry.backoff.validate()?;
        self.retry.budget.validate()?;
        let positive = [
            ("upstream connect timeout", self.pool.connect_timeout),
            ("health check interval", self.health.interval),
            ("health check timeout", self.health.timeout),
            ("DNS refresh interval", self.discovery.dns_refresh),
            ("DNS timeout", self.discovery.dns_timeout),
            ("endpoint file poll interval", self.discovery.file_poll),
        ];
        for (what, value) in positive {
            if value.is_zero() {
                return Err(UpstreamError::Setting(format!("the {what} must be longer than 0")));
            }
        }
        if self.pool.connections_per_endpoint == 0 || self.limit.max_in_flight == 0 {
            return Err(UpstreamError::Setting(
                "connections per endpoint and the in-flight limit must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
