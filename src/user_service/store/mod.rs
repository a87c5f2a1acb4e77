//! Storage behind the UserService: the [`Store`] trait, its data types, and its implementations.
//!
//! A store keeps users and a bounded change log. Every mutation commits the user rows and one change-log entry
//! per affected user in one transaction, so the log's revisions follow commit order and a reader never sees a
//! user change without its log entry.
//!
//! SQLite is the default (one file, one machine); PostgreSQL serves replicas on several machines. [`open`]
//! picks the backend from the database URL.

mod conditions;
mod lease;
mod listener;
mod postgres;
mod sqlite;
mod stored;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use lease::RelayLease;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::proto::user::{User, UserEventType, UserStatus};
use crate::user_service::filter::Filter;

/// A user to insert: validated input with the password already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub roles: Vec<String>,
    pub password_hash: String,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub roles: Option<Vec<String>>,
    pub status: Option<UserStatus>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The kind of a committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub fn event_type(self) -> UserEventType {
        match self {
            Self::Created => UserEventType::Created,
            Self::Updated => UserEventType::Updated,
            Self::Deleted => UserEventType::Deleted,
        }
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Strictly increasing with commit order.
    pub revision: i64,
    pub kind: ChangeKind,
    /// The user after the change (for a delete: its last values).
    pub user: User,
    /// The user before an update, so a watcher filtering on a field sees a user leave its filter.
    pub previous: Option<User>,
    /// When the change committed (rows from before commit times were kept: the user's created time).
    pub committed_at: pbjson_types::Timestamp,
}

/// One page of the matching users, read in one consistent transaction with the revision it reflects.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    pub users: Vec<User>,
    pub revision: i64,
}

/// Typed storage failures; the service maps them to gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user {0} not found")]
    NotFound(i64),
    /// `index` is the position in a batch, when the insert was one.
    #[error("email {email:?} is already used by another user")]
    EmailTaken { email: String, index: Option<usize> },
    #[error("revision {requested} is no longer in the change log (oldest retained: {oldest})")]
    RevisionCompacted { requested: i64, oldest: i64 },
    #[error("revision {requested} is ahead of the latest revision {latest}")]
    RevisionAhead { requested: i64, latest: i64 },
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
    /// A write's commit failed (for every write committed in the same group).
    #[error("commit failed: {0}")]
    Commit(std::sync::Arc<rusqlite::Error>),
    /// The store is shutting down (its writer thread or blocking pool is gone).
    #[error("the database connection is closed")]
    WriterGone,
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0:?} is not a sqlite: or postgres:// database URL")]
    UnsupportedUrl(String),
    #[error("cannot lock the relay lease file: {0}")]
    LeaseFile(std::io::Error),
}

/// Settings for opening a store, whichever the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Change-log entries kept for `since_revision` resumes.
    pub change_log_window: u32,
    /// PostgreSQL's connection pool size (SQLite has one writer and a fixed read pool).
    pub max_connections: u32,
    /// Whether an outbox relay publishes the change log: then the log is never pruned beyond what was
    /// published, so a change cannot fall out of the window before it is published.
    pub retain_unpublished: bool,
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// With change notifications, polling only guards against one lost in a way the listener could not notice.
const NOTIFIED_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// How often a reader of the change log polls for other processes' commits: `configured` when the store
/// cannot notify them, and at most every 30 s as a safety net when it can.
pub fn poll_interval(notifications: Option<&watch::Receiver<u64>>, configured: Duration) -> Duration {
    match notifications {
        Some(_) => configured.max(NOTIFIED_POLL_INTERVAL),
        None => configured,
    }
}

/// Resolves when a store's [`Store::change_notifications`] signal a commit by any process; never, when there
/// is no such signal (so in a `select!` beside a poll, the poll is all that is left).
pub async fn wait_for_commit(notifications: &mut Option<watch::Receiver<u64>>) {
    if let Some(receiver) = notifications
        && receiver.changed().await.is_ok()
    {
        return;
    }
    // The store stopped signalling (it is being dropped): an ended receiver would resolve at once on every turn.
    *notifications = None;
    std::future::pending().await
}

