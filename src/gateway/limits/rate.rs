//! Rate limits per client, by GCRA (governor): `count` requests per second or minute with a burst, keyed by
//! the client's address, its token's subject or a header. Over the limit: 429 RESOURCE_EXHAUSTED with
//! `Retry-After` and the IETF `RateLimit-Policy`/`RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
//! Every answer within the limit carries them too, so clients can pace themselves.
//!
//! Memory per key is one GCRA state; keys idle long enough to be back at a full burst are dropped every
//! minute, so a scan of many addresses does not grow the table for good.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use futures::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue};
use tower::{Layer, Service};

use crate::auth::Caller;
use crate::gateway::error::GatewayError;
use crate::gateway::limits::client_ip::{Cidr, client_ip};
use crate::gateway::limits::{LimitFuture, is_probe};

/// How often idle keys are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);
/// A header value used as a key is cut to this many bytes: a client cannot make keys of any size.
const MAX_HEADER_KEY: usize = 128;
const POLICY_NAME: &str = "default";

/// `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

/// A malformed rate.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a rate like 100/s or 600/min")]
pub struct RateParseError(String);

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(text: &str) -> Result<Self, RateParseError> {
        let error = || RateParseError(text.to_string());
        let (count, unit) = text.trim().split_once('/').ok_or_else(error)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| error())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(error()),
        };
        Ok(Self { count, period })
    }
}

/// What a client is, for the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (X-Forwarded-For only from trusted proxies).
    Ip,
    /// The verified token's subject; requests without one are keyed by address.
    Subject,
    /// A request header's value (an API key, say); requests without it are keyed by address.
    Header(HeaderName),
}

impl FromStr for RateLimitKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "ip" => Ok(Self::Ip),
            "subject" => Ok(Self::Subject),
            other => match other.strip_prefix("header:") {
                Some(name) => HeaderName::from_str(name.trim())
                    .map(Self::Header)
                    .map_err(|_| format!("{name:?} is not a header name")),
                None => Err(format!("{other:?} is not ip, subject or header:NAME")),
            },
        }
    }
}

/// The rate limit's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub rate: Rate,
    /// Requests allowed at once after a quiet spell; `rate.count` when unset.
    pub burst: Option<NonZeroU32>,
    pub key: RateLimitKey,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<Cidr>,
}

type Limiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Adds [`RateLimit`] to a service.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

struct Shared {
    limiter: Limiter,
    quota: Quota,
    config: RateLimitConfig,
    /// `RateLimit-Policy`, the same on every answer.
    policy: HeaderValue,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A limiter for `config`; idle keys are dropped in the background for as long as it is in use.
    pub fn new(config: RateLimitConfig) -> Self {
        let burst = config.burst.unwrap_or(config.rate.count);
        let per_request = config.rate.period / config.rate.count.get();
        // A period of at least a second over a u32 count is never zero nanoseconds... except for absurd counts;
        // those get the finest quota governor can express.
        let quota = Quota::with_period(per_request.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(config.rate.count))
            .allow_burst(burst);
        let policy = HeaderValue::from_str(&format!(
            "\"{POLICY_NAME}\";q={};w={}",
            config.rate.count,
            config.rate.period.as_secs()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        let limiter = RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>();
        let shared = Arc::new(Shared { limiter, quota, config, policy });
        tokio::spawn(drop_idle_keys(Arc::downgrade(&shared)));
        Self { shared }
    }
}

async fn drop_idle_keys(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(RETAIN_EVERY).await;
        let Some(shared) = shared.upgrade() else { return };
        shared.limiter.retain_recent();
        shared.limiter.shrink_to_fit();
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, shared: Arc::clone(&self.shared) }
    }
}

/// Answers 429 to clients over their rate.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}

impl Shared {
    fn key<B>(&self, request: &http::Request<B>) -> String {
        let by_ip = || {
            client_ip(request, &self.config.trusted_proxies)
                .map_or_else(|| "ip:-".to_string(), |ip: IpAddr| format!("ip:{ip}"))
        };
        match &self.config.key {
            RateLimitKey::Ip => by_ip(),
            RateLimitKey::Subject => match request.extensions().get::<Caller>().and_then(|c| c.subject.as_deref()) {
                Some(subject) => format!("sub:{subject}"),
                None => by_ip(),
            },
            RateLimitKey::Header(name) => match request.headers().get(name) {
                Some(value) => {
                    let bytes = value.as_bytes();
                    format!("h:{}", String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_HEADER_KEY)]))
                }
                None => by_ip(),
            },
        }
    }

    /// `RateLimit: "default";r=REMAINING;t=SECONDS` (seconds until the full burst is back).
    fn state_header(&self, remaining: u32, reset: Duration) -> HeaderValue {
        let seconds = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
        HeaderValue::from_str(&format!("\"{POLICY_NAME}\";r={remaining};t={seconds}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
    }
}

impl<S, B> Service<http::Request<B>> for RateLimit<S>
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
            let future = self.inner.call(request);
            return Either::Left(Box::pin(future));
        }
        let shared = Arc::clone(&self.shared);
        let key = shared.key(&request);
        match shared.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = shared.quota.burst_size().get().saturating_sub(remaining);
                let reset = shared.quota.replenish_interval() * used;
                let future = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let mut response = future.await?;
                    let headers = response.headers_mut();
                    headers.insert(HeaderName::from_static("ratelimit-policy"), shared.policy.clone());
                    headers.insert(HeaderName::from_static("ratelimit"), shared.state_header(remaining, reset));
                    Ok(response)
                }))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(shared.limiter.clock().now());
                tracing::debug!(%key, ?wait, "rate limited");
                crate::telemetry::metrics::gateway().reject("rate_limit");
                let mut response = GatewayError::RateLimited { retry_after: wait }.into_response();
                let headers = response.headers_mut();
                headers.insert(HeaderName::from_static("ratelimit-policy"), shared.policy.clone());
                headers.insert(HeaderName::from_static("ratelimit"), shared.state_header(0, wait));
                Either::Right(futures::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_keys_parse() {
        let rate = |s: &str| s.parse::<Rate>().ok().map(|r| (r.count.get(), r.period.as_secs()));
        assert_eq!(rate("100/s"), Some((100, 1)));
        assert_eq!(rate("600/min"), Some((600, 60)));
        assert_eq!(rate(" 5 / h "), Some((5, 3600)));
        for bad in ["100", "0/s", "-1/s", "10/fortnight", "x/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("ip".parse::<RateLimitKey>(), Ok(RateLimitKey::Ip));
        assert_eq!("subject".parse::<RateLimitKey>(), Ok(RateLimitKey::Subject));
        assert_eq!(
            "header:X-Api-Key".parse::<RateLimitKey>(),
            Ok(RateLimitKey::Header(HeaderName::from_static("x-api-key")))
        );
        assert!("header:bad header".parse::<RateLimitKey>().is_err());
        assert!("cookie".parse::<RateLimitKey>().is_err());
    }
}
