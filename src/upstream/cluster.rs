//! The upstream as a whole: its targets and discovery tasks, the balancer over their endpoints, a health check
//! per endpoint, the bulkhead and the retry budget. [`Upstream`] is what the gateway calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost_reflect::DynamicMessage;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::codec::Streaming;
use tonic::transport::Uri;

use crate::upstream::balancer::{Balancer, NoEndpoint};
use crate::upstream::call::{self, Attempts, CallError, CallOptions, GrpcMethod, RequestReplay, StreamItem};
use crate::upstream::codec::{self, WireCodec};
use crate::upstream::discovery::{self, MIN_RERESOLVE_INTERVAL, Target, TargetError};
use crate::upstream::dns::DnsResolver;
use crate::upstream::endpoint::{EndpointSnapshot, Lease, unix_secs};
use crate::upstream::health;
use crate::upstream::limit::{ConcurrencyLimit, LimitSnapshot, Overloaded, Slot};
use crate::upstream::retry::{Decision, FailedAttempt, RetryBudget};
use crate::upstream::{UpstreamConfig, UpstreamError};

/// The upstream service behind the gateway; cheap to clone. Its background tasks stop when the token given
/// to [`Upstream::start`] is cancelled or the last clone is dropped.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cluster's name in spans and metrics.
    name: Arc<str>,
    config: UpstreamConfig,
    balancer: Balancer,
    sources: Vec<Source>,
    health_checks: Mutex<HashMap<Uri, DropGuard>>,
    limit: ConcurrencyLimit,
    budget: RetryBudget,
    /// Woken when an endpoint stops taking traffic: DNS re-resolves.
    unhealthy: Arc<Notify>,
    /// True once every target has been resolved once (or failed to be).
    discovered: watch::Sender<bool>,
    /// Bumped whenever endpoints are added or removed.
    endpoint_set: watch::Sender<u64>,
    cancel: CancellationToken,
    _stop_tasks: DropGuard,
}

/// A dynamic target's task: what it re-reads.
enum Follow {
    Dns {
        host: String,
        port: u16,
        // Boxed: a resolver is far larger than the file variant.
        resolver: Box<DnsResolver>,
    },
    /// `contents` is what start-up read, so the task applies only later changes.
    File { path: std::path::PathBuf, contents: Vec<u8> },
}

/// One target and what it resolved to last.
struct Source {
    target: Target,
    state: Mutex<SourceState>,
}

#[derive(Default)]
struct SourceState {
    addresses: Vec<Uri>,
    resolved: bool,
    last_update: Option<SystemTime>,
    last_error: Option<String>,
}

impl SourceState {
    fn resolved(addresses: Vec<Uri>) -> Self {
        Self { addresses, resolved: true, last_update: Some(SystemTime::now()), last_error: None }
    }
}

impl Upstream {
    /// Parses the targets, reads file targets, and starts discovery and health checking. Static and file
    /// targets have their endpoints at once; DNS targets resolve in the background (calls wait for the first
    /// answer, within their deadline).
    ///
    /// # Errors
    ///
    /// No targets, an invalid target, an unreadable endpoint file, or invalid settings.
    pub fn start(targets: &[String], config: UpstreamConfig, cancel: CancellationToken) -> Result<Self, UpstreamError> {
        Self::start_named(crate::gateway::clusters::DEFAULT_CLUSTER, targets, config, cancel)
    }

