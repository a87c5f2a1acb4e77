//! The embedded default store: SQLite through sqlx, file-backed in WAL mode (or `sqlite::memory:`).
//!
//! Writes go through one connection and open with `BEGIN IMMEDIATE`: SQLite allows one writer at a time
//! anyway, and taking the write lock up front means a read-then-write transaction can never fail to upgrade
//! its lock (SQLITE_BUSY_SNAPSHOT), even when other processes share the file. Reads use a pool of read-only
//! connections, which WAL lets run concurrently with the writer.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::conditions::{Dialect, push_conditions};
use super::lease::{FileLease, RelayLease};
use super::stored::{
    CHANGE_COLUMNS, StoredUser, USER_COLUMNS, audited, change_from_row, is_unique_violation, now_micros_as_nanos,
    roles_to_json,
};
use super::{Change, ChangeKind, NewUser, Snapshot, Store, StoreError, StoreOptions, User, UserPatch};
use crate::proto::user::UserStatus;
use crate::user_service::filter::{Filter, fold};

/// How long a connection waits for another process's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections; WAL readers do not block each other or the writer.
const READ_CONNECTIONS: u32 = 4;

const PRUNE: &str = "DELETE FROM user_changes WHERE revision <= ?";
const PRUNE_PUBLISHED: &str = "DELETE FROM user_changes WHERE revision <= min(?, (SELECT published FROM relay_mark))";

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// How many change-log entries are kept for `since_revision` resumes.
    change_log_window: i64,
    /// The pruning statement: with a relay, it also keeps what was not published yet.
    prune: &'static str,
    /// The relay lease file beside the database; `None` for an in-memory database.
    lease_path: Option<PathBuf>,
}

