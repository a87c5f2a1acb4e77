//! One upstream call, end to end: the bulkhead slot, then attempts on endpoints the balancer picks, retried
//! within the policy, the budget and the deadline.
//!
//! ```text
//! deadline ▶ bulkhead (limit.rs) ▶ retry (retry.rs) ▶ p2c balancer (balancer.rs) ▶ breaker ▶ connection
//! ```
//!
//! Retries live here rather than in a tower layer over HTTP requests because the decision needs what only the
//! call knows: the gRPC status and its transport cause (was anything sent?), whether the RPC is idempotent,
//! and for a client stream whether any message has gone out. A unary request is kept encoded ([`Bytes`]), so a
//! retry resends it without re-encoding; a client stream is replayable only until its first message is sent
//! ([`RequestReplay`]).

use std::error::Error as _;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use opentelemetry::trace::SpanContext;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Uri};
use tonic::{Code, Extensions, Status};

use crate::telemetry::metrics::{AttemptLabels, ClusterLabels, ClusterRpcLabels};
use crate::upstream::balancer::NoEndpoint;
use crate::upstream::codec::DynamicCodec;
use crate::upstream::endpoint::Lease;
use crate::upstream::limit::Overloaded;
use crate::upstream::retry::{Decision, FailedAttempt, Failure, GiveUpReason};

/// The RPC a call invokes: its gRPC path and its response type. Built once per route, not per request.
#[derive(Debug, Clone)]
pub struct GrpcMethod {
    /// `/package.Service/Method`.
    pub path: http::uri::PathAndQuery,
    /// `package.Service/Method`, as spans and metrics name the RPC; written once, shared by every call.
    pub label: Arc<str>,
    pub response: prost_reflect::MessageDescriptor,
}

impl GrpcMethod {
    pub fn codec(&self) -> DynamicCodec {
        DynamicCodec::new(self.response.clone())
    }
}

/// What the caller knows about a call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub metadata: MetadataMap,
    /// Whether the RPC may be applied twice (GET routes and configured RPCs): only then is a call that reached
    /// a server retried.
    pub idempotent: bool,
    /// The whole call's time, every attempt and wait included; `None` for none.
    pub timeout: Option<Duration>,
    /// When the request arrived; the deadline counts from here.
    pub started: Instant,
    /// The deadline is one the client chose (a `Grpc-Timeout` shorter than the gateway's own). Missing it says
    /// nothing about the endpoint: a client sending `Grpc-Timeout: 5u` must not be able to eject a healthy
    /// upstream through its circuit breaker.
    pub client_deadline: bool,
    /// The request's server span, the parent of each attempt's client span; None when traces are not exported.
    pub trace_parent: Option<SpanContext>,
}

impl CallOptions {
    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|timeout| self.started + timeout)
    }
}

/// Why a call failed, after any retries.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The last attempt's status: the upstream's answer, or tonic's on its behalf.
    #[error("{}", .0.message())]
    Status(Status),
    #[error("the deadline of {0:?} expired before the upstream answered")]
    DeadlineExceeded(Duration),
    #[error(transparent)]
    NoEndpoint(#[from] NoEndpoint),
    #[error("the upstream is overloaded: {0}")]
    Overloaded(#[from] Overloaded),
}

/// An attempt's failure, as seen by the retry loop.
enum AttemptError {
    Status(Status),
    /// The call's deadline expired during the attempt.
    TimedOut,
}

/// How a failed attempt is judged: for the retry policy, and for the endpoint's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub failure: Failure,
    /// Whether any of the request may have reached the server.
    pub sent: bool,
}

impl Classified {
    /// Failures that say something about the endpoint rather than about the request.
    pub fn counts_against_endpoint(self) -> bool {
        !matches!(self.failure, Failure::Other)
    }
}

