//! Prometheus metrics: one registry per process, rendered as Prometheus text at `GET /metrics` on the admin
//! listener.
//!
//! Each program's families are a group ([`gateway`], [`upstream`], [`user_service`], [`store`]) registered
//! the first time the program touches it, so a gateway's page shows no UserService families and the other
//! way round; `portico serve` shows both. Label values are route templates, RPC names, cluster names and
//! endpoint addresses: sets that grow with configuration, never with traffic (no ids, no raw paths).
//!
//! State that already lives elsewhere (breakers, health, pool connections, the database pool) is read at
//! scrape time by collectors ([`register_collector`]) rather than copied into gauges on every change.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::with_prefix("portico")));

fn with_registry<T>(register: impl FnOnce(&mut Registry) -> T) -> T {
    register(&mut REGISTRY.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Adds a collector read on every scrape (for state kept by its owner, such as breakers or a pool).
pub fn register_collector(collector: Box<dyn Collector>) {
    with_registry(|registry| registry.register_collector(collector));
}

/// A gauge read on each scrape: `None` leaves it off the page (its owner is gone).
type ReadGauge = Box<dyn Fn() -> Option<i64> + Send + Sync>;

/// The gauges of [`gauge_fn`], by name: registering a name again replaces its reader, so a process that
/// restarts a component (or a test that starts several) reports the latest one once.
static GAUGE_FNS: Mutex<Vec<(&'static str, &'static str, ReadGauge)>> = Mutex::new(Vec::new());

/// Reports `name` (without the `portico_` prefix) as a gauge whose value `read` gives on each scrape.
pub fn gauge_fn(name: &'static str, help: &'static str, read: impl Fn() -> Option<i64> + Send + Sync + 'static) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| register_collector(Box::new(GaugeFns)));
    let mut gauges = GAUGE_FNS.lock().unwrap_or_else(PoisonError::into_inner);
    gauges.retain(|(existing, _, _)| *existing != name);
    gauges.push((name, help, Box::new(read)));
}

#[derive(Debug)]
struct GaugeFns;

impl Collector for GaugeFns {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let gauges = GAUGE_FNS.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, help, read) in gauges.iter() {
            if let Some(value) = read() {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// Every registered family in the Prometheus text format (0.0.4).
///
/// # Errors
///
/// Only if a collector fails to encode, which the collectors here never do.
pub fn render() -> Result<String, std::fmt::Error> {
    let mut open_metrics = String::new();
    with_registry(|registry| prometheus_client::encoding::text::encode(&mut open_metrics, registry))?;
    Ok(to_prometheus_text(&open_metrics))
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`, and adds `# UNIT`
/// and `# EOF` lines. The Prometheus text format (what `promtool check metrics` and older scrapers read) names
/// the family after its samples and has no such lines; this renames counter families and drops those lines.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open_metrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut text = String::with_capacity(open_metrics.len() + counters.len() * 16);
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// How many label sets a [`HandleCache`] keeps; past that, the family is asked each time.
const HANDLE_CACHE_CAPACITY: usize = 32;

/// Metric handles by label values, kept beside what the labels describe (a route, an endpoint), so that a
/// request finds its handle without the family's lookup, which hashes every label and takes the family's
/// lock (a few hundred instructions, and a write to a cache line every worker thread shares).
///
/// A handle is the family's own child (same counters), so scrapes see what it records. Reading is lock-free
/// (arc-swap); a new key copies the short list. Label values that do not grow with traffic (methods,
/// statuses, codes) keep it small; [`HANDLE_CACHE_CAPACITY`] bounds it all the same.
pub struct HandleCache<K, M> {
    entries: arc_swap::ArcSwap<Vec<(K, M)>>,
}

impl<K, M> Default for HandleCache<K, M> {
    fn default() -> Self {
        Self { entries: arc_swap::ArcSwap::from_pointee(Vec::new()) }
    }
}

impl<K, M> std::fmt::Debug for HandleCache<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleCache").field("entries", &self.entries.load().len()).finish()
    }
}

impl<K: PartialEq + Clone, M: Clone> HandleCache<K, M> {
    /// The handle for `key` from `cache` when there is one (see [`Self::get_or_create`]), else `create`'s.
    pub fn get_or_create_in(cache: Option<&Self>, key: &K, create: impl FnOnce() -> M) -> M {
        match cache {
            Some(cache) => cache.get_or_create(key, create),
            None => create(),
        }
    }

    /// The handle for `key`: the cached one, else `create`'s (the family's child), kept for next time.
    pub fn get_or_create(&self, key: &K, create: impl FnOnce() -> M) -> M {
        if let Some((_, handle)) = self.entries.load().iter().find(|(cached, _)| cached == key) {
            return handle.clone();
        }
        let handle = create();
        if self.entries.load().len() < HANDLE_CACHE_CAPACITY {
            self.entries.rcu(|entries| {
                let mut entries = Vec::clone(entries);
                if !entries.iter().any(|(cached, _)| cached == key) {
                    entries.push((key.clone(), handle.clone()));
                }
                entries
            });
        }
        handle
    }
}

/// A route's request metrics, by method and status (see [`HandleCache`]).
#[derive(Debug, Default)]
pub struct RouteHandles {
    pub duration: HandleCache<(Cow<'static, str>, u16), Histogram>,
    pub request_bytes: HandleCache<Cow<'static, str>, Counter>,
    pub response_bytes: HandleCache<Cow<'static, str>, Counter>,
}

/// Latency buckets from 0.5 ms to about 33 s, doubling: covers a cache-speed lookup and a slow upstream alike.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram_family<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: Cow<'static, str>,
    /// The route template (`/v1/users/{id}`), an operational path, or `unmatched`; shared, not copied, per
    /// request.
    pub route: Arc<str>,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: Cow<'static, str>,
    pub route: Arc<str>,
}

/// Why the gateway's limits refused a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// `rate_limit` (429), `overload` (`--max-concurrent-requests`, 503) or `streams` (`--max-streams`, 503).
    pub reason: &'static str,
}

/// The gateway's HTTP side.
pub struct GatewayMetrics {
    pub request_duration: HistogramFamily<RequestLabels>,
    pub requests_in_flight: Gauge,
    pub open_streams: Family<RouteLabels, Gauge>,
    pub request_bytes: Family<RouteLabels, Counter>,
    pub response_bytes: Family<RouteLabels, Counter>,
    pub rejected: Family<RejectionLabels, Counter>,
}

impl GatewayMetrics {
    /// Counts one request the limits refused.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectionLabels { reason }).inc();
    }
}

/// The gateway's metrics, registered on first use.
pub fn gateway() -> &'static GatewayMetrics {
    static GATEWAY: LazyLock<GatewayMetrics> = LazyLock::new(|| {
        let metrics = GatewayMetrics {
            request_duration: histogram_family(),
            requests_in_flight: Gauge::default(),
            open_streams: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            rejected: Family::default(),
        };
        with_registry(|r| {
            r.register_with_unit(
                "http_server_request_duration",
                "Time from a request's arrival to the end of its response body (a server stream: its whole life)",
                Unit::Seconds,
                metrics.request_duration.clone(),
            );
            r.register(
                "http_server_requests_in_flight",
                "Requests being handled, server streams included",
                metrics.requests_in_flight.clone(),
            );
            r.register(
                "http_server_open_streams",
                "Server streams (SSE, NDJSON) open to clients",
                metrics.open_streams.clone(),
            );
            r.register_with_unit(
                "http_server_request_body",
                "Request body bytes read",
                Unit::Bytes,
                metrics.request_bytes.clone(),
            );
            r.register_with_unit(
                "http_server_response_body",
                "Response body bytes sent",
                Unit::Bytes,
                metrics.response_bytes.clone(),
            );
            r.register(
                "gateway_rejected_requests",
                "Requests refused by the gateway's limits before any upstream call, by reason",
                metrics.rejected.clone(),
            );
        });
        metrics
    });
    &GATEWAY
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Shared with the cluster, the endpoint and the route, which write their labels once.
    pub cluster: Arc<str>,
    pub endpoint: Arc<String>,
    /// `package.Service/Method`.
    pub rpc: Arc<str>,
    /// The gRPC code name, or `DEADLINE_EXCEEDED` for an attempt cut by the call's deadline.
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterRpcLabels {
    pub cluster: Arc<str>,
    pub rpc: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: Arc<str>,
}

/// The gateway's upstream calls.
pub struct UpstreamMetrics {
    /// One observation per attempt.
    pub attempt_duration: HistogramFamily<AttemptLabels>,
    pub retries: Family<ClusterRpcLabels, Counter>,
    pub budget_exhausted: Family<ClusterLabels, Counter>,
}

/// The upstream metrics, registered on first use.
pub fn upstream() -> &'static UpstreamMetrics {
    static UPSTREAM: LazyLock<UpstreamMetrics> = LazyLock::new(|| {
        let metrics = UpstreamMetrics {
            attempt_duration: histogram_family(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
        };
        with_registry(|r| {
            r.register_with_unit(
                "upstream_call_duration",
                "Time of one attempt of an upstream gRPC call, to its response headers",
                Unit::Seconds,
                metrics.attempt_duration.clone(),
            );
            r.register("upstream_retries", "Attempts after the first, by RPC", metrics.retries.clone());
            r.register(
                "upstream_retry_budget_exhausted",
                "Retries refused because the cluster's retry budget was empty",
                metrics.budget_exhausted.clone(),
            );
        });
        metrics
    });
    &UPSTREAM
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `package.Service/Method`.
    pub rpc: String,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    /// The store operation (`get_user`, `create_user`, …): one per statement or transaction.
    pub operation: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// The UserService's gRPC side.
pub struct UserServiceMetrics {
    pub rpc_duration: HistogramFamily<RpcLabels>,
    pub watchers: Gauge,
    pub hash_queue_wait: Histogram,
}

/// The UserService's metrics, registered on first use.
pub fn user_service() -> &'static UserServiceMetrics {
    static USER_SERVICE: LazyLock<UserServiceMetrics> = LazyLock::new(|| {
        let metrics = UserServiceMetrics {
            rpc_duration: histogram_family(),
            watchers: Gauge::default(),
            hash_queue_wait: latency_histogram(),
        };
        with_registry(|r| {
            r.register_with_unit(
                "grpc_server_call_duration",
                "Time of a UserService call, to the end of its response (streams: their whole life)",
                Unit::Seconds,
                metrics.rpc_duration.clone(),
            );
            r.register("user_service_watchers", "WatchUsers streams connected", metrics.watchers.clone());
            r.register_with_unit(
                "user_service_password_hash_queue_wait",
                "Time a password hash waited for a hashing thread",
                Unit::Seconds,
                metrics.hash_queue_wait.clone(),
            );
        });
        metrics
    });
    &USER_SERVICE
}

/// The outbox relay (only in the process that holds its lease).
pub struct RelayMetrics {
    pub published: Counter,
    pub failed: Counter,
    /// The published mark: the outbox backlog is the change log's head minus this.
    pub published_revision: Gauge,
}

/// The relay's metrics, registered when a relay starts publishing.
pub fn relay() -> &'static RelayMetrics {
    static RELAY: LazyLock<RelayMetrics> = LazyLock::new(|| {
        let metrics = RelayMetrics {
            published: Counter::default(),
            failed: Counter::default(),
            published_revision: Gauge::default(),
        };
        with_registry(|r| {
            r.register(
                "user_service_events_published",
                "Changes published to NATS JetStream and acknowledged",
                metrics.published.clone(),
            );
            r.register(
                "user_service_events_publish_failed",
                "Publishes that got no acknowledgement",
                metrics.failed.clone(),
            );
            r.register(
                "user_service_outbox_published_revision",
                "The last revision the relay published (backlog: change_log_revision minus this)",
                metrics.published_revision.clone(),
            );
        });
        metrics
    });
    &RELAY
}

