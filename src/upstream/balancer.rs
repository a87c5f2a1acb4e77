//! The endpoint set and the per-request (L7) balancer over it.
//!
//! Each call picks an endpoint by power of two choices on calls in flight: two random candidates among the
//! endpoints that take traffic, the less busy wins. That spreads load like least-outstanding, steers away from
//! a slow endpoint (its calls pile up) without a global ordering, and never sends everything to one "best"
//! endpoint the way pure least-outstanding does when the counts are stale. Within the endpoint, the least busy
//! of its connections carries the call. An endpoint takes traffic while its health check and its breaker allow
//! it (see [`Endpoint::admits`]).
//!
//! Discovery replaces the set with [`Balancer::set_addresses`]; endpoints that stay keep their state, and calls
//! in flight on a removed endpoint finish on it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Uri;

use crate::upstream::breaker::BreakerConfig;
use crate::upstream::endpoint::{Endpoint, Health, Lease};
use crate::upstream::pool::PoolConfig;

/// How long a client is told to wait when no endpoint is usable and no ejection says better.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// No endpoint can take the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no upstream endpoint is available: {reason}")]
pub struct NoEndpoint {
    pub reason: String,
    /// When one may be again: the end of the earliest ejection, or a default when nothing says.
    pub retry_after: Duration,
}

/// The result of replacing the endpoint set.
#[derive(Default)]
pub struct SetChange {
    pub added: Vec<Arc<Endpoint>>,
    pub removed: Vec<Arc<Endpoint>>,
}

pub struct Balancer {
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    pool: PoolConfig,
    breaker: BreakerConfig,
}