    /// As [`Self::start`], for the cluster `name` (in spans and metric labels).
    ///
    /// # Errors
    ///
    /// As for [`Self::start`].
    pub fn start_named(
        name: &str,
        targets: &[String],
        config: UpstreamConfig,
        cancel: CancellationToken,
    ) -> Result<Self, UpstreamError> {
        if targets.is_empty() {
            return Err(UpstreamError::NoTargets);
        }
        config.validate()?;
        let mut sources = Vec::new();
        // What each dynamic target's task follows, by the target's index.
        let mut followers = Vec::new();
        for (index, text) in targets.iter().enumerate() {
            let target = Target::parse(text.trim())?;
            let state = match &target {
                Target::Static(uri) => SourceState::resolved(vec![uri.clone()]),
                Target::File(path) => {
                    let (contents, addresses) = discovery::read_file(path)?;
                    followers.push((index, Follow::File { path: path.clone(), contents }));
                    SourceState::resolved(addresses)
                }
                Target::Dns { host, port } => {
                    let resolver = DnsResolver::new(config.discovery.dns_server, config.discovery.dns_timeout)?;
                    followers
                        .push((index, Follow::Dns { host: host.clone(), port: *port, resolver: Box::new(resolver) }));
                    // Resolved in the background; calls wait for the first answer.
                    SourceState::default()
                }
            };
            sources.push(Source { target, state: Mutex::new(state) });
        }
        let cancel = cancel.child_token();
        let inner = Arc::new(Inner {
            name: Arc::from(name),
            balancer: Balancer::new(config.pool.clone(), config.breaker.clone()),
            limit: ConcurrencyLimit::new(config.limit.clone()),
            budget: RetryBudget::new(config.retry.budget.clone()),
            health_checks: Mutex::new(HashMap::new()),
            unhealthy: Arc::new(Notify::new()),
            discovered: watch::Sender::new(false),
            endpoint_set: watch::Sender::new(0),
            _stop_tasks: cancel.clone().drop_guard(),
            cancel,
            sources,
            config,
        });
        inner.apply_sources();
        for (index, follow) in followers {
            let weak = Arc::downgrade(&inner);
            let cancel = inner.cancel.clone();
            match follow {
                Follow::Dns { host, port, resolver } => {
                    tokio::spawn(cancel.run_until_cancelled_owned(follow_dns(weak, index, host, port, *resolver)));
                }
                Follow::File { path, contents } => {
                    tokio::spawn(cancel.run_until_cancelled_owned(follow_file(weak, index, path, contents)));
                }
            }
        }
        Ok(Self { inner })
    }

    /// A unary call; the answer is the response message's wire bytes, which the caller decodes or prints.
    ///
    /// # Errors
    ///
    /// The last attempt's status, the deadline, no usable endpoint, or a full bulkhead.
    pub async fn unary(
        &self,
        method: &GrpcMethod,
        options: &CallOptions,
        message: Bytes,
    ) -> Result<tonic::Response<Bytes>, CallError> {
        let (response, _lease) =
            call::with_retries(&*self.inner, &method.label, options, None, |lease, metadata, time_left| {
                let connection = match lease.direct() {
                    Some(direct) => Ok(direct),
                    None => Err(lease.channel()),
                };
                let message = message.clone();
                async move {
                    match connection {
                        Ok(direct) => {
                            let metadata = call::request(metadata, (), time_left).into_parts().0;
                            direct.unary(&method.path, metadata, &message).await
                        }
                        Err(channel) => {
                            let request = call::request(metadata, Ok(message), time_left);
                            call::ready_client(channel).await?.unary(request, method.path.clone(), WireCodec).await
                        }
                    }
                }
            })
            .await?;
        Ok(response)
    }

    /// A server-streaming call, retried only until the stream is established. The lease keeps the endpoint
    /// counted as busy: hold it as long as the stream. The bulkhead counts the call only until the stream is
    /// established, so long-lived streams cannot starve unary calls of slots.
    ///
    /// # Errors
    ///
    /// As for [`Self::unary`].
    pub async fn server_streaming(
        &self,
        method: &GrpcMethod,
        options: &CallOptions,
        message: Bytes,
    ) -> Result<(tonic::Response<Streaming<DynamicMessage>>, Lease), CallError> {
        call::with_retries(&*self.inner, &method.label, options, None, |lease, metadata, time_left| {
            let request = call::request(metadata, Ok(message.clone()), time_left);
            let codec = method.codec().with_decode_buffer(codec::STREAM_DECODE_BUFFER);
            let (path, channel) = (method.path.clone(), lease.channel());
            async move { call::ready_client(channel).await?.server_streaming(request, path, codec).await }
        })
        .await
    }