/// `url` with the password of its `user:password@` part masked, for logs.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (colon, at))) {
        Some((colon, at)) => format!("{}{}:***{}", &url[..scheme_end], &authority[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Opens the store that `url` names: SQLite for `sqlite:…`, PostgreSQL for `postgres://…` or `postgresql://…`.
/// Pending migrations are applied before it returns.
///
/// Fails with [`StoreError::UnsupportedUrl`] for any other scheme, and as the backend's `open` does otherwise.
pub async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, options).await?))
    } else if is_postgres_url(url) {
        Ok(Arc::new(PostgresStore::open(url, options).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Durable storage of users and their change log.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The user with this id, or [`StoreError::NotFound`].
    async fn get_user(&self, id: i64) -> Result<User, StoreError>;

    /// Up to `limit` users matching `filter` with ids greater than `after_id`, in ascending id order.
    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError>;

    /// How many users match `filter`.
    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError>;

    /// Inserts all users in one transaction, or none: on an email clash nothing is stored and the error names
    /// the item's index.
    async fn create_users(&self, users: Vec<NewUser>) -> Result<Vec<User>, StoreError>;

    /// Applies `patch` to user `id` and returns the result. An update that changes nothing commits nothing.
    async fn update_user(&self, id: i64, patch: UserPatch) -> Result<User, StoreError>;

    /// Deletes user `id`, or fails with [`StoreError::NotFound`].
    async fn delete_user(&self, id: i64) -> Result<(), StoreError>;

    /// The latest committed revision (0 before the first change).
    async fn head_revision(&self) -> Result<i64, StoreError>;

    /// Up to `limit` users matching `filter` with ids greater than `after_id`, in ascending id order, and the
    /// revision they reflect, read in one consistent transaction. A watch reads its snapshot page by page this
    /// way, so it never holds more than a page, nor a transaction between pages.
    async fn snapshot_page(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<SnapshotPage, StoreError>;

    /// Up to `limit` changes with revisions greater than `after`, in order. Fails with
    /// [`StoreError::RevisionCompacted`] when changes after `after` were already dropped from the log, and
    /// [`StoreError::RevisionAhead`] when `after` is beyond the latest revision.
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError>;

    /// Checks that the database answers, within `timeout`.
    async fn ping(&self, timeout: Duration) -> Result<(), StoreError>;

    /// The last revision the outbox relay published (acknowledged by JetStream); 0 before the first.
    async fn published_revision(&self) -> Result<i64, StoreError>;

    /// Records that every change up to `revision` was published. The mark never moves back.
    async fn mark_published(&self, revision: i64) -> Result<(), StoreError>;

    /// Tries to become the one relay among the processes sharing the database; `None` while another holds the
    /// lease.
    async fn try_relay_lease(&self) -> Result<Option<Box<dyn RelayLease>>, StoreError>;

    /// A signal that changes whenever any process sharing the database may have committed a change, for the
    /// change feed to read the log after its last revision. The value itself means nothing; a change may
    /// also come with nothing new to read.
    ///
    /// `None` (the default): the database cannot tell, and the feed polls for other processes' commits.
    fn change_notifications(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// The connection pools, named, for the `portico_db_pool_connections` gauges; none by default.
    fn pool_gauges(&self) -> crate::telemetry::store::Pools {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn passwords_are_masked_in_logged_urls() {
        let cases = [
            (
                "postgres://portico:s3cret@db:5432/users?sslmode=require",
                "postgres://portico:***@db:5432/users?sslmode=require",
            ),
            ("postgresql://a:b:c@db/users", "postgresql://a:***@db/users"),
            ("postgres://portico@db/users", "postgres://portico@db/users"),
            ("postgres://db/users?user=x", "postgres://db/users?user=x"),
            ("sqlite://portico.db", "sqlite://portico.db"),
            ("sqlite::memory:", "sqlite::memory:"),
        ];
        for (url, logged) in cases {
            assert_eq!(redact_password(url), logged, "{url}");
        }
    }
}