/// Classifies a failed attempt's status by its code and its transport cause.
pub fn classify(status: &Status) -> Classified {
    let mut broken_connection = false;
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return Classified { failure: Failure::ConnectFailed, sent: false };
        }
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            if error.is_canceled() {
                // hyper cancels requests still queued for a connection that closed: none of it was written.
                return Classified { failure: Failure::Refused, sent: false };
            }
            broken_connection = true;
        }
        if let Some(error) = error.downcast_ref::<h2::Error>() {
            if error.reason() == Some(h2::Reason::REFUSED_STREAM) {
                // The protocol's promise: a refused stream was not processed.
                return Classified { failure: Failure::Refused, sent: false };
            }
            broken_connection = true;
        }
        broken_connection |= error.is::<std::io::Error>();
        source = error.source();
    }
    let failure = match status.code() {
        Code::Unavailable => Failure::Unavailable,
        Code::DeadlineExceeded => Failure::DeadlineExceeded,
        _ if is_client_timeout(status) => Failure::DeadlineExceeded,
        // tonic reports some broken connections as UNKNOWN "transport error": the request went out and the
        // connection died under it, which is UNAVAILABLE in gRPC's terms.
        _ if broken_connection => Failure::Unavailable,
        _ => Failure::Other,
    };
    Classified { failure, sent: true }
}

/// The status a client gets for a failed attempt: a broken connection is UNAVAILABLE (503), whatever code
/// tonic gave it, so that clients see a retryable failure rather than a 500.
fn client_status(status: Status, classified: Classified) -> Status {
    if classified.failure == Failure::Unavailable && status.code() != Code::Unavailable {
        Status::unavailable(format!("the upstream connection failed: {}", status.message()))
    } else {
        status
    }
}

