//! Active health checking over grpc.health.v1, one task per endpoint.
//!
//! The task holds a `Watch` stream open on its own connection, so a change (SERVING → NOT_SERVING when a
//! replica starts draining) reaches the balancer as soon as the server sends it. An endpoint that does not
//! implement `Watch` is polled with `Check` instead; one that implements neither is marked
//! [`Health::Unchecked`] and judged by its breaker alone.
//!
//! `Watch` only speaks on changes, so silence cannot tell a healthy endpoint from a frozen one. HTTP/2
//! keep-alive pings on the health connection do: a peer that does not answer a ping within the timeout loses
//! the connection, which ends the stream and marks it [`Health::Unreachable`]. A killed process is noticed at
//! once (the connection resets). After a failure the task reconnects with a growing, jittered delay.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::upstream::endpoint::{Endpoint, Health};
use crate::upstream::pool::{self, PoolConfig};
use crate::upstream::retry::{Backoff, Jitter};

/// Health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Off: endpoints are [`Health::Unchecked`] and only the breaker judges them.
    pub enabled: bool,
    /// The service name asked about; empty asks about the server as a whole.
    pub service: String,
    /// How often `Check` is polled (when `Watch` is not implemented), how often the health connection is
    /// pinged, and the longest wait between reconnection attempts.
    pub interval: Duration,
    /// How long connecting, a `Check`, the start of a `Watch` or a ping may take before the endpoint counts
    /// as unreachable.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            service: String::new(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The first reconnection delay; it doubles up to [`HealthConfig::interval`].
const RECONNECT_BASE: Duration = Duration::from_millis(100);

/// How one round of checking ended.
enum Ended {
    /// The server does not implement the RPC that was tried.
    Unimplemented,
    /// The endpoint could not be asked, or the stream broke.
    Failed(String),
}

/// Checks `endpoint` until `cancel` fires. `unhealthy` is notified whenever the endpoint stops taking traffic,
/// so that DNS discovery can re-resolve at once.
pub async fn run(
    endpoint: Arc<Endpoint>,
    config: HealthConfig,
    pool: PoolConfig,
    unhealthy: Arc<Notify>,
    cancel: CancellationToken,
) {
    if !config.enabled {
        endpoint.set_health(Health::Unchecked, "health checking is off");
        return;
    }
    let channel = pool::endpoint(endpoint.address(), &pool)
        .connect_timeout(config.timeout)
        .http2_keep_alive_interval(config.interval)
        .keep_alive_timeout(config.timeout)
        .connect_lazy();
    let checker = Checker { client: HealthClient::new(channel), endpoint, config, unhealthy };
    cancel.run_until_cancelled(checker.run()).await;
}

struct Checker {
    client: HealthClient<tonic::transport::Channel>,
    endpoint: Arc<Endpoint>,
    config: HealthConfig,
    unhealthy: Arc<Notify>,
}

impl Checker {
    async fn run(mut self) {
        let backoff =
            Backoff { base: RECONNECT_BASE, max: self.config.interval.max(RECONNECT_BASE), jitter: Jitter::Equal };
        let mut failures = 0;
        let mut watch = true;
        loop {
            let ended = if watch { self.watch(&mut failures).await } else { self.poll(&mut failures).await };
            match ended {
                Ended::Unimplemented if watch => {
                    tracing::info!(endpoint = %self.endpoint.address(), "upstream does not implement grpc.health.v1 Watch; polling Check");
                    watch = false;
                }
                Ended::Unimplemented => {
                    self.update(Health::Unchecked, "the endpoint does not implement grpc.health.v1");
                    // A later deploy may add it; look again now and then.
                    tokio::time::sleep(self.config.interval).await;
                    watch = true;
                }
                Ended::Failed(error) => {
                    self.endpoint.record_error(&format!("health check: {error}"));
                    self.update(Health::Unreachable, &error);
                    failures += 1;
                    tokio::time::sleep(backoff.delay(failures, fastrand::f64())).await;
                }
            }
        }
    }

    /// Follows a `Watch` stream until it ends.
    async fn watch(&mut self, failures: &mut u32) -> Ended {
        let request = HealthCheckRequest { service: self.config.service.clone() };
        let started = tokio::time::timeout(self.config.timeout, self.client.watch(request)).await;
        let mut stream = match started {
            Err(_) => return Ended::Failed(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(status)) => return failed(&status),
            Ok(Ok(response)) => response.into_inner(),
        };
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    *failures = 0;
                    self.apply(&response);
                }
                Ok(None) => return Ended::Failed("the server ended the health watch".into()),
                Err(status) => return failed(&status),
            }
        }
    }

    /// Polls `Check` every interval until a check fails.
    async fn poll(&mut self, failures: &mut u32) -> Ended {
        loop {
            let request = HealthCheckRequest { service: self.config.service.clone() };
            match tokio::time::timeout(self.config.timeout, self.client.check(request)).await {
                Err(_) => return Ended::Failed(format!("no answer within {:?}", self.config.timeout)),
                Ok(Err(status)) if status.code() == Code::NotFound => {
                    // Check's answer for a service the server does not know.
                    *failures = 0;
                    self.update(Health::NotServing, &format!("unknown service {:?}", self.config.service));
                }
                Ok(Err(status)) => return failed(&status),
                Ok(Ok(response)) => {
                    *failures = 0;
                    self.apply(response.get_ref());
                }
            }
            tokio::time::sleep(self.config.interval).await;
        }
    }

    fn apply(&self, response: &HealthCheckResponse) {
        match ServingStatus::try_from(response.status) {
            Ok(ServingStatus::Serving) => self.update(Health::Serving, ""),
            Ok(status) => self.update(Health::NotServing, status.as_str_name()),
            Err(_) => self.update(Health::NotServing, &format!("unknown serving status {}", response.status)),
        }
    }

    fn update(&self, health: Health, detail: &str) {
        let previous = self.endpoint.set_health(health, detail);
        if previous == health {
            return;
        }
        let endpoint = self.endpoint.address();
        if health.admits() {
            tracing::info!(%endpoint, from = ?previous, to = ?health, "upstream endpoint health changed");
        } else {
            tracing::warn!(%endpoint, from = ?previous, to = ?health, detail, "upstream endpoint health changed");
            self.unhealthy.notify_waiters();
        }
    }
}

fn failed(status: &tonic::Status) -> Ended {
    if status.code() == Code::Unimplemented {
        Ended::Unimplemented
    } else {
        Ended::Failed(format!("{:?}: {}", status.code(), status.message()))
    }
}
