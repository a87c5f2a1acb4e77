//! A pool of HTTP/2 connections to the upstream endpoints, balanced per request.
//!
//! Each endpoint gets several connections, so one connection's concurrent-stream limit or head-of-line
//! blocking does not cap throughput. Each call picks a connection by power-of-two-choices on outstanding
//! calls: two random candidates, the less loaded wins. That spreads load like least-outstanding without
//! every call contending on one global ordering. Health checking, ejection and discovery build on this shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

/// Connection settings for every upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// HTTP/2 connections per endpoint.
    pub connections_per_endpoint: usize,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings, so dead connections are noticed between requests.
    pub keep_alive_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connections_per_endpoint: 4,
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(30),
        }
    }
}

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no upstream endpoints given")]
    Empty,
    #[error("invalid upstream URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

struct Connection {
    channel: Channel,
    endpoint: Uri,
    outstanding: AtomicUsize,
}

/// The upstream connections; cheap to clone.
#[derive(Clone)]
pub struct UpstreamPool {
    connections: Arc<[Connection]>,
}

/// A connection picked for one call. Counts as outstanding until dropped, so keep it alive for the whole call,
/// including a streamed response.
pub struct Lease {
    connections: Arc<[Connection]>,
    index: usize,
}

impl Lease {
    pub fn channel(&self) -> Channel {
        self.connections[self.index].channel.clone()
    }

    pub fn endpoint(&self) -> &Uri {
        &self.connections[self.index].endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connections[self.index].outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamPool {
    /// Connections are opened lazily, on first use, and re-opened by tonic when they fail.
    ///
    /// Fails when `urls` is empty or a URL is not an `http://` or `https://` URL with a host.
    pub fn new(urls: &[String], config: &PoolConfig) -> Result<Self, PoolError> {
        if urls.is_empty() {
            return Err(PoolError::Empty);
        }
        let mut connections = Vec::new();
        for url in urls {
            let endpoint = endpoint(url, config)?;
            for _ in 0..config.connections_per_endpoint.max(1) {
                connections.push(Connection {
                    channel: endpoint.connect_lazy(),
                    endpoint: endpoint.uri().clone(),
                    outstanding: AtomicUsize::new(0),
                });
            }
        }
        Ok(Self { connections: connections.into() })
    }

    /// Picks the less loaded of two random connections.
    pub fn lease(&self) -> Lease {
        let count = self.connections.len();
        let index = if count == 1 {
            0
        } else {
            let first = fastrand::usize(..count);
            // A second, different candidate.
            let second = (first + 1 + fastrand::usize(..count - 1)) % count;
            let load = |i: usize| self.connections[i].outstanding.load(Ordering::Relaxed);
            if load(second) < load(first) { second } else { first }
        };
        self.connections[index].outstanding.fetch_add(1, Ordering::Relaxed);
        Lease { connections: Arc::clone(&self.connections), index }
    }

    /// The distinct endpoints, for health checks.
    pub fn endpoints(&self) -> Vec<Uri> {
        let mut endpoints: Vec<Uri> = Vec::new();
        for connection in self.connections.iter() {
            if !endpoints.contains(&connection.endpoint) {
                endpoints.push(connection.endpoint.clone());
            }
        }
        endpoints
    }

    /// A channel to one endpoint (its first connection).
    pub fn channel_to(&self, endpoint: &Uri) -> Option<Channel> {
        self.connections.iter().find(|c| &c.endpoint == endpoint).map(|c| c.channel.clone())
    }
}

fn endpoint(url: &str, config: &PoolConfig) -> Result<Endpoint, PoolError> {
    let invalid = |reason: &str| PoolError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("expected http://host:port or https://host:port")),
    }
    if uri.host().is_none() {
        return Err(invalid("missing host"));
    }
    let endpoint = Endpoint::from(uri)
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keep_alive_interval)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_spread_over_connections_and_release_on_drop() -> Result<(), PoolError> {
        let config = PoolConfig { connections_per_endpoint: 3, ..PoolConfig::default() };
        let pool = UpstreamPool::new(&["http://127.0.0.1:1".into(), "http://127.0.0.2:1".into()], &config)?;
        assert_eq!(pool.endpoints().len(), 2);
        // A fixed seed: the picks are random by design, the test must not be.
        fastrand::seed(7);
        let leases: Vec<Lease> = (0..600).map(|_| pool.lease()).collect();
        let loads: Vec<usize> = pool.connections.iter().map(|c| c.outstanding.load(Ordering::Relaxed)).collect();
        assert_eq!(loads.iter().sum::<usize>(), 600);
        // Power of two choices keeps every connection near the mean of 100 (one random pick would not).
        assert!(loads.iter().all(|load| (80..=120).contains(load)), "{loads:?}");
        drop(leases);
        assert!(pool.connections.iter().all(|c| c.outstanding.load(Ordering::Relaxed) == 0));
        Ok(())
    }

    #[test]
    fn rejects_bad_urls() {
        let config = PoolConfig::default();
        assert!(matches!(UpstreamPool::new(&[], &config), Err(PoolError::Empty)));
        for bad in ["127.0.0.1:50051", "ftp://x:1", "http://", "not a url"] {
            assert!(
                matches!(UpstreamPool::new(&[bad.to_string()], &config), Err(PoolError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