/// tonic's client enforces the grpc-timeout it sends, and reports expiry as CANCELLED carrying its
/// `TimeoutExpired` error's text (the error itself is not kept as the status's source, so the text is all
/// there is to recognise).
fn is_client_timeout(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// The retry loop's view of the upstream: implemented by the cluster.
pub(crate) trait Attempts {
    async fn slot(&self, deadline: Option<Instant>) -> Result<crate::upstream::limit::Slot, Overloaded>;
    async fn pick(&self, avoid: &[Uri], deadline: Option<Instant>) -> Result<Lease, NoEndpoint>;
    fn start_request(&self);
    fn decide(&self, failed: &FailedAttempt) -> Decision;
    fn backoff(&self, attempts: u32) -> Duration;
    /// The cluster's name, for spans and metric labels.
    fn cluster(&self) -> &Arc<str>;
}

/// Runs `attempt` on endpoints until one succeeds or the policy gives up. `replay`, for a client stream, says
/// whether its messages can still be sent again. Returns the result with its lease, which keeps the endpoint
/// counted as busy while a streamed response lasts.
pub(crate) async fn with_retries<A, T, F, Fut>(
    upstream: &A,
    rpc: &Arc<str>,
    options: &CallOptions,
    replay: Option<&RequestReplay>,
    mut attempt: F,
) -> Result<(T, Lease), CallError>
where
    A: Attempts,
    F: FnMut(&Lease, tonic::metadata::MetadataMap, Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = options.deadline();
    let timed_out = || CallError::DeadlineExceeded(options.timeout.unwrap_or_default());
    let _slot = upstream.slot(deadline).await?;
    upstream.start_request();
    let mut tried: Vec<Uri> = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut lease = upstream.pick(&tried, deadline).await?;
        let time_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if time_left.is_some_and(|left| left.is_zero()) {
            return Err(timed_out());
        }
        let observed = ObservedAttempt::start(upstream.cluster(), rpc, &lease, attempts, options.trace_parent.as_ref());
        let mut metadata = with_room(&options.metadata);
        if let Some(span_context) = observed.span.span_context() {
            crate::telemetry::traces::inject(span_context, &mut metadata);
        }
        // The client span is timed from its creation to `finish`, and it is the upstream's parent through
        // `traceparent`; nothing inside the attempt logs or makes spans of its own.
        let outcome = run_attempt(&lease, time_left, metadata, &mut attempt).await;
        observed.finish(&outcome);
        let status = match outcome {
            Ok(value) => {
                lease.succeeded();
                return Ok((value, lease));
            }
            Err(AttemptError::TimedOut) => {
                if !options.client_deadline {
                    lease.failed("no answer before the deadline");
                }
                return Err(timed_out());
            }
            Err(AttemptError::Status(status)) => status,
        };
        let classified = classify(&status);
        if classified.failure == Failure::DeadlineExceeded && options.client_deadline {
            // The client's own short deadline: neither a failure nor a success of the endpoint.
        } else if classified.counts_against_endpoint() {
            lease.failed(&format!("{:?}: {}", status.code(), status.message()));
        } else {
            lease.succeeded();
        }
        let endpoint = lease.address().clone();
        drop(lease);
        let failed = FailedAttempt {
            sent: classified.sent,
            idempotent: options.idempotent,
            partial_stream: replay.is_some_and(RequestReplay::pulled),
            failure: classified.failure,
            attempts,
            time_left: deadline.map(|d| d.saturating_duration_since(Instant::now())),
            delay: upstream.backoff(attempts),
        };
        match upstream.decide(&failed) {
            // A stream whose first message went out between the decision and now cannot be replayed.
            Decision::RetryAfter(delay) if replay.is_none_or(RequestReplay::rewind) => {
                tracing::debug!(%endpoint, attempts, ?delay, code = ?status.code(), "retrying on another endpoint");
                crate::telemetry::metrics::upstream()
                    .retries
                    .get_or_create(&ClusterRpcLabels { cluster: Arc::clone(upstream.cluster()), rpc: Arc::clone(rpc) })
                    .inc();
                tried.push(endpoint);
                tokio::time::sleep(delay).await;
            }
            decision => {
                if let Decision::GiveUp(reason) = decision {
                    tracing::debug!(%endpoint, attempts, reason = reason.as_str(), code = ?status.code(), "not retrying");
                    if reason == GiveUpReason::BudgetExhausted {
                        crate::telemetry::metrics::upstream()
                            .budget_exhausted
                            .get_or_create(&ClusterLabels { cluster: Arc::clone(upstream.cluster()) })
                            .inc();
                    }
                }
                return Err(match classified.failure {
                    Failure::DeadlineExceeded if is_client_timeout(&status) => timed_out(),
                    _ => CallError::Status(client_status(status, classified)),
                });
            }
        }
    }
}

async fn run_attempt<T, F, Fut>(
    lease: &Lease,
    time_left: Option<Duration>,
    metadata: MetadataMap,
    attempt: &mut F,
) -> Result<T, AttemptError>
where
    F: FnMut(&Lease, MetadataMap, Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let call = attempt(lease, metadata, time_left);
    match time_left {
        Some(left) => tokio::time::timeout(left, call).await.map_err(|_| AttemptError::TimedOut)?,
        None => call.await,
    }
    .map_err(AttemptError::Status)
}

/// A tonic client on `channel`, once the channel can take a call.
///
/// # Errors
///
/// The channel's worker is gone: a status saying that nothing was sent.
pub async fn ready_client(channel: Channel) -> Result<Grpc<Channel>, Status> {
    let mut grpc = Grpc::new(channel);
    match grpc.ready().await {
        Ok(()) => Ok(grpc),
        Err(error) => Err(Status::from_error(Box::new(tonic::ConnectError(Box::new(error))))),
    }
}

/// One attempt as telemetry sees it: its client span (the parent of the upstream's server span) and its
/// duration by cluster, endpoint, RPC and code.
struct ObservedAttempt {
    span: crate::telemetry::grpc::ClientSpan,
    cluster: Arc<str>,
    rpc: Arc<str>,
    /// The endpoint: its label, and the attempt histograms' handles it keeps.
    endpoint: Arc<crate::upstream::endpoint::Endpoint>,
    started: std::time::Instant,
}

