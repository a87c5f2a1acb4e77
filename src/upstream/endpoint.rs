//! One upstream endpoint (a replica at one address): its connections, its circuit breaker, what its health check
//! last said, and the counters the admin view shows. A [`Lease`] is one call's hold on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, Uri};

use crate::telemetry::metrics::HandleCache;
use crate::upstream::breaker::{Admission, BreakerConfig, BreakerState, SharedBreaker};
use crate::upstream::pool::{ConnectionPool, PoolConfig};

/// How many of an endpoint's latest errors the admin view keeps.
const RECENT_ERRORS: usize = 10;

/// What the active health check last learnt about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Health {
    /// Not checked yet. Requests are let through: a new endpoint must not wait for its first check, and the
    /// breaker and retries cover one that is not up yet.
    Unknown = 0,
    Serving = 1,
    /// The endpoint said NOT_SERVING (or SERVICE_UNKNOWN): it is draining or cannot serve; no new requests.
    NotServing = 2,
    /// The health check could not reach it (refused, reset, timed out); no new requests until it can.
    Unreachable = 3,
    /// Not checked: health checking is off, or the endpoint does not implement grpc.health.v1. Requests are
    /// let through; only the breaker judges it.
    Unchecked = 4,
}

impl Health {
    /// Whether new requests may go to an endpoint in this state.
    pub fn admits(self) -> bool {
        matches!(self, Self::Unknown | Self::Serving | Self::Unchecked)
    }

    /// Whether this state makes the gateway ready (`/readyz`): a confirmed serving endpoint.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Serving | Self::Unchecked)
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Serving,
            2 => Self::NotServing,
            3 => Self::Unreachable,
            4 => Self::Unchecked,
            _ => Self::Unknown,
        }
    }
}

/// An error an endpoint gave, for the admin view.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub at_unix_secs: f64,
    pub error: String,
}

/// One upstream endpoint. Shared (`Arc`) by the balancer, its health check and the calls in flight; an endpoint
/// that discovery removed lives on until its last call ends.
pub struct Endpoint {
    address: Uri,
    /// The address as metrics label it, written once rather than on every attempt.
    label: Arc<String>,
    pool: ConnectionPool,
    breaker: SharedBreaker,
    health: AtomicU8,
    health_detail: Mutex<String>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    recent_errors: Mutex<VecDeque<RecentError>>,
    /// Handles of the attempt-duration histogram, by cluster, RPC and code (see `HandleCache`).
    attempt_histograms: HandleCache<(Arc<str>, Arc<str>, &'static str), Histogram>,
}

impl Endpoint {
    pub fn new(address: Uri, pool: &PoolConfig, breaker: &BreakerConfig) -> Self {
        Self {
            pool: ConnectionPool::new(&address, pool),
            label: Arc::new(address.to_string()),
            address,
            breaker: SharedBreaker::new(breaker.clone()),
            health: AtomicU8::new(Health::Unknown as u8),
            health_detail: Mutex::new(String::new()),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            recent_errors: Mutex::new(VecDeque::new()),
            attempt_histograms: HandleCache::default(),
        }
    }

    pub fn address(&self) -> &Uri {
        &self.address
    }

    /// The address as a metric label value.
    pub fn label(&self) -> &Arc<String> {
        &self.label
    }

    /// The attempt-duration histograms of calls to this endpoint, by cluster, RPC and code.
    pub fn attempt_histograms(&self) -> &HandleCache<(Arc<str>, Arc<str>, &'static str), Histogram> {
        &self.attempt_histograms
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Records a health check result; returns the previous state. Turning SERVING ends an ejection at once.
    pub fn set_health(&self, health: Health, detail: &str) -> Health {
        let previous = Health::from_u8(self.health.swap(health as u8, Ordering::AcqRel));
        if previous != health {
            *self.health_detail.lock().unwrap_or_else(PoisonError::into_inner) = detail.to_string();
            if health == Health::Serving {
                self.breaker.uneject(Instant::now());
            }
        }
        previous
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a new request may be sent here now (health and breaker), without taking the breaker's probe slot.
    pub fn admits(&self, now: Instant) -> bool {
        self.health().admits() && self.breaker.admits(now)
    }

    /// Whether this endpoint makes the gateway ready.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.health().is_ready() && !matches!(self.breaker.state(now), BreakerState::Open { .. })
    }

    /// Takes the endpoint for one call if its breaker admits it (possibly as the half-open probe).
    pub fn lease(self: &Arc<Self>, now: Instant) -> Result<Lease, Admission> {
        let admission = self.breaker.try_acquire(now);
        let probe = match admission {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Rejected { .. } => return Err(admission),
        };
        let connection = self.pool.acquire();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Lease { endpoint: Arc::clone(self), connection, probe, settled: false })
    }

    /// Remembers an error for the admin view (health check errors included).
    pub fn record_error(&self, error: &str) {
        let at_unix_secs = unix_secs(SystemTime::now());
        let mut errors = self.recent_errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() == RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(RecentError { at_unix_secs, error: error.to_string() });
    }