impl Balancer {
    pub fn new(pool: PoolConfig, breaker: BreakerConfig) -> Self {
        Self { endpoints: RwLock::new(Arc::from(Vec::new())), pool, breaker }
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        Arc::clone(&self.endpoints.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `addresses` the endpoint set: new addresses get a new endpoint, kept ones keep theirs (breaker,
    /// health and counters), and the others leave the set.
    pub fn set_addresses(&self, addresses: &[Uri]) -> SetChange {
        let mut guard = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let mut current: HashMap<&Uri, &Arc<Endpoint>> = guard.iter().map(|e| (e.address(), e)).collect();
        let mut change = SetChange::default();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            if next.iter().any(|e: &Arc<Endpoint>| e.address() == address) {
                continue;
            }
            match current.remove(address) {
                Some(kept) => next.push(Arc::clone(kept)),
                None => {
                    let endpoint = Arc::new(Endpoint::new(address.clone(), &self.pool, &self.breaker));
                    change.added.push(Arc::clone(&endpoint));
                    next.push(endpoint);
                }
            }
        }
        change.removed = current.into_values().cloned().collect();
        *guard = next.into();
        change
    }

    /// Picks an endpoint for one call, avoiding the ones in `avoid` (those a retry already failed on) unless no
    /// other is usable.
    ///
    /// # Errors
    ///
    /// [`NoEndpoint`] when no endpoint takes traffic: none discovered, all ejected, not serving or unreachable.
    pub fn pick(&self, avoid: &[Uri]) -> Result<Lease, NoEndpoint> {
        let endpoints = self.endpoints();
        let now = Instant::now();
        let usable = |e: &&Arc<Endpoint>| e.admits(now);
        let mut candidates: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(usable).filter(|e| !avoid.contains(e.address())).collect();
        if candidates.is_empty() && !avoid.is_empty() {
            // Retrying on the same endpoint beats failing: it may have been a blip.
            candidates = endpoints.iter().filter(usable).collect();
        }
        while !candidates.is_empty() {
            let chosen = two_choices(&candidates);
            match candidates[chosen].lease(now) {
                Ok(lease) => return Ok(lease),
                // Another call took the half-open probe slot between the check and now.
                Err(_) => {
                    candidates.swap_remove(chosen);
                }
            }
        }
        Err(unavailable(&endpoints, now))
    }
}

/// Power of two choices: the index of the less busy of two distinct random candidates.
fn two_choices(candidates: &[&Arc<Endpoint>]) -> usize {
    let count = candidates.len();
    if count == 1 {
        return 0;
    }
    let first = fastrand::usize(..count);
    let second = (first + 1 + fastrand::usize(..count - 1)) % count;
    if candidates[second].in_flight() < candidates[first].in_flight() { second } else { first }
}

/// Why nothing is usable, for the client and the log, and when to come back.
fn unavailable(endpoints: &[Arc<Endpoint>], now: Instant) -> NoEndpoint {
    if endpoints.is_empty() {
        return NoEndpoint { reason: "discovery found no endpoints".into(), retry_after: DEFAULT_RETRY_AFTER };
    }
    let (mut ejected, mut not_serving, mut unreachable, mut probing) = (0, 0, 0, 0);
    let mut earliest: Option<Instant> = None;
    for endpoint in endpoints {
        match endpoint.health() {
            Health::NotServing => not_serving += 1,
            Health::Unreachable => unreachable += 1,
            Health::Unknown | Health::Serving | Health::Unchecked => match endpoint.ejected_until(now) {
                Some(until) => {
                    ejected += 1;
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                }
                None => probing += 1,
            },
        }
    }
    let parts: Vec<String> = [
        (ejected, "ejected by the circuit breaker"),
        (not_serving, "not serving"),
        (unreachable, "unreachable by health checks"),
        (probing, "being probed after an ejection"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, what)| format!("{count} {what}"))
    .collect();
    let retry_after = earliest.map_or(DEFAULT_RETRY_AFTER, |until| until.saturating_duration_since(now));
    NoEndpoint { reason: format!("{} endpoints: {}", endpoints.len(), parts.join(", ")), retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::pool::parse_url;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn balancer(addresses: &[&str]) -> Result<Balancer, Box<dyn std::error::Error>> {
        let breaker = BreakerConfig { consecutive_failures: 1, jitter_ratio: 0.0, ..BreakerConfig::default() };
        let balancer = Balancer::new(PoolConfig { connections_per_endpoint: 2, ..PoolConfig::default() }, breaker);
        let addresses = addresses.iter().map(|a| parse_url(a)).collect::<Result<Vec<_>, _>>()?;
        balancer.set_addresses(&addresses);
        Ok(balancer)
    }

    #[tokio::test]
    async fn spreads_calls_in_flight_evenly() -> TestResult {
        let balancer = balancer(&["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"])?;
        fastrand::seed(7);
        let leases = (0..300).map(|_| balancer.pick(&[])).collect::<Result<Vec<_>, _>>()?;
        let loads: Vec<usize> = balancer.endpoints().iter().map(|e| e.in_flight()).collect();
        // Power of two choices on calls in flight keeps every endpoint near 100 (random picks would not).
        assert!(loads.iter().all(|load| (95..=105).contains(load)), "{loads:?}");
        drop(leases);
        assert!(balancer.endpoints().iter().all(|e| e.in_flight() == 0));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn skips_ejected_and_not_serving_endpoints_and_says_when_none_is_left() -> TestResult {
        let balancer = balancer(&["http://127.0.0.1:1", "http://127.0.0.2:1"])?;
        let endpoints = balancer.endpoints();
        endpoints[0].lease(Instant::now()).map_err(|a| format!("{a:?}"))?.failed("refused");
        for _ in 0..20 {
            assert_eq!(balancer.pick(&[])?.address(), endpoints[1].address());
        }
        endpoints[1].set_health(Health::NotServing, "draining");
        let error = balancer.pick(&[]).err().ok_or("expected no endpoint")?;
        assert_eq!(error.retry_after, Duration::from_secs(1));
        assert!(error.reason.contains("1 ejected") && error.reason.contains("1 not serving"), "{}", error.reason);

        tokio::time::advance(Duration::from_millis(400)).await;
        let error = balancer.pick(&[]).err().ok_or("expected no endpoint")?;
        assert_eq!(error.retry_after, Duration::from_millis(600));
        Ok(())
    }

    #[tokio::test]
    async fn avoids_endpoints_already_tried_unless_nothing_else_is_left() -> TestResult {
        let balancer = balancer(&["http://127.0.0.1:1", "http://127.0.0.2:1"])?;
        let first = balancer.endpoints()[0].address().clone();
        for _ in 0..20 {
            assert_ne!(balancer.pick(std::slice::from_ref(&first))?.address(), &first);
        }
        let both: Vec<Uri> = balancer.endpoints().iter().map(|e| e.address().clone()).collect();
        assert!(balancer.pick(&both).is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn a_new_set_keeps_the_state_of_endpoints_that_stay() -> TestResult {
        let balancer = balancer(&["http://127.0.0.1:1", "http://127.0.0.2:1"])?;
        let kept = Arc::clone(&balancer.endpoints()[1]);
        kept.set_health(Health::NotServing, "draining");
        let lease = balancer.pick(&[])?; // in flight on 127.0.0.1, which is about to leave
        let change = balancer.set_addresses(&[parse_url("http://127.0.0.2:1")?, parse_url("http://127.0.0.3:1")?]);
        assert_eq!(change.added.len(), 1);
        assert_eq!(change.removed.len(), 1);
        assert!(Arc::ptr_eq(&balancer.endpoints()[0], &kept));
        assert_eq!(balancer.endpoints()[0].health(), Health::NotServing);
        // The removed endpoint's call still holds it.
        assert_eq!(lease.endpoint().in_flight(), 1);
        assert_eq!(balancer.pick(&[])?.address().to_string(), "http://127.0.0.3:1/");
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_set_is_no_endpoint() -> TestResult {
        let balancer = balancer(&[])?;
        assert!(balancer.pick(&[]).err().ok_or("expected no endpoint")?.reason.contains("found no endpoints"));
        Ok(())
    }
}
