//! The HTTP/2 connections to one endpoint.
//!
//! Each endpoint gets several connections, so one connection's concurrent-stream limit or head-of-line
//! blocking does not cap throughput. But every call spread onto its own connection is a system call of its
//! own at both ends, while calls that share a connection go out together: HTTP/2 writes whatever frames are
//! ready in one go. So a call takes the first connection with fewer than [`SPILL_AT`] calls outstanding, and
//! only when all are that busy the least busy one: a light load shares one connection (like gRPC's own
//! clients, which use one per address), a heavy one spreads over all. Each slot holds two connections, both
//! opened lazily, on first use, and re-opened when they fail: the one unary calls to a plain-text endpoint drive
//! themselves (`direct.rs`), and tonic's channel for streams and TLS endpoints.
//!
//! The connections come in lanes: one per gateway worker thread (`gateway/workers.rs`), so that a worker's
//! calls go over connections that its own thread drives, and one more shared by calls made on any other
//! thread. A thread says which lane is its own with [`assign_thread_lane`].

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::upstream::direct::{DirectConnection, DirectSettings};
use crate::upstream::tls::UpstreamTls;

/// Connection settings for every upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// HTTP/2 connections per endpoint and lane.
    pub connections_per_endpoint: usize,
    /// Lanes of their own (the gateway's worker threads), besides the one shared by every other thread.
    pub worker_lanes: usize,
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
            worker_lanes: 0,
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

thread_local! {
    /// The calling thread's own lane; None for threads that have none (they share the last lane).
    static THREAD_LANE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes `lane` the calling thread's own lane in every pool that has it.
pub fn assign_thread_lane(lane: usize) {
    THREAD_LANE.with(|cell| cell.set(Some(lane)));
}

/// The calling thread's own lane, if it was given one.
pub fn thread_lane() -> Option<usize> {
    THREAD_LANE.with(Cell::get)
}

struct Connection {
    /// Made on first use, so that its tasks (tonic's and hyper's) run on the runtime of the thread that uses it.
    /// Streams, and every call to a TLS endpoint, go over it.
    channel: OnceLock<Channel>,
    /// Unary calls to a plain-text endpoint go over this one, which they drive themselves (`direct.rs`); it too
    /// connects on first use.
    direct: Option<Arc<DirectConnection>>,
    outstanding: AtomicUsize,
}

/// The connections to one endpoint, lane by lane, with a count of outstanding calls on each.
pub struct ConnectionPool {
    endpoint: Endpoint,
    /// `per_lane` connections for each worker lane, then as many for the shared lane.
    connections: Box<[Connection]>,
    per_lane: usize,
}

impl ConnectionPool {
    /// `config.connections_per_endpoint` lazy connections (at least one) in each of `config.worker_lanes` lanes
    /// and the shared one.
    pub fn new(address: &Uri, config: &PoolConfig) -> Self {
        let per_lane = config.connections_per_endpoint.max(1);
        let direct =
            DirectSettings { connect_timeout: config.connect_timeout, keep_alive_interval: config.keep_alive_interval };
        let connections = (0..per_lane * (config.worker_lanes + 1))
            .map(|_| Connection {
                channel: OnceLock::new(),
                direct: DirectConnection::new(address, direct).map(Arc::new),
                outstanding: AtomicUsize::new(0),
            })
            .collect();
        Self { endpoint: endpoint(address, config), connections, per_lane }
    }

    /// In the calling thread's lane: takes the first connection with fewer than [`SPILL_AT`] outstanding calls,
    /// or else the one with the fewest (the first of equals), counting the call on it until [`Self::release`].
    pub fn acquire(&self) -> usize {
        let lanes = self.connections.len() / self.per_lane;
        let lane = thread_lane().filter(|&lane| lane < lanes - 1).unwrap_or(lanes - 1);
        let first = lane * self.per_lane;
        let mut best = first;
        let mut best_load = usize::MAX;
        for (index, connection) in self.connections[first..first + self.per_lane].iter().enumerate() {
            let load = connection.outstanding.load(Ordering::Relaxed);
            if load < SPILL_AT {
                best = first + index;
                break;
            }
            if load < best_load {
                best = first + index;
                best_load = load;
            }
        }
        self.connections[best].outstanding.fetch_add(1, Ordering::Relaxed);
        best
    }

    pub fn release(&self, index: usize) {
        self.connections[index].outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// The connection `index` (from [`Self::acquire`]), made now if this is its first use.
    pub fn channel(&self, index: usize) -> Channel {
        self.connections[index].channel.get_or_init(|| self.endpoint.connect_lazy()).clone()
    }

    /// The direct connection of `index`, for unary calls; None for a TLS endpoint.
    pub fn direct(&self, index: usize) -> Option<Arc<DirectConnection>> {
        self.connections[index].direct.clone()
    }

    /// Connections made so far: tonic channels (each connects on its first call, and reconnects when it fails)
    /// and direct connections now open.
    pub fn opened(&self) -> usize {
        self.connections
            .iter()
            .map(|connection| {
                usize::from(connection.channel.get().is_some())
                    + usize::from(connection.direct.as_ref().is_some_and(|direct| direct.is_open()))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_share_a_connection_until_it_is_busy_then_go_to_the_least_busy() -> Result<(), InvalidUrl> {
        let config = PoolConfig { connections_per_endpoint: 3, ..PoolConfig::default() };
        // This test's thread has no lane of its own: the shared lane, the only one here.
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

    #[tokio::test]
    async fn a_thread_uses_its_own_lane_and_others_share_the_last() -> Result<(), InvalidUrl> {
        let config = PoolConfig { connections_per_endpoint: 2, worker_lanes: 2, ..PoolConfig::default() };
        let pool = std::sync::Arc::new(ConnectionPool::new(&parse_url("http://127.0.0.1:1")?, &config));
        let on_lane = |lane: Option<usize>| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                if let Some(lane) = lane {
                    assign_thread_lane(lane);
                }
                (0..SPILL_AT + 1).map(|_| pool.acquire()).collect::<Vec<_>>()
            })
            .join()
            .expect("the thread ends")
        };
        // Lane 1 holds connections 2 and 3; a full first connection spills to the second in the same lane.
        let taken = on_lane(Some(1));
        assert!(taken[..SPILL_AT].iter().all(|&index| index == 2), "{taken:?}");
        assert_eq!(taken[SPILL_AT], 3);
        assert_eq!(on_lane(Some(0))[0], 0);
        // Threads without a lane, or with one this pool does not have, share the last lane.
        let shared = |taken: Vec<usize>| taken.iter().all(|index| (4..6).contains(index));
        assert!(shared(on_lane(None)));
        assert!(shared(on_lane(Some(7))));
        assert_eq!(pool.opened(), 0, "acquiring opens nothing");
        drop(pool.channel(2));
        drop(pool.channel(2));
        assert_eq!(pool.opened(), 1, "a connection is made once, on first use");
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
