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
//! needs has been pruned from the log is it ended, with ABORTED. A snapshot is read page by page too (see
//! [`SnapshotReader`]), so a watch over a large table costs a page of memory, not the table.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::proto::user::{User, UserEvent, UserEventType};
use crate::user_service::error::ServiceError;
use crate::user_service::filter::Filter;
use crate::user_service::store::{Change, ChangeKind, Store, StoreError, poll_interval, wait_for_commit};

/// Sizes and timings of the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Changes held for watchers that have not received them yet; a watcher further behind reads the database.
    pub broadcast_capacity: usize,
    /// How often the feed looks for changes committed by other processes. A store that notifies (PostgreSQL)
    /// makes this a safety net only, never shorter than 30 s.
    pub poll_interval: Duration,
    /// Change-log rows, and snapshot users, read per query.
    pub page_size: u32,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self { broadcast_capacity: 1024, poll_interval: Duration::from_millis(250), page_size: 500 }
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
    ///
    /// The stream does its work when it is polled, that is when the client's HTTP/2 stream has room for more:
    /// no task and no queue of its own per watcher, and a client that goes away drops it whole.
    pub fn watch(self: &Arc<Self>, filter: Filter, since_revision: i64) -> WatchStream {
        // Subscribe before reading the database: every change committed after the snapshot (or the catch-up)
        // is then in the subscription, and duplicates are skipped by revision.
        let subscription = self.sender.subscribe();
        let phase = if since_revision == 0 { Phase::Snapshot(Box::default()) } else { Phase::catch_up() };
        let watcher = Watcher {
            feed: Arc::clone(self),
            filter,
            subscription,
            last: since_revision,
            phase,
            _connected: WatcherGauge::connect(),
        };
        let shutdown = self.shutdown.clone();
        Box::pin(futures::stream::unfold(Some((watcher, shutdown)), |state| async move {
            let (mut watcher, shutdown) = state?;
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(WatchEnd::Shutdown),
                event = watcher.next_event() => event,
            };
            match outcome {
                Ok(event) => Some((Ok(event), Some((watcher, shutdown)))),
                Err(end) => Some((Err(end.into_status(watcher.last)), None)),
            }
        }))
    }
}

/// A WatchUsers response stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<UserEvent, Status>> + Send>>;

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
    Shutdown,
    Status(Status),
}

impl WatchEnd {
    fn into_status(self, last: i64) -> Status {
        match self {
            Self::Status(status) => status,
            Self::Shutdown => {
                Status::unavailable(format!("server is shutting down; resume with since_revision={last}"))
            }
        }
    }
}

impl From<ServiceError> for WatchEnd {
    fn from(error: ServiceError) -> Self {
        Self::Status(error.into())
    }
}

impl From<StoreError> for WatchEnd {
    fn from(error: StoreError) -> Self {
        Self::Status(ServiceError::from(error).into())
    }
}

/// Where a watcher is.
enum Phase {
    /// Sending the snapshot, page by page.
    Snapshot(Box<SnapshotReader>),
    /// Reading the change log from the database: at the start of a resume, or after falling behind the
    /// broadcast buffer. `pending` holds the rest of the page read last; `more` whether a full page came back.
    CatchUp { pending: VecDeque<Change>, more: bool },
    /// Taking changes from the feed's broadcast.
    Live,
}

impl Phase {
    fn catch_up() -> Self {
        Self::CatchUp { pending: VecDeque::new(), more: true }
    }
}

struct Watcher {
    feed: Arc<ChangeFeed>,
    filter: Filter,
    subscription: broadcast::Receiver<FeedItem>,
    /// The last revision processed (delivered or filtered out); changes at or below it are duplicates.
    last: i64,
    phase: Phase,
    _connected: WatcherGauge,
}