impl ObservedAttempt {
    fn start(cluster: &Arc<str>, rpc: &Arc<str>, lease: &Lease, attempt: u32, parent: Option<&SpanContext>) -> Self {
        Self {
            span: crate::telemetry::grpc::client_span(parent, cluster, rpc, lease.address(), attempt),
            cluster: Arc::clone(cluster),
            rpc: Arc::clone(rpc),
            endpoint: Arc::clone(lease.endpoint()),
            started: std::time::Instant::now(),
        }
    }

    fn finish<T>(self, outcome: &Result<T, AttemptError>) {
        let code = match outcome {
            Ok(_) => Code::Ok,
            Err(AttemptError::TimedOut) => Code::DeadlineExceeded,
            Err(AttemptError::Status(status)) => status.code(),
        };
        self.span.finish(code);
        let key = (self.cluster, self.rpc, crate::user_service::code_name(code));
        // The labels are built only when the endpoint has no handle for this cluster, RPC and code yet.
        let create = || {
            let (cluster, rpc, code) = &key;
            let labels = AttemptLabels {
                cluster: Arc::clone(cluster),
                endpoint: Arc::clone(self.endpoint.label()),
                rpc: Arc::clone(rpc),
                code,
            };
            crate::telemetry::metrics::upstream().attempt_duration.get_or_create_owned(&labels)
        };
        let histogram = self.endpoint.attempt_histograms().get_or_create(&key, create);
        histogram.observe(crate::telemetry::metrics::seconds(self.started.elapsed()));
    }
}

/// A request for one attempt, with the metadata and the time left sent upstream as `grpc-timeout`, so the
/// server stops working on an answer nobody will wait for.
pub fn request<T>(mut metadata: MetadataMap, message: T, time_left: Option<Duration>) -> tonic::Request<T> {
    if let Some(time_left) = time_left {
        static GRPC_TIMEOUT: LazyLock<AsciiMetadataKey> =
            LazyLock::new(|| AsciiMetadataKey::from_static("grpc-timeout"));
        metadata.insert(GRPC_TIMEOUT.clone(), grpc_timeout(time_left));
    }
    tonic::Request::from_parts(metadata, Extensions::default(), message)
}

/// A copy of the call's metadata with room for what an attempt adds (`grpc-timeout`, `traceparent` and
/// `tracestate`, and the direct path's content-type, te and user-agent): a cloned map keeps no spare
/// capacity, so each of those would otherwise grow it again.
fn with_room(metadata: &MetadataMap) -> MetadataMap {
    const ADDED_PER_ATTEMPT: usize = 6;
    let mut headers = metadata.clone().into_headers();
    headers.reserve(ADDED_PER_ATTEMPT);
    MetadataMap::from_headers(headers)
}

/// `time_left` as the `grpc-timeout` metadata value ([`crate::grpc_timeout::write`]). A value that differs on
/// every call (below a second) is sent "never indexed": it would only churn HPACK's dynamic tables; one that
/// repeats (the default 30 s is `29999m`) is indexed, and costs both ends an index byte instead of a
/// Huffman-coded name and value per call.
fn grpc_timeout(time_left: Duration) -> AsciiMetadataValue {
    let text = crate::grpc_timeout::write(time_left);
    let varies = crate::grpc_timeout::varies_per_call(&text);
    // Digits and a letter: always a valid value.
    let mut value = AsciiMetadataValue::try_from(text).unwrap_or_else(|_| AsciiMetadataValue::from_static("99999999H"));
    value.set_sensitive(varies);
    value
}