/// The store, whatever its backend.
pub struct StoreMetrics {
    pub statement_duration: HistogramFamily<StatementLabels>,
}

/// The store's metrics, registered on first use.
pub fn store() -> &'static StoreMetrics {
    static STORE: LazyLock<StoreMetrics> = LazyLock::new(|| {
        let metrics = StoreMetrics { statement_duration: histogram_family() };
        with_registry(|r| {
            r.register_with_unit(
                "store_statement_duration",
                "Time of one store operation (a statement or a transaction), by operation",
                Unit::Seconds,
                metrics.statement_duration.clone(),
            );
        });
        metrics
    });
    &STORE
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` or `export_failed`.
    pub reason: &'static str,
}

/// The trace exporter's own health.
pub struct TraceExportMetrics {
    pub exported: Counter,
    pub dropped: Family<DropLabels, Counter>,
}

/// The trace exporter's metrics, registered when tracing is set up.
pub fn trace_export() -> &'static TraceExportMetrics {
    static TRACES: LazyLock<TraceExportMetrics> = LazyLock::new(|| {
        let metrics = TraceExportMetrics { exported: Counter::default(), dropped: Family::default() };
        with_registry(|r| {
            r.register("trace_spans_exported", "Spans the collector accepted", metrics.exported.clone());
            r.register(
                "trace_spans_dropped",
                "Spans never exported: the queue was full, or the collector refused or could not be reached",
                metrics.dropped.clone(),
            );
        });
        metrics
    });
    &TRACES
}

/// Seconds as Prometheus wants them.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// `GET /metrics`: the page, or 500 if it cannot be rendered.
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    match render() {
        Ok(text) => ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (http::StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be rendered\n").into_response(),
    }
}

/// A router serving only `GET /metrics`: the admin listener of a process without a gateway.
pub fn router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(serve))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn cached_handles_are_the_familys_children_and_the_cache_stays_bounded() {
        let family: Family<RouteLabels, Counter> = Family::default();
        let cache: HandleCache<Cow<'static, str>, Counter> = HandleCache::default();
        let labels = |method: &'static str| RouteLabels { method: Cow::Borrowed(method), route: Arc::from("/v1/x") };
        let asked = Cell::new(0);
        let handle = |method: &'static str| {
            cache.get_or_create(&Cow::Borrowed(method), || {
                asked.set(asked.get() + 1);
                family.get_or_create_owned(&labels(method))
            })
        };
        handle("GET").inc_by(2);
        handle("GET").inc_by(3);
        handle("POST").inc();
        assert_eq!(asked.get(), 2, "the family is asked once per key");
        assert_eq!(family.get_or_create(&labels("GET")).get(), 5, "what the handle counts, the family shows");
        assert_eq!(family.get_or_create(&labels("POST")).get(), 1);

        // Past the capacity, keys are not kept: the family is asked each time, and counts stay right.
        let names: Vec<&'static str> =
            (0..HANDLE_CACHE_CAPACITY + 5).map(|n| &*Box::leak(format!("M{n}").into_boxed_str())).collect();
        for name in &names {
            handle(name).inc();
        }
        assert_eq!(cache.entries.load().len(), HANDLE_CACHE_CAPACITY);
        let before = asked.get();
        handle(names[names.len() - 1]).inc();
        assert_eq!(asked.get(), before + 1, "a key past the capacity goes to the family");
        assert_eq!(family.get_or_create(&labels(names[names.len() - 1])).get(), 2);
    }
}