    /// The endpoint as the admin view shows it.
    pub fn snapshot(&self, now: Instant) -> EndpointSnapshot {
        let breaker = match self.breaker.state(now) {
            BreakerState::Closed => BreakerSnapshot { state: "CLOSED", reopens_in_ms: None },
            BreakerState::Open { until } => {
                BreakerSnapshot { state: "OPEN", reopens_in_ms: Some((until - now).as_millis() as u64) }
            }
            BreakerState::HalfOpen => BreakerSnapshot { state: "HALF_OPEN", reopens_in_ms: None },
        };
        EndpointSnapshot {
            address: self.address.to_string(),
            health: self.health(),
            health_detail: self.health_detail.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            breaker,
            ejections: self.breaker.ejections(now),
            in_flight: self.in_flight(),
            connections: self.pool.opened(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            recent_errors: self.recent_errors.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect(),
        }
    }

    /// When the breaker lets requests in again, if it is open.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        match self.breaker.state(now) {
            BreakerState::Open { until } => Some(until),
            BreakerState::Closed | BreakerState::HalfOpen => None,
        }
    }
}

/// Seconds since the Unix epoch, as the admin view shows times.
pub fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// An endpoint as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSnapshot {
    pub address: String,
    pub health: Health,
    /// Why the health is what it is (the last health check error, say); empty when there is nothing to add.
    pub health_detail: String,
    pub breaker: BreakerSnapshot,
    /// Ejections in a row so far (after decay).
    pub ejections: u32,
    pub in_flight: usize,
    /// HTTP/2 connections made to it: one per lane in use (a gateway worker, or the shared lane), more where
    /// a lane's load spilled over.
    pub connections: usize,
    /// Calls sent here (attempts, retries included).
    pub requests: u64,
    /// Calls that failed in a way the breaker counts.
    pub failures: u64,
    pub recent_errors: Vec<RecentError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub state: &'static str,
    /// While open: how long until the half-open probe.
    pub reopens_in_ms: Option<u64>,
}

/// One call's hold on an endpoint and one of its connections. It counts as in flight until dropped, so keep it
/// for the whole call, a streamed response included. Report the call's outcome with [`Lease::succeeded`] or
/// [`Lease::failed`]; a half-open probe dropped without an outcome frees the probe slot for the next request.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    connection: usize,
    probe: bool,
    settled: bool,
}

impl Lease {
    pub fn channel(&self) -> Channel {
        self.endpoint.pool.channel(self.connection)
    }

    /// The connection's direct HTTP/2 connection for unary calls; None for a TLS endpoint.
    pub fn direct(&self) -> Option<Arc<crate::upstream::direct::DirectConnection>> {
        self.endpoint.pool.direct(self.connection)
    }

    pub fn address(&self) -> &Uri {
        &self.endpoint.address
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The endpoint answered (whatever the status): the breaker's consecutive-failure count starts over.
    pub fn succeeded(&mut self) {
        if !self.settled {
            self.settled = true;
            self.endpoint.breaker.on_success(Instant::now());
        }
    }

    /// The endpoint failed this call in a way that counts against it (unreachable, UNAVAILABLE, timed out).
    pub fn failed(&mut self, error: &str) {
        if !self.settled {
            self.settled = true;
            self.endpoint.failures.fetch_add(1, Ordering::Relaxed);
            self.endpoint.record_error(error);
            self.endpoint.breaker.on_failure(Instant::now(), fastrand::f64());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.pool.release(self.connection);
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.settled {
            self.endpoint.breaker.on_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upstream::pool::parse_url;

    fn endpoint(threshold: u32) -> Result<Arc<Endpoint>, Box<dyn std::error::Error>> {
        let breaker = BreakerConfig { consecutive_failures: threshold, jitter_ratio: 0.0, ..BreakerConfig::default() };
        Ok(Arc::new(Endpoint::new(parse_url("http://127.0.0.1:1")?, &PoolConfig::default(), &breaker)))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_eject_and_a_serving_health_check_brings_it_back() -> Result<(), Box<dyn std::error::Error>> {
        let endpoint = endpoint(2)?;
        for _ in 0..2 {
            let mut lease = endpoint.lease(Instant::now()).map_err(|a| format!("{a:?}"))?;
            lease.failed("connection refused");
        }
        assert!(!endpoint.admits(Instant::now()));
        assert!(endpoint.lease(Instant::now()).is_err());
        let snapshot = endpoint.snapshot(Instant::now());
        assert_eq!((snapshot.breaker.state, snapshot.failures, snapshot.recent_errors.len()), ("OPEN", 2, 2));

        endpoint.set_health(Health::Serving, "");
        assert!(endpoint.admits(Instant::now()));
        assert_eq!(endpoint.snapshot(Instant::now()).breaker.state, "CLOSED");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot_and_leases_count_in_flight() -> Result<(), Box<dyn std::error::Error>> {
        let endpoint = endpoint(1)?;
        endpoint.lease(Instant::now()).map_err(|a| format!("{a:?}"))?.failed("reset");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = endpoint.lease(Instant::now()).map_err(|a| format!("{a:?}"))?;
        assert_eq!(endpoint.in_flight(), 1);
        assert!(endpoint.lease(Instant::now()).is_err(), "one probe at a time");
        drop(probe);
        assert_eq!(endpoint.in_flight(), 0);
        let mut next = endpoint.lease(Instant::now()).map_err(|a| format!("{a:?}"))?;
        next.succeeded();
        drop(next);
        assert_eq!(endpoint.snapshot(Instant::now()).breaker.state, "CLOSED");
        Ok(())
    }

    #[test]
    fn health_states_that_take_traffic() {
        let admitted: Vec<Health> =
            [Health::Unknown, Health::Serving, Health::NotServing, Health::Unreachable, Health::Unchecked]
                .into_iter()
                .filter(|h| h.admits())
                .collect();
        assert_eq!(admitted, [Health::Unknown, Health::Serving, Health::Unchecked]);
        assert!(!Health::Unknown.is_ready());
    }
}
