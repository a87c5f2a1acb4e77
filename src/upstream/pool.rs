//! The HTTP/2 connections to one endpoint.
//!
//! Each endpoint gets several connections, so one connection's concurrent-stream limit or head-of-line
//! blocking does not cap throughput. But every call spread onto its own connection is a system call of its
//! own at both ends, while calls that share a connection go out together: HTTP/2 writes whatever frames are
//! ready in one go. So a call takes the first connection with fewer than [`SPILL_AT`] calls outstanding, and
//! only when all are that busy the least busy one: a light load shares one connection (like gRPC's own
//! clients, which use one per address), a heavy one spreads over all. Connections are opened lazily, on first
//! use, and re-opened by tonic when they fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::upstream::tls::UpstreamTls;

/// Connection settings for every upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// HTTP/2 connections per endpoint.
    pub connections_per_endpoint: usize,
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings, so dead connections are noticed between requests.
    pub keep_alive_interval: Duration,
    /// TLS settings for `https://` endpoints.
    pub tls: UpstreamTls,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connections_per_endpoint: 4,
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(30),
            tls: UpstreamTls::default(),
        }
    }
}

/// Why an endpoint address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct InvalidUrl {
    pub url: String,
    pub reason: String,
}

/// Parses an endpoint address: an `http://host:port` or `https://host:port` URL.
///
/// # Errors
///
/// Anything else, named in the error.
pub fn parse_url(url: &str) -> Result<Uri, InvalidUrl> {
    let invalid = |reason: &str| InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("expected http://host:port or https://host:port")),
    }
    if uri.host().is_none() {
        return Err(invalid("missing host"));
    }
    if uri.path_and_query().is_some_and(|p| !matches!(p.as_str(), "" | "/")) {
        return Err(invalid("an upstream URL has no path"));
    }
    Ok(uri)
}

/// The tonic endpoint settings shared by request connections and health checks.
pub fn endpoint(address: &Uri, config: &PoolConfig) -> Endpoint {
    let endpoint = Endpoint::from(address.clone())
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keep_alive_interval)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    config.tls.apply(address, endpoint)
}

/// Outstanding calls on a connection beyond which the next call tries the next connection: well below the
/// 100 concurrent streams HTTP/2 servers commonly allow, so that calls do not queue for a stream slot.
pub const SPILL_AT: usize = 64;

struct Connection {
    channel: Channel,
    outstanding: AtomicUsize,
}

/// The connections to one endpoint, with a count of outstanding calls on each.
pub struct ConnectionPool {
    connections: Box<[Connection]>,
}

impl ConnectionPool {
    /// `config.connections_per_endpoint` lazy connections (at least one).
    pub fn new(address: &Uri, config: &PoolConfig) -> Self {
        let endpoint = endpoint(address, config);
        let connections = (0..config.connections_per_endpoint.max(1))
            .map(|_| Connection { channel: endpoint.connect_lazy(), outstanding: AtomicUsize::new(0) })
            .collect();
        Self { connections }
    }

    /// Takes the first connection with fewer than [`SPILL_AT`] outstanding calls, or else the one with the
    /// fewest (the first of equals), counting the call on it until [`Self::release`].
    pub fn acquire(&self) -> usize {
        let mut best = 0;
        let mut best_load = usize::MAX;
        for (index, connection) in self.connections.iter().enumerate() {
            let load = connection.outstanding.load(Ordering::Relaxed);
            if load < SPILL_AT {
                best = index;
                break;
            }
            if load < best_load {
                best = index;
                best_load = load;
            }
        }
        self.connections[best].outstanding.fetch_add(1, Ordering::Relaxed);
        best
    }

    pub fn release(&self, index: usize) {
        self.connections[index].outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn channel(&self, index: usize) -> Channel {
        self.connections[index].channel.clone()
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_share_a_connection_until_it_is_busy_then_go_to_the_least_busy() -> Result<(), InvalidUrl> {
        let config = PoolConfig { connections_per_endpoint: 3, ..PoolConfig::default() };
        let pool = ConnectionPool::new(&parse_url("http://127.0.0.1:1")?, &config);
        let taken: Vec<usize> = (0..SPILL_AT).map(|_| pool.acquire()).collect();
        assert!(taken.iter().all(|&index| index == 0), "a light load shares the first connection");
        let taken: Vec<usize> = (0..SPILL_AT + 2).map(|_| pool.acquire()).collect();
        assert!(taken[..SPILL_AT].iter().all(|&index| index == 1), "then the next one");
        assert_eq!(taken[SPILL_AT..], [2, 2]);
        let taken: Vec<usize> = (0..SPILL_AT - 2).map(|_| pool.acquire()).collect();
        assert!(taken.iter().all(|&index| index == 2), "{taken:?}");
        // Every connection is at the threshold: the least busy one, the first of equals.
        assert_eq!(pool.acquire(), 0);
        assert_eq!(pool.acquire(), 1);
        pool.release(2);
        assert_eq!(pool.acquire(), 2);
        // Calls released on the first connection bring it under the threshold again.
        for _ in 0..2 {
            pool.release(0);
        }
        assert_eq!(pool.acquire(), 0);
        Ok(())
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in ["127.0.0.1:50051", "ftp://x:1", "http://", "not a url", "http://x:1/some/path"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        for good in ["http://127.0.0.1:50051", "https://users.internal:443", "http://[::1]:50051/"] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
    }
}