/// One item of a client stream, from the reader of the HTTP body to the upstream call.
#[derive(Debug)]
pub enum StreamItem {
    Message(Bytes),
    /// The body broke: the call must fail rather than end as if the stream were complete.
    Failed(Status),
    /// The body ended cleanly: the stream is complete. Only this ends the upstream stream cleanly; a channel
    /// closed without it (the HTTP client went away, the handler was dropped) fails the call, so the server
    /// never takes a cut-off stream for a whole one (a batch would commit its first half).
    End,
}

/// A client stream that can be sent again until its first message has gone out.
///
/// The messages come from a channel the HTTP body feeds. Each attempt reads them through its own
/// [`AttemptStream`]; a retry first [rewinds](Self::rewind), which only succeeds if no attempt has taken a
/// message yet, and retires the earlier attempts' streams so that a late poll from one of them (hyper may
/// still hold its body for a moment) cannot take a message meant for the new attempt.
pub struct RequestReplay {
    state: Arc<Mutex<ReplayState>>,
}

struct ReplayState {
    messages: mpsc::Receiver<StreamItem>,
    generation: u64,
    pulled: bool,
    /// [`StreamItem::End`] has been taken: every later poll, of this attempt's stream or a retry's, ends.
    ended: bool,
}

impl RequestReplay {
    pub fn new(messages: mpsc::Receiver<StreamItem>) -> Self {
        Self { state: Arc::new(Mutex::new(ReplayState { messages, generation: 0, pulled: false, ended: false })) }
    }

    /// The stream for the next attempt.
    pub fn stream(&self) -> AttemptStream {
        let generation = self.lock().generation;
        AttemptStream { state: Arc::clone(&self.state), generation, retired: false }
    }

    /// Whether any message has been taken for sending.
    pub fn pulled(&self) -> bool {
        self.lock().pulled
    }