    /// A client-streaming call fed from `messages` as they arrive. Retried only while no message has been
    /// sent: the gateway does not keep what it streamed.
    ///
    /// # Errors
    ///
    /// As for [`Self::unary`].
    pub async fn client_streaming(
        &self,
        method: &GrpcMethod,
        options: &CallOptions,
        messages: mpsc::Receiver<StreamItem>,
    ) -> Result<tonic::Response<Bytes>, CallError> {
        let replay = RequestReplay::new(messages);
        let (response, _lease) =
            call::with_retries(&*self.inner, &method.label, options, Some(&replay), |lease, metadata, time_left| {
                let request = call::request(metadata, replay.stream(), time_left);
                let (path, channel) = (method.path.clone(), lease.channel());
                async move { call::ready_client(channel).await?.client_streaming(request, path, WireCodec).await }
            })
            .await?;
        Ok(response)
    }

    /// Ready when some endpoint is confirmed serving and not ejected.
    pub fn is_ready(&self) -> bool {
        let now = Instant::now();
        self.inner.balancer.endpoints().iter().any(|e| e.is_ready(now))
    }

    /// The endpoints' addresses, those ready to take traffic first. Waits up to `wait` for DNS targets'
    /// first answer, so a caller right after start-up does not find an empty list.
    pub async fn endpoint_addresses(&self, wait: Duration) -> Vec<Uri> {
        let mut discovered = self.inner.discovered.subscribe();
        let _ = tokio::time::timeout(wait, discovered.wait_for(|done| *done)).await;
        let now = Instant::now();
        let mut endpoints: Vec<_> = self.inner.balancer.endpoints().iter().cloned().collect();
        endpoints.sort_by_key(|endpoint| !endpoint.is_ready(now));
        endpoints.iter().map(|endpoint| endpoint.address().clone()).collect()
    }

    /// A receiver that sees a change whenever endpoints are added to the set or removed from it.
    pub fn endpoint_set_changes(&self) -> watch::Receiver<u64> {
        self.inner.endpoint_set.subscribe()
    }

    /// Everything the admin view shows.
    pub fn snapshot(&self) -> UpstreamSnapshot {
        let now = Instant::now();
        let inner = &self.inner;
        UpstreamSnapshot {
            ready: self.is_ready(),
            targets: inner
                .sources
                .iter()
                .map(|source| {
                    let state = source.state.lock().unwrap_or_else(PoisonError::into_inner);
                    TargetSnapshot {
                        target: source.target.to_string(),
                        addresses: state.addresses.iter().map(ToString::to_string).collect(),
                        last_update_unix_secs: state.last_update.map(unix_secs),
                        last_error: state.last_error.clone(),
                    }
                })
                .collect(),
            endpoints: inner.balancer.endpoints().iter().map(|e| e.snapshot(now)).collect(),
            limit: inner.limit.snapshot(),
            retry_budget_available: inner.budget.available(now),
        }
    }
}

impl Inner {
    /// Makes the union of the sources' addresses the endpoint set, and starts or stops health checks to match.
    fn apply_sources(&self) {
        let mut addresses = Vec::new();
        let mut all_resolved = true;
        for source in &self.sources {
            let state = source.state.lock().unwrap_or_else(PoisonError::into_inner);
            addresses.extend(state.addresses.iter().cloned());
            all_resolved &= state.resolved;
        }
        let mut checks = self.health_checks.lock().unwrap_or_else(PoisonError::into_inner);
        let change = self.balancer.set_addresses(&addresses);
        if !change.added.is_empty() || !change.removed.is_empty() {
            self.endpoint_set.send_modify(|generation| *generation += 1);
        }
        for endpoint in &change.removed {
            tracing::info!(endpoint = %endpoint.address(), "upstream endpoint removed");
            // Dropping the guard stops its health check; calls in flight keep the endpoint until they end.
            checks.remove(endpoint.address());
        }
        for endpoint in change.added {
            tracing::info!(endpoint = %endpoint.address(), "upstream endpoint added");
            let token = self.cancel.child_token();
            checks.insert(endpoint.address().clone(), token.clone().drop_guard());
            let check = health::run(
                endpoint,
                self.config.health.clone(),
                self.config.pool.clone(),
                Arc::clone(&self.unhealthy),
                token,
            );
            tokio::spawn(check);
        }
        if all_resolved {
            self.discovered.send_replace(true);
        }
    }

