//! The change feed and WatchUsers streams.
//!
//! One task per process tails the store's change log and fans every committed change out over a bounded
//! broadcast channel; watchers never poll the database themselves while they keep up. The task wakes as soon
//! as this process commits. Changes committed by other processes sharing the database (replicas) arrive
//! through the store's change notifications where it has them (PostgreSQL's LISTEN/NOTIFY), with a slow poll
//! left only as a safety net; otherwise (SQLite) through a poll on the configured interval. Either way a
//! wake-up only means "read the log after the last revision read", so a lost notification delays a change but
//! never drops it.
//!
//! A watcher that falls behind the broadcast buffer catches up from the change log in the database, page by
//! page, so memory stays bounded by the buffer sizes whatever the watcher's speed. Only when the change it
//! needs has been pruned from the log is it ended, with ABORTED.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::proto::user::{UserEvent, UserEventType};
use crate::user_service::error::ServiceError;
use crate::user_service::filter::Filter;
use crate::user_service::store::{Change, Store, StoreError, poll_interval, wait_for_commit};

/// Sizes and timings of the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Changes held for watchers that have not received them yet; a watcher further behind reads the database.
    pub broadcast_capacity: usize,
    /// Events queued per watcher between its task and the gRPC stream.
    pub watcher_buffer: usize,
    /// How often the feed looks for changes committed by other processes. A store that notifies (PostgreSQL)
    /// makes this a safety net only, never shorter than 30 s.
    pub poll_interval: Duration,
    /// Change-log rows read per query.
    pub page_size: u32,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self { broadcast_capacity: 1024, watcher_buffer: 64, poll_interval: Duration::from_millis(250), page_size: 500 }
    }
}

#[derive(Debug, Clone)]
enum FeedItem {
    Change(Arc<Change>),
    /// The feed itself fell behind the pruned log: watchers cannot know what they missed.
    Gap,
}

/// The process-wide fan-out of committed changes.
pub struct ChangeFeed {
    store: Arc<dyn Store>,
    sender: broadcast::Sender<FeedItem>,
    wake: Notify,
    config: FeedConfig,
    shutdown: CancellationToken,
    /// The latest revision the feed has broadcast.
    head: AtomicI64,
}

impl ChangeFeed {
    /// Starts the feed at the store's latest revision. It runs until `shutdown` is cancelled; watchers then
    /// end with UNAVAILABLE.
    pub async fn start(
        store: Arc<dyn Store>,
        config: FeedConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let start = store.head_revision().await?;
        let (sender, _) = broadcast::channel(config.broadcast_capacity.max(1));
        let feed = Arc::new(Self { store, sender, wake: Notify::new(), config, shutdown, head: AtomicI64::new(start) });
        tokio::spawn(Arc::clone(&feed).tail(start));
        let observed = Arc::downgrade(&feed);
        crate::telemetry::metrics::gauge_fn(
            "user_service_watch_fanout_backlog",
            "Changes broadcast but not yet taken by the slowest watcher (beyond the buffer it reads the database)",
            move || Weak::upgrade(&observed).map(|feed| i64::try_from(feed.sender.len()).unwrap_or(i64::MAX)),
        );
        Ok(feed)
    }

    /// The latest revision the feed has seen committed.
    pub fn head_revision(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Tells the feed that this process just committed a change, so watchers see it without waiting for a poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn tail(self: Arc<Self>, mut last: i64) {
        let mut notifications = self.store.change_notifications();
        let poll_interval = poll_interval(notifications.as_ref(), self.config.poll_interval);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = wait_for_commit(&mut notifications) => {}
                () = tokio::time::sleep(poll_interval) => {}
            }
            loop {
                match self.store.changes_after(last, self.config.page_size).await {
                    Ok(changes) => {
                        let full_page = changes.len() == self.config.page_size as usize;
                        for change in changes {
                            last = change.revision;
                            self.head.store(last, Ordering::Relaxed);
                            // No receivers is fine: nobody is watching.
                            let _ = self.sender.send(FeedItem::Change(Arc::new(change)));
                        }
                        if !full_page {
                            break;
                        }
                    }
                    Err(StoreError::RevisionCompacted { oldest, .. }) => {
                        tracing::error!(last, oldest, "change feed fell behind the change log; ending watches");
                        let _ = self.sender.send(FeedItem::Gap);
                        last = oldest - 1;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change feed cannot read the change log; retrying");
                        break;
                    }
                }
            }
        }
    }

    /// Opens a watch: a snapshot then live changes (`since_revision == 0`), or the changes after
    /// `since_revision`. Errors are delivered as the stream's final status.
    pub fn watch(self: &Arc<Self>, filter: Filter, since_revision: i64) -> ReceiverStream<Result<UserEvent, Status>> {
        let (events, receiver) = mpsc::channel(self.config.watcher_buffer.max(1));
        // Subscribe before reading the database: every change committed after the snapshot (or the catch-up)
        // is then in the subscription, and duplicates are skipped by revision.
        let subscription = self.sender.subscribe();
        let feed = Arc::clone(self);
        tokio::spawn(async move {
            let _connected = WatcherGauge::connect();
            let mut watcher = Watcher { feed: &feed, filter, events: &events, last: since_revision };
            let outcome = tokio::select! {
                outcome = watcher.run(subscription, since_revision) => outcome,
                () = feed.shutdown.cancelled() => Err(WatchEnd::Shutdown),
                () = events.closed() => Err(WatchEnd::ClientGone),
            };
            let status = match outcome {
                Ok(()) | Err(WatchEnd::ClientGone) => return,
                Err(WatchEnd::Status(status)) => status,
                Err(WatchEnd::Shutdown) => {
                    Status::unavailable(format!("server is shutting down; resume with since_revision={}", watcher.last))
                }
            };
            // The client may be gone already; then there is nobody to tell.
            let _ = events.send(Err(status)).await;
        });
        ReceiverStream::new(receiver)
    }
}