    /// Prepares a retry: true if nothing was sent, and then no earlier attempt's stream yields another item.
    pub fn rewind(&self) -> bool {
        let mut state = self.lock();
        if state.pulled {
            return false;
        }
        state.generation += 1;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One attempt's view of a [`RequestReplay`].
pub struct AttemptStream {
    state: Arc<Mutex<ReplayState>>,
    generation: u64,
    retired: bool,
}

impl Stream for AttemptStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.retired {
            return Poll::Ready(None);
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.generation != self.generation {
            drop(state);
            self.retired = true;
            // An error, not the end: ending cleanly would tell the server the (empty) stream was complete.
            return Poll::Ready(Some(Err(Status::cancelled("superseded by a retry"))));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(state.messages.poll_recv(cx)) {
            Some(StreamItem::Message(message)) => {
                state.pulled = true;
                Poll::Ready(Some(Ok(message)))
            }
            Some(StreamItem::Failed(status)) => {
                state.pulled = true;
                Poll::Ready(Some(Err(status)))
            }
            Some(StreamItem::End) => {
                state.ended = true;
                Poll::Ready(None)
            }
            None => {
                drop(state);
                self.retired = true;
                Poll::Ready(Some(Err(Status::cancelled("the request stream was abandoned before its end"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::StreamExt;

    use super::*;

    #[test]
    fn grpc_timeout_is_valid_never_later_and_within_a_thousandth() {
        let mut cases = vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999),
            Duration::from_nanos(1000),
            Duration::from_nanos(99_999_999),
            Duration::from_nanos(100_000_000),
            Duration::from_millis(500),
            Duration::from_millis(29_999),
            Duration::from_secs(30),
            Duration::from_secs(99_999),
            Duration::from_secs(100_000),
            Duration::from_secs(3 * 86_400 + 7),
            Duration::from_secs(99_999_999 * 60),
            Duration::from_secs(99_999_999 * 3600),
        ];
        // Every power of ten of nanoseconds, and just below and above it.
        for exponent in 0..19 {
            let nanos = 10u64.pow(exponent);
            cases.extend([nanos - 1, nanos, nanos + 1, nanos * 3 + 7].map(Duration::from_nanos));
        }
        for time_left in cases {
            let value = request(MetadataMap::new(), (), Some(time_left));
            let value = value.metadata().get("grpc-timeout").expect("a deadline is sent");
            let text = value.to_str().expect("ASCII");
            let sent = crate::grpc_timeout::parse(text)
                .unwrap_or_else(|| panic!("{time_left:?}: {text} is not a grpc-timeout"));
            assert!(sent <= time_left, "{time_left:?}: {text} is later than the deadline");
            let lost = time_left - sent;
            assert!(lost.as_nanos() * 1000 <= time_left.as_nanos(), "{time_left:?}: {text} loses more than 0.1%");
            assert_eq!(value.is_sensitive(), text.ends_with(['u', 'n']), "{time_left:?}: {text}");
        }
        assert_eq!(grpc_timeout(Duration::MAX), "99999999H", "capped, where tonic would panic");
        assert!(request(MetadataMap::new(), (), None).metadata().get("grpc-timeout").is_none());
    }

    #[test]
    fn the_default_deadline_is_the_same_value_on_every_call() {
        // 30 s less whatever the gateway spent before the call (well under a millisecond).
        let values: Vec<_> = [0, 1, 50_000, 999_999]
            .map(|spent_nanos| grpc_timeout(Duration::from_secs(30) - Duration::from_nanos(spent_nanos)))
            .into_iter()
            .collect();
        assert_eq!(values[0], "30000m");
        assert!(values[1..].iter().all(|value| value == "29999m"), "{values:?}");
        assert!(values.iter().all(|value| !value.is_sensitive()), "a repeating value is indexed by HPACK");
    }

    use crate::upstream::balancer::Balancer;
    use crate::upstream::breaker::BreakerConfig;
    use crate::upstream::limit::{ConcurrencyLimit, LimitConfig, Slot};
    use crate::upstream::pool::{PoolConfig, parse_url};
    use crate::upstream::retry::{Backoff, RetryBudget, RetryBudgetConfig, RetryPolicy};

    /// Two endpoints that are never dialled: the attempts below answer without using the channel.
    struct FakeUpstream {
        balancer: Balancer,
        budget: RetryBudget,
        limit: ConcurrencyLimit,
    }

    impl FakeUpstream {
        fn new(budget: RetryBudgetConfig) -> Result<Self, Box<dyn std::error::Error>> {
            let balancer = Balancer::new(PoolConfig::default(), BreakerConfig::default());
            balancer.set_addresses(&[parse_url("http://127.0.0.1:1")?, parse_url("http://127.0.0.2:1")?]);
            Ok(Self {
                balancer,
                budget: RetryBudget::new(budget),
                limit: ConcurrencyLimit::new(LimitConfig::default()),
            })
        }

        /// Calls sent to each endpoint.
        fn requests(&self) -> Vec<u64> {
            self.balancer.endpoints().iter().map(|e| e.snapshot(Instant::now()).requests).collect()
        }
    }

    impl Attempts for FakeUpstream {
        async fn slot(&self, deadline: Option<Instant>) -> Result<Slot, Overloaded> {
            self.limit.acquire(deadline).await
        }
        async fn pick(&self, avoid: &[Uri], _deadline: Option<Instant>) -> Result<Lease, NoEndpoint> {
            self.balancer.pick(avoid)
        }
        fn start_request(&self) {
            self.budget.deposit(Instant::now());
        }
        fn decide(&self, failed: &FailedAttempt) -> Decision {
            RetryPolicy::default().decide(failed, &self.budget, Instant::now())
        }
        fn backoff(&self, attempts: u32) -> Duration {
            Backoff::default().delay(attempts, 0.5)
        }
        fn cluster(&self) -> &Arc<str> {
            static NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("test"));
            &NAME
        }
    }

    fn options(idempotent: bool, timeout: Option<Duration>) -> CallOptions {
        CallOptions {
            metadata: MetadataMap::new(),
            idempotent,
            timeout,
            started: Instant::now(),
            client_deadline: false,
            trace_parent: None,
        }
    }

    /// Runs a call whose attempts answer from `answers` in turn; returns the outcome and the attempts made.
    async fn call(
        upstream: &FakeUpstream,
        options: &CallOptions,
        answers: Vec<Result<&'static str, Status>>,
    ) -> (Result<&'static str, CallError>, u32) {
        let made = AtomicU32::new(0);
        let answers = Mutex::new(answers.into_iter());
        let result = with_retries(
            upstream,
            &Arc::from("test.Service/Method"),
            options,
            None,
            |_lease, _metadata, _time_left| {
                made.fetch_add(1, Ordering::Relaxed);
                let answer = answers.lock().ok().and_then(|mut answers| answers.next());
                async move {
                    match answer {
                        Some(answer) => answer,
                        None => std::future::pending().await,
                    }
                }
            },
        )
        .await;
        (result.map(|(value, _lease)| value), made.load(Ordering::Relaxed))
    }

    fn connect_failed() -> Status {
        Status::from_error(Box::new(tonic::ConnectError("connection refused".into())))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_call_is_retried_on_the_other_endpoint() -> Result<(), Box<dyn std::error::Error>> {
        let upstream = FakeUpstream::new(RetryBudgetConfig::default())?;
        let (result, attempts) =
            call(&upstream, &options(true, None), vec![Err(Status::unavailable("reset")), Ok("user")]).await;
        assert_eq!(result.ok(), Some("user"));
        assert_eq!(attempts, 2);
        assert_eq!(upstream.requests(), [1, 1], "the retry went to the other endpoint");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn what_may_have_been_applied_is_retried_only_when_idempotent() -> Result<(), Box<dyn std::error::Error>> {
        let upstream = FakeUpstream::new(RetryBudgetConfig::default())?;
        let (result, attempts) =
            call(&upstream, &options(false, None), vec![Err(Status::unavailable("reset")), Ok("x")]).await;
        assert!(matches!(result, Err(CallError::Status(status)) if status.code() == Code::Unavailable));
        assert_eq!(attempts, 1);
        // Never sent: retried whatever the method.
        let (result, attempts) =
            call(&upstream, &options(false, None), vec![Err(connect_failed()), Ok("created")]).await;
        assert_eq!((result.ok(), attempts), (Some("created"), 2));
        // An answer is an answer.
        let (result, attempts) =
            call(&upstream, &options(true, None), vec![Err(Status::not_found("no user")), Ok("x")]).await;
        assert!(matches!(result, Err(CallError::Status(status)) if status.code() == Code::NotFound));
        assert_eq!(attempts, 1);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_the_limit_and_at_the_deadline() -> Result<(), Box<dyn std::error::Error>> {
        let upstream = FakeUpstream::new(RetryBudgetConfig::default())?;
        let down = || Err(Status::unavailable("down"));
        let (result, attempts) = call(&upstream, &options(true, None), vec![down(), down(), down(), Ok("x")]).await;
        assert!(matches!(result, Err(CallError::Status(_))));
        assert_eq!(attempts, 3, "max_attempts is 3");

        // An attempt that never answers ends at the call's deadline: one attempt, then 504.
        let started = Instant::now();
        let (result, attempts) = call(&upstream, &options(true, Some(Duration::from_millis(300))), vec![]).await;
        assert!(matches!(result, Err(CallError::DeadlineExceeded(d)) if d == Duration::from_millis(300)));
        assert_eq!((attempts, started.elapsed()), (1, Duration::from_millis(300)));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_the_client_chose_does_not_count_against_the_endpoint() -> Result<(), Box<dyn std::error::Error>>
    {
        let failures = |upstream: &FakeUpstream| -> u64 {
            upstream.balancer.endpoints().iter().map(|e| e.snapshot(Instant::now()).failures).sum()
        };
        let late = || Err(Status::deadline_exceeded("late"));
        let upstream = FakeUpstream::new(RetryBudgetConfig::default())?;
        let client = CallOptions { client_deadline: true, ..options(false, Some(Duration::from_micros(5))) };
        for _ in 0..10 {
            let (result, _) = call(&upstream, &client, vec![late()]).await;
            assert!(result.is_err());
        }
        assert_eq!(failures(&upstream), 0, "a client's 5 µs deadline is the client's own business");

        let (result, _) = call(&upstream, &options(false, Some(Duration::from_secs(30))), vec![late()]).await;
        assert!(result.is_err());
        assert_eq!(failures(&upstream), 1, "the gateway's own deadline still counts");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_stops_retries() -> Result<(), Box<dyn std::error::Error>> {
        let empty = RetryBudgetConfig { ratio: 0.0, min_retries_per_second: 0, ..RetryBudgetConfig::default() };
        let upstream = FakeUpstream::new(empty)?;
        let (result, attempts) = call(&upstream, &options(true, None), vec![Err(connect_failed()), Ok("x")]).await;
        assert!(matches!(result, Err(CallError::Status(status)) if status.code() == Code::Unavailable));
        assert_eq!(attempts, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_rewinds_until_its_first_message_is_taken() {
        let (sink, messages) = mpsc::channel(4);
        let replay = RequestReplay::new(messages);
        let mut first = replay.stream();
        assert!(!replay.pulled());
        assert!(replay.rewind());
        // The retired stream must not take the message meant for the next attempt.
        sink.send(StreamItem::Message(Bytes::from_static(b"one"))).await.ok();
        assert!(matches!(first.next().await, Some(Err(status)) if status.code() == Code::Cancelled));
        assert!(first.next().await.is_none());

        let mut second = replay.stream();
        assert_eq!(second.next().await.and_then(Result::ok), Some(Bytes::from_static(b"one")));
        assert!(replay.pulled());
        assert!(!replay.rewind());
        sink.send(StreamItem::End).await.ok();
        assert!(second.next().await.is_none(), "an explicit end ends the stream cleanly");
        assert!(second.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_abandoned_without_its_end_fails_instead_of_ending() {
        let (sink, messages) = mpsc::channel(4);
        let replay = RequestReplay::new(messages);
        let mut stream = replay.stream();
        sink.send(StreamItem::Message(Bytes::from_static(b"half"))).await.ok();
        drop(sink);
        assert_eq!(stream.next().await.and_then(Result::ok), Some(Bytes::from_static(b"half")));
        assert!(matches!(stream.next().await, Some(Err(status)) if status.code() == Code::Cancelled));
        assert!(stream.next().await.is_none());

        // An empty stream that ended cleanly can be sent again: a retry's stream ends at once too.
        let (sink, messages) = mpsc::channel(4);
        let replay = RequestReplay::new(messages);
        sink.send(StreamItem::End).await.ok();
        drop(sink);
        assert!(replay.stream().next().await.is_none());
        assert!(replay.rewind());
        assert!(replay.stream().next().await.is_none());
    }

    #[test]
    fn classifies_by_code_when_there_is_no_transport_cause() {
        let cases = [
            (Status::unavailable("down"), Failure::Unavailable, true),
            (Status::deadline_exceeded("slow"), Failure::DeadlineExceeded, true),
            (Status::cancelled(tonic::TimeoutExpired(()).to_string()), Failure::DeadlineExceeded, true),
            (Status::cancelled("client went away"), Failure::Other, true),
            (Status::not_found("no user"), Failure::Other, true),
            (Status::from_error(Box::new(tonic::ConnectError("refused".into()))), Failure::ConnectFailed, false),
        ];
        for (status, failure, sent) in cases {
            assert_eq!(classify(&status), Classified { failure, sent }, "{status:?}");
        }
        assert!(!classify(&Status::not_found("x")).counts_against_endpoint());
        assert!(classify(&Status::unavailable("x")).counts_against_endpoint());
    }
}