impl Watcher {
    /// The next event for the client, reading the database or waiting for the feed as needed.
    async fn next_event(&mut self) -> Result<UserEvent, WatchEnd> {
        loop {
            match &mut self.phase {
                Phase::Snapshot(snapshot) => {
                    if let Some(user) = snapshot.pending.pop_front() {
                        return Ok(UserEvent { r#type: UserEventType::Existing as i32, user: Some(user), revision: 0 });
                    }
                    if let Some(revision) = snapshot.complete() {
                        self.last = revision;
                        self.phase = Phase::Live;
                        let marker = UserEventType::SnapshotComplete as i32;
                        return Ok(UserEvent { r#type: marker, user: None, revision });
                    }
                    snapshot.read_page(&self.feed, &self.filter).await?;
                }
                Phase::CatchUp { pending, more } => {
                    if let Some(change) = pending.pop_front() {
                        if let Some(event) = self.deliver(&change) {
                            return Ok(event);
                        }
                        continue;
                    }
                    if !*more {
                        self.phase = Phase::Live;
                        continue;
                    }
                    // WatchUsers refused positions outside the log before the stream started; if the log moved
                    // past this one since, the watcher fell behind like any other.
                    let page = self.feed.config.page_size;
                    let changes = match self.feed.store.changes_after(self.last, page).await {
                        Ok(changes) => changes,
                        Err(StoreError::RevisionCompacted { .. }) => return Err(self.fell_behind()),
                        Err(store) => return Err(store.into()),
                    };
                    *more = changes.len() == page as usize;
                    *pending = changes.into();
                }
                Phase::Live => match self.subscription.recv().await {
                    Ok(FeedItem::Change(change)) => {
                        if let Some(event) = self.deliver(&change) {
                            return Ok(event);
                        }
                    }
                    Ok(FeedItem::Gap) => return Err(self.fell_behind()),
                    // Missed changes are still in the database's log; a compacted log means this watcher is too
                    // slow to be served.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.phase = Phase::catch_up(),
                    Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Shutdown),
                },
            }
        }
    }

    /// The event for a change if it is new and concerns the filter: it matches the user after the change, or
    /// before it (so a watcher sees a user leave its filter).
    fn deliver(&mut self, change: &Change) -> Option<UserEvent> {
        if change.revision <= self.last {
            return None;
        }
        self.last = change.revision;
        let relevant = self.filter.matches(&change.user)
            || change.previous.as_ref().is_some_and(|previous| self.filter.matches(previous));
        relevant.then(|| UserEvent {
            r#type: change.kind.event_type() as i32,
            user: Some(change.user.clone()),
            revision: change.revision,
        })
    }

    fn fell_behind(&self) -> WatchEnd {
        WatchEnd::Status(
            ServiceError::Aborted(format!("watch fell behind; resume with since_revision={} or re-list", self.last))
                .into(),
        )
    }
}

/// Reads a watch's snapshot page by page (keyset pagination by id), each page in a short transaction of its
/// own, and makes the pages one consistent view as of the first page's revision `R`.
///
/// A later page is read at a later revision `Rk`. Users changed in `(R, Rk]` are rewound to their state at `R`
/// from the change log, which keeps the state before every change: a user's first change after `R` says what
/// it was at `R` (created: absent; updated: its previous values; deleted: its last values). The client thus
/// gets exactly the users that matched at `R`, in id order, then SNAPSHOT_COMPLETE at `R`, then every change
/// after `R`. Memory stays bounded by a page plus the first change of each user changed while the snapshot is
/// read, never by the size of the table, and no transaction is held while the client reads.
#[derive(Default)]
struct SnapshotReader {
    /// Users of the page read last, not sent yet.
    pending: VecDeque<User>,
    /// Pages continue after this id.
    after_id: i64,
    /// `R`: the first page's revision.
    revision: Option<i64>,
    /// Whether the last page has been read.
    done: bool,
    /// The first change after `R` of each user above `after_id`, read from the log up to `log_read_to`.
    first_changes: BTreeMap<i64, Change>,
    log_read_to: i64,
}

impl SnapshotReader {
    /// The snapshot's revision, once every user was taken from `pending`.
    fn complete(&self) -> Option<i64> {
        if self.done && self.pending.is_empty() { self.revision } else { None }
    }

    async fn read_page(&mut self, feed: &ChangeFeed, filter: &Filter) -> Result<(), WatchEnd> {
        let limit = feed.config.page_size.max(1);
        let page = feed.store.snapshot_page(filter, self.after_id, limit).await?;
        let revision = *self.revision.get_or_insert_with(|| {
            self.log_read_to = page.revision;
            page.revision
        });
        let full = page.users.len() == limit as usize;
        // The ids this page covers: up to its last row, or all the rest after the last page.
        let upper = match page.users.last() {
            Some(last) if full => last.id,
            _ => i64::MAX,
        };
        let mut users = page.users;
        if page.revision > revision {
            self.read_log(feed, page.revision).await?;
            let changed: Vec<&Change> = self
                .first_changes
                .range((Bound::Excluded(self.after_id), Bound::Included(upper)))
                .map(|(_, change)| change)
                .filter(|change| change.revision <= page.revision)
                .collect();
            if !changed.is_empty() {
                users.retain(|user| !changed.iter().any(|change| change.user.id == user.id));
                users.extend(changed.into_iter().filter_map(state_before).filter(|user| filter.matches(user)));
                users.sort_unstable_by_key(|user| user.id);
            }
        }
        // Users up to `upper` are settled: their first changes are no longer needed.
        self.first_changes = match upper.checked_add(1) {
            Some(next) => self.first_changes.split_off(&next),
            None => BTreeMap::new(),
        };
        self.pending = users.into();
        self.after_id = upper;
        self.done = !full;
        Ok(())
    }

    /// Reads the change log up to at least `up_to`, keeping the first change of each user not settled yet.
    async fn read_log(&mut self, feed: &ChangeFeed, up_to: i64) -> Result<(), WatchEnd> {
        while self.log_read_to < up_to {
            let changes = match feed.store.changes_after(self.log_read_to, feed.config.page_size.max(1)).await {
                Ok(changes) => changes,
                // The log no longer reaches back to the snapshot's revision: it cannot be made consistent.
                Err(StoreError::RevisionCompacted { .. }) => {
                    return Err(WatchEnd::Status(
                        ServiceError::Aborted(
                            "the change log moved on while the snapshot was read; watch again".into(),
                        )
                        .into(),
                    ));
                }
                Err(error) => return Err(error.into()),
            };
            let Some(last) = changes.last().map(|change| change.revision) else { break };
            for change in changes {
                if change.user.id > self.after_id {
                    self.first_changes.entry(change.user.id).or_insert(change);
                }
            }
            self.log_read_to = last;
        }
        Ok(())
    }
}

/// A user's state just before `change`: `None` when the change created it.
fn state_before(change: &Change) -> Option<User> {
    match change.kind {
        ChangeKind::Created => None,
        ChangeKind::Updated => change.previous.clone(),
        ChangeKind::Deleted => Some(change.user.clone()),
    }
}