/// The single writer connection. Opening it sets up the file (WAL mode), and a replica doing so while another
/// is still creating the same file can fail at once with "database is locked" (SQLITE_BUSY), busy timeout or
/// not; seen with three replicas started together. That case is retried until the busy timeout.
async fn connect_writer(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    let started = std::time::Instant::now();
    loop {
        match SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await {
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some("5") && started.elapsed() < BUSY_TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            connected => return connected,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and applies pending migrations.
    ///
    /// Fails when the URL is malformed, the file cannot be opened or created, or a migration fails.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let base =
            SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(BUSY_TIMEOUT).foreign_keys(true);
        let base_path = base.get_filename().to_path_buf();
        let (writer, reader) = if is_in_memory(url) {
            // Each connection to `:memory:` would be a separate database: one connection does everything,
            // and it is never closed for idleness, which would drop the data.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(base)
                .await?;
            (pool.clone(), pool)
        } else {
            // FULL: in WAL mode, NORMAL may lose the last commits on power loss, and a commit the client was
            // told about must survive. The cost is one fsync of the WAL per commit.
            let file = base.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Full);
            let writer = connect_writer(file.clone()).await?;
            let reader =
                SqlitePoolOptions::new().max_connections(READ_CONNECTIONS).connect_with(file.read_only(true)).await?;
            (writer, reader)
        };
        // Replicas sharing a file often start together. The migrations run inside one write transaction
        // (BEGIN IMMEDIATE takes SQLite's write lock; sqlx nests each migration as a savepoint), so a second
        // process waits out the first and then finds them applied, instead of racing it to create the tables.
        let mut migrating = writer.begin_with("BEGIN IMMEDIATE").await?;
        // `run_direct` is `Migrator::run` on a connection: `run(&mut *migrating)` would need `Acquire` for every
        // lifetime of the borrow, which sqlx cannot give inside a spawned task (sqlx keeps `run_direct` public,
        // though hidden from its docs, for exactly this).
        sqlx::migrate!("./migrations/sqlite").run_direct(None, &mut *migrating, false).await?;
        migrating.commit().await?;
        let lease_path = (!is_in_memory(url)).then(|| {
            let mut path = base_path.into_os_string();
            path.push("-relay.lock");
            PathBuf::from(path)
        });
        Ok(Self {
            writer,
            reader,
            change_log_window: i64::from(options.change_log_window.max(1)),
            prune: if options.retain_unpublished { PRUNE_PUBLISHED } else { PRUNE },
            lease_path,
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Appends one change-log entry and drops entries that fell out of the window; returns the revision.
    async fn log_change(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        kind: ChangeKind,
        user: &StoredUser,
        previous: Option<&StoredUser>,
    ) -> Result<i64, StoreError> {
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO user_changes (kind, user_id, name, email, roles, status, created_at_ns, \
             prev_name, prev_email, prev_roles, prev_status, committed_at_ns) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING revision",
        )
        .bind(kind.event_type() as i32)
        .bind(user.id)
        .bind(&user.name)
        .bind(&user.email)
        .bind(&user.roles_json)
        .bind(user.status)
        .bind(user.created_at_ns)
        .bind(previous.map(|p| &p.name))
        .bind(previous.map(|p| &p.email))
        .bind(previous.map(|p| &p.roles_json))
        .bind(previous.map(|p| p.status))
        // The write lock is held from BEGIN IMMEDIATE to the commit, so this reading follows revision order
        // as far as the clock does.
        .bind(now_micros_as_nanos())
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(self.prune).bind(revision - self.change_log_window).execute(&mut **tx).await?;
        Ok(revision)
    }

    async fn fetch_stored(tx: &mut Transaction<'static, Sqlite>, id: i64) -> Result<StoredUser, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        StoredUser::from_row(&row)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn pool_gauges(&self) -> crate::telemetry::store::Pools {
        vec![("writer", std::sync::Arc::new(self.writer.clone())), ("reader", std::sync::Arc::new(self.reader.clone()))]
    }

    async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        StoredUser::from_row(&row)?.into_user()
    }

    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        query.push_bind(after_id);
        push_conditions(&mut query, filter, Dialect::Sqlite);
        query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter().map(|row| StoredUser::from_row(row)?.into_user()).collect()
    }

    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM users WHERE 1 = 1");
        push_conditions(&mut query, filter, Dialect::Sqlite);
        Ok(query.build_query_scalar::<i64>().fetch_one(&self.reader).await?)
    }

    async fn create_users(&self, users: Vec<NewUser>) -> Result<Vec<User>, StoreError> {
        let mut tx = self.begin_write().await?;
        let created_at_ns = now_micros_as_nanos();
        let mut created = Vec::with_capacity(users.len());
        for (index, new) in users.into_iter().enumerate() {
            let roles_json = roles_to_json(&new.roles)?;
            let status = UserStatus::Active as i32;
            let inserted = sqlx::query_scalar::<_, i64>(
                "INSERT INTO users (name, name_folded, email, email_folded, roles, status, password_hash, \
                 created_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&new.name)
            .bind(fold(&new.name))
            .bind(&new.email)
            .bind(fold(&new.email))
            .bind(&roles_json)
            .bind(status)
            .bind(&new.password_hash)
            .bind(created_at_ns)
            .fetch_one(&mut *tx)
            .await;
            let id = match inserted {
                Ok(id) => id,
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::EmailTaken { email: new.email, index: Some(index) });
                }
                Err(error) => return Err(error.into()),
            };
            let stored = StoredUser { id, name: new.name, email: new.email, roles_json, status, created_at_ns };
            self.log_change(&mut tx, ChangeKind::Created, &stored, None).await?;
            created.push(stored.into_user()?);
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn update_user(&self, id: i64, patch: UserPatch) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = Self::fetch_stored(&mut tx, id).await?;
        let updated = current.patched(patch)?;
        if updated == current {
            // Nothing changes: no write, no change-log entry, no event for watchers.
            return current.into_user();
        }
        let result = sqlx::query(
            "UPDATE users SET name = ?, name_folded = ?, email = ?, email_folded = ?, roles = ?, status = ? \
             WHERE id = ?",
        )
        .bind(&updated.name)
        .bind(fold(&updated.name))
        .bind(&updated.email)
        .bind(fold(&updated.email))
        .bind(&updated.roles_json)
        .bind(updated.status)
        .bind(id)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(StoreError::EmailTaken { email: updated.email, index: None });
            }
            Err(error) => return Err(error.into()),
        }
        self.log_change(&mut tx, ChangeKind::Updated, &updated, Some(&current)).await?;
        tx.commit().await?;
        updated.into_user()
    }

    async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let current = Self::fetch_stored(&mut tx, id).await?;
        sqlx::query("DELETE FROM users WHERE id = ?").bind(id).execute(&mut *tx).await?;
        self.log_change(&mut tx, ChangeKind::Deleted, &current, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn head_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM user_changes").fetch_one(&self.reader).await?)
    }

    async fn snapshot(&self, filter: &Filter) -> Result<Snapshot, StoreError> {
        // One read transaction: in WAL mode it sees one consistent state for both queries.
        let mut tx = self.reader.begin().await?;
        let revision: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM user_changes").fetch_one(&mut *tx).await?;
        let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE 1 = 1"));
        push_conditions(&mut query, filter, Dialect::Sqlite);
        query.push(" ORDER BY id");
        let rows = query.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let users = rows.iter().map(|row| StoredUser::from_row(row)?.into_user()).collect::<Result<_, _>>()?;
        Ok(Snapshot { users, revision })
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let mut tx = self.reader.begin().await?;
        let (oldest, latest): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(revision), MAX(revision) FROM user_changes").fetch_one(&mut *tx).await?;
        let latest = latest.unwrap_or(0);
        if after > latest {
            return Err(StoreError::RevisionAhead { requested: after, latest });
        }
        if let Some(oldest) = oldest
            && after < oldest - 1
        {
            return Err(StoreError::RevisionCompacted { requested: after, oldest });
        }
        let rows = sqlx::query(audited(format!(
            "SELECT {CHANGE_COLUMNS} FROM user_changes WHERE revision > ? ORDER BY revision LIMIT ?"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn published_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT published FROM relay_mark").fetch_one(&self.reader).await?)
    }

    async fn mark_published(&self, revision: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_mark SET published = ? WHERE published < ?")
            .bind(revision)
            .bind(revision)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn try_relay_lease(&self) -> Result<Option<Box<dyn RelayLease>>, StoreError> {
        let lease = FileLease::try_take(self.lease_path.as_deref()).map_err(StoreError::LeaseFile)?;
        Ok(lease.map(|lease| Box::new(lease) as Box<dyn RelayLease>))
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&self.reader);
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}