    fn update_source(&self, index: usize, result: Result<Vec<Uri>, String>) {
        let Some(source) = self.sources.get(index) else { return };
        {
            let mut state = source.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.resolved = true;
            match result {
                Ok(mut addresses) => {
                    addresses.sort_by_key(ToString::to_string);
                    if state.addresses != addresses {
                        tracing::info!(target = %source.target, count = addresses.len(), "upstream endpoints changed");
                    }
                    state.addresses = addresses;
                    state.last_update = Some(SystemTime::now());
                    state.last_error = None;
                }
                Err(error) => {
                    if state.last_error.as_ref() != Some(&error) {
                        tracing::warn!(target = %source.target, %error, "upstream discovery failed; keeping the last endpoints");
                    }
                    state.last_error = Some(error);
                }
            }
        }
        self.apply_sources();
    }
}

impl Attempts for Inner {
    async fn slot(&self, deadline: Option<Instant>) -> Result<Slot, Overloaded> {
        self.limit.acquire(deadline).await
    }

    async fn pick(&self, avoid: &[Uri], deadline: Option<Instant>) -> Result<Lease, NoEndpoint> {
        match self.balancer.pick(avoid) {
            Err(error) if !*self.discovered.borrow() => {
                // Right after start-up a DNS target may not have answered yet: wait for it, not past the
                // deadline, rather than failing the first calls.
                let mut discovered = self.discovered.subscribe();
                let limit = deadline.map_or(self.config.discovery.dns_timeout, |d| {
                    d.saturating_duration_since(Instant::now()).min(self.config.discovery.dns_timeout)
                });
                match tokio::time::timeout(limit, discovered.wait_for(|done| *done)).await {
                    Ok(Ok(_)) => self.balancer.pick(avoid),
                    _ => Err(error),
                }
            }
            picked => picked,
        }
    }

    fn start_request(&self) {
        self.budget.deposit(Instant::now());
    }

    fn decide(&self, failed: &FailedAttempt) -> Decision {
        self.config.retry.policy.decide(failed, &self.budget, Instant::now())
    }

    fn backoff(&self, attempts: u32) -> Duration {
        self.config.retry.backoff.delay(attempts, fastrand::f64())
    }

    fn cluster(&self) -> &Arc<str> {
        &self.name
    }
}

/// Re-resolves a DNS target every refresh interval, and soon after an endpoint turns unhealthy.
async fn follow_dns(inner: Weak<Inner>, index: usize, host: String, port: u16, resolver: DnsResolver) {
    loop {
        let result = discovery::resolve(&resolver, &host, port).await.map_err(|e| e.to_string());
        let Some(upstream) = inner.upgrade() else { return };
        upstream.update_source(index, result);
        let (refresh, unhealthy) = (upstream.config.discovery.dns_refresh, Arc::clone(&upstream.unhealthy));
        drop(upstream);
        let resolved_at = Instant::now();
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = unhealthy.notified() => {
                tokio::time::sleep_until(resolved_at + MIN_RERESOLVE_INTERVAL.min(refresh)).await;
            }
        }
    }
}

/// Re-reads an endpoint file when its contents change; `contents` is what start-up read.
async fn follow_file(inner: Weak<Inner>, index: usize, path: std::path::PathBuf, contents: Vec<u8>) {
    let mut last: Result<Vec<u8>, String> = Ok(contents);
    loop {
        let Some(upstream) = inner.upgrade() else { return };
        let poll = upstream.config.discovery.file_poll;
        drop(upstream);
        tokio::time::sleep(poll).await;
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || discovery::read_file(&path)
        })
        .await;
        let read = match read {
            Ok(read) => read,
            Err(error) => Err(TargetError::FileContents { path: path.clone(), reason: error.to_string() }),
        };
        let (seen, result) = match read {
            Ok((bytes, addresses)) => (Ok(bytes), Ok(addresses)),
            Err(error) => (Err(error.to_string()), Err(error.to_string())),
        };
        if last != seen {
            let Some(upstream) = inner.upgrade() else { return };
            upstream.update_source(index, result);
        }
        last = seen;
    }
}

/// The upstream as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSnapshot {
    pub ready: bool,
    pub targets: Vec<TargetSnapshot>,
    pub endpoints: Vec<EndpointSnapshot>,
    pub limit: LimitSnapshot,
    /// Retries the budget would allow right now.
    pub retry_budget_available: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSnapshot {
    pub target: String,
    pub addresses: Vec<String>,
    pub last_update_unix_secs: Option<f64>,
    pub last_error: Option<String>,
}
