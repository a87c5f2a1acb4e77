//! The store, observed at the [`Store`] trait: one span (when traces are exported) and one duration
//! observation per operation, whatever the backend. Every trait method is one statement or one transaction, so
//! this is the database span of the OpenTelemetry conventions (`db.system`, `db.operation.name`).
//!
//! Database pools are observed by [`PoolCollector`], read at scrape time.

use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::proto::user::User;
use crate::telemetry::metrics::{self, StatementLabels};
use crate::telemetry::spans;
use crate::user_service::filter::Filter;
use crate::user_service::store::{Change, NewUser, RelayLease, SnapshotPage, Store, StoreError, UserPatch};

/// A [`Store`] that records every operation of the store it wraps.
pub struct ObservedStore {
    inner: Arc<dyn Store>,
    /// `db.system`: `sqlite` or `postgresql`.
    system: &'static str,
}

impl ObservedStore {
    pub fn new(inner: Arc<dyn Store>, system: &'static str) -> Self {
        let _ = metrics::store();
        Self { inner, system }
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        run: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Only inside a traced call (the child of its server span): the change feed's background polling would
        // otherwise start a trace of its own every few hundred milliseconds.
        let mut span = spans::current_span_context().and_then(|call| {
            let attributes =
                vec![KeyValue::new("db.system", self.system), KeyValue::new("db.operation.name", operation)];
            spans::start(operation, SpanKind::Client, attributes, Some(&call))
        });
        let started = Instant::now();
        // A line the statement logs still carries the call's trace id: the call's span stays current.
        let result = run.await;
        // A missing user or a taken email is an answer, not a failure of the database.
        let failed = matches!(
            result,
            Err(StoreError::Database(_)
                | StoreError::Sqlite(_)
                | StoreError::Commit(_)
                | StoreError::Migrate(_)
                | StoreError::Corrupt(_))
        );
        if let Some(span) = &mut span {
            if failed {
                span.set_status(opentelemetry::trace::Status::error(""));
            }
            span.end();
        }
        let outcome = if failed { "error" } else { "ok" };
        metrics::store()
            .statement_duration
            .get_or_create(&StatementLabels { operation, outcome })
            .observe(metrics::seconds(started.elapsed()));
        result
    }
}

#[async_trait::async_trait]
impl Store for ObservedStore {
    async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        self.observe("get_user", self.inner.get_user(id)).await
    }

    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        self.observe("list_users", self.inner.list_users(filter, after_id, limit)).await
    }

    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError> {
        self.observe("count_users", self.inner.count_users(filter)).await
    }

    async fn create_users(&self, users: Vec<NewUser>) -> Result<Vec<User>, StoreError> {
        self.observe("create_users", self.inner.create_users(users)).await
    }

    async fn update_user(&self, id: i64, patch: UserPatch) -> Result<User, StoreError> {
        self.observe("update_user", self.inner.update_user(id, patch)).await
    }

    async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
        self.observe("delete_user", self.inner.delete_user(id)).await
    }

    async fn head_revision(&self) -> Result<i64, StoreError> {
        self.observe("head_revision", self.inner.head_revision()).await
    }

    async fn snapshot_page(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<SnapshotPage, StoreError> {
        self.observe("snapshot_page", self.inner.snapshot_page(filter, after_id, limit)).await
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.observe("changes_after", self.inner.changes_after(after, limit)).await
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.observe("ping", self.inner.ping(timeout)).await
    }

    async fn published_revision(&self) -> Result<i64, StoreError> {
        self.observe("published_revision", self.inner.published_revision()).await
    }

    async fn mark_published(&self, revision: i64) -> Result<(), StoreError> {
        self.observe("mark_published", self.inner.mark_published(revision)).await
    }

    async fn try_relay_lease(&self) -> Result<Option<Box<dyn RelayLease>>, StoreError> {
        self.observe("try_relay_lease", self.inner.try_relay_lease()).await
    }

    fn change_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.change_notifications()
    }

    fn pool_gauges(&self) -> Pools {
        self.inner.pool_gauges()
    }
}

/// A database pool's connections in use and idle, read on each scrape.
pub trait PoolGauge: Send + Sync + 'static {
    /// (in use, idle).
    fn connections(&self) -> (u32, u32);
}

impl<DB: sqlx::Database> PoolGauge for sqlx::Pool<DB> {
    fn connections(&self) -> (u32, u32) {
        let idle = u32::try_from(self.num_idle()).unwrap_or(u32::MAX);
        (self.size().saturating_sub(idle), idle)
    }
}

/// Named database pools.
pub type Pools = Vec<(&'static str, Arc<dyn PoolGauge>)>;

/// The pools the page reports: those of the store opened last (a process runs one UserService).
static OBSERVED: Mutex<Pools> = Mutex::new(Vec::new());

/// Makes `pools` the ones reported as `portico_db_pool_connections{pool, state}`.
pub fn observe_pools(pools: Pools) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| metrics::register_collector(Box::new(PoolCollector)));
    *OBSERVED.lock().unwrap_or_else(PoisonError::into_inner) = pools;
}

#[derive(Debug)]
struct PoolCollector;

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = OBSERVED.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "db_pool_connections",
            "Database connections by pool and state (in_use, idle)",
            None,
            gauge.metric_type(),
        )?;
        for (pool, gauge) in &pools {
            let (in_use, idle) = gauge.connections();
            for (state, value) in [("in_use", in_use), ("idle", idle)] {
                let labels = [("pool", *pool), ("state", state)];
                ConstGauge::new(i64::from(value)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