/// Counts a watcher in `portico_user_service_watchers` while it lives.
struct WatcherGauge;

impl WatcherGauge {
    fn connect() -> Self {
        crate::telemetry::metrics::user_service().watchers.inc();
        Self
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        crate::telemetry::metrics::user_service().watchers.dec();
    }
}

/// Why a watch stopped.
enum WatchEnd {
    ClientGone,
    Shutdown,
    Status(Status),
}

impl From<ServiceError> for WatchEnd {
    fn from(error: ServiceError) -> Self {
        Self::Status(error.into())
    }
}

struct Watcher<'a> {
    feed: &'a ChangeFeed,
    filter: Filter,
    events: &'a mpsc::Sender<Result<UserEvent, Status>>,
    /// The last revision processed (delivered or filtered out); changes at or below it are duplicates.
    last: i64,
}

impl Watcher<'_> {
    async fn run(
        &mut self,
        mut subscription: broadcast::Receiver<FeedItem>,
        since_revision: i64,
    ) -> Result<(), WatchEnd> {
        if since_revision == 0 {
            let snapshot = self.feed.store.snapshot(&self.filter).await.map_err(ServiceError::from)?;
            for user in snapshot.users {
                self.send(UserEvent { r#type: UserEventType::Existing as i32, user: Some(user), revision: 0 }).await?;
            }
            let marker =
                UserEvent { r#type: UserEventType::SnapshotComplete as i32, user: None, revision: snapshot.revision };
            self.send(marker).await?;
            self.last = snapshot.revision;
        } else {
            // WatchUsers refused positions outside the log before the stream started; if the log moved past
            // this one since, the watcher fell behind like any other.
            self.catch_up().await?;
        }
        loop {
            match subscription.recv().await {
                Ok(FeedItem::Change(change)) => self.deliver(&change).await?,
                Ok(FeedItem::Gap) => return Err(self.fell_behind()),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed changes are still in the database's log; a compacted log means this watcher is
                    // too slow to be served.
                    self.catch_up().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Shutdown),
            }
        }
    }

    /// Delivers the change log after `self.last` from the database, page by page.
    /// A compacted log means the changes this watcher still needs are gone: it fell behind.
    async fn catch_up(&mut self) -> Result<(), WatchEnd> {
        loop {
            let page = self.feed.config.page_size;
            let changes = match self.feed.store.changes_after(self.last, page).await {
                Ok(changes) => changes,
                Err(StoreError::RevisionCompacted { .. }) => return Err(self.fell_behind()),
                Err(store) => return Err(ServiceError::from(store).into()),
            };
            let full_page = changes.len() == page as usize;
            for change in &changes {
                self.deliver(change).await?;
            }
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Sends a change if it is new and concerns the filter: it matches the user after the change, or before it
    /// (so a watcher sees a user leave its filter).
    async fn deliver(&mut self, change: &Change) -> Result<(), WatchEnd> {
        if change.revision <= self.last {
            return Ok(());
        }
        let relevant = self.filter.matches(&change.user)
            || change.previous.as_ref().is_some_and(|previous| self.filter.matches(previous));
        if relevant {
            let event = UserEvent {
                r#type: change.kind.event_type() as i32,
                user: Some(change.user.clone()),
                revision: change.revision,
            };
            self.send(event).await?;
        }
        self.last = change.revision;
        Ok(())
    }

    async fn send(&self, event: UserEvent) -> Result<(), WatchEnd> {
        self.events.send(Ok(event)).await.map_err(|_| WatchEnd::ClientGone)
    }

    fn fell_behind(&self) -> WatchEnd {
        WatchEnd::Status(
            ServiceError::Aborted(format!("watch fell behind; resume with since_revision={} or re-list", self.last))
                .into(),
        )
    }
}
