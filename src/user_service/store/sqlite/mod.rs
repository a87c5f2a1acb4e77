//! The embedded default store: SQLite through rusqlite, file-backed in WAL mode (or in memory).
//!
//! Writes run on one connection on a thread of its own, committed in groups (see `writer`), and open with
//! `BEGIN IMMEDIATE`: SQLite allows one
//! writer at a time anyway, and taking the write lock up front means a read-then-write transaction can never fail
//! to upgrade its lock (SQLITE_BUSY_SNAPSHOT), even when other processes share the file. Reads use read-only
//! connections, which WAL lets run concurrently with the writer; point reads run inline (see `connections`).
//! Every statement is prepared once per connection and reused from its cache.

mod connections;
mod migrate;
mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, Transaction, params};

use super::conditions::{Dialect, SqlWriter, push_conditions};
use super::lease::{FileLease, RelayLease};
use super::stored::{
    StoredUser, USER_COLUMNS, change_columns, change_from_row, now_micros_as_nanos, roles_to_json, user_columns,
};
use super::{Change, ChangeKind, NewUser, SnapshotPage, Store, StoreError, StoreOptions, User, UserPatch};
use crate::proto::user::UserStatus;
use crate::user_service::filter::{Filter, fold};
use connections::{Connections, Read};

const GET_USER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = ?1");
const HEAD_REVISION: &str = "SELECT COALESCE(MAX(revision), 0) FROM user_changes";
const LOG_BOUNDS: &str = "SELECT MIN(revision), MAX(revision) FROM user_changes";
const CHANGES_AFTER: &str =
    concat!("SELECT ", change_columns!(), " FROM user_changes WHERE revision > ?1 ORDER BY revision LIMIT ?2");
const INSERT_USER: &str = "INSERT INTO users (name, name_folded, email, email_folded, roles, status, password_hash, \
                           created_at_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id";
const UPDATE_USER: &str = "UPDATE users SET name = ?1, name_folded = ?2, email = ?3, email_folded = ?4, roles = ?5, \
                           status = ?6 WHERE id = ?7";
const DELETE_USER: &str = "DELETE FROM users WHERE id = ?1";
const LOG_CHANGE: &str = "INSERT INTO user_changes (kind, user_id, name, email, roles, status, created_at_ns, \
                          prev_name, prev_email, prev_roles, prev_status, committed_at_ns) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING revision";
const PRUNE: &str = "DELETE FROM user_changes WHERE revision <= ?1";
const PRUNE_PUBLISHED: &str = "DELETE FROM user_changes WHERE revision <= min(?1, (SELECT published FROM relay_mark))";
/// SQLITE_CONSTRAINT_UNIQUE: an email already in use.
const CONSTRAINT_UNIQUE: i32 = 2067;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    connections: Arc<Connections>,
    /// How many change-log entries are kept for `since_revision` resumes.
    change_log_window: i64,
    /// The pruning statement: with a relay, it also keeps what was not published yet.
    prune: &'static str,
    /// The relay lease file beside the database; `None` for an in-memory database.
    lease_path: Option<PathBuf>,
}

/// A query's SQL and its bound values, written with `?` placeholders.
#[derive(Debug, Default)]
pub(in crate::user_service::store) struct SqliteQuery {
    sql: String,
    params: Vec<Value>,
}

impl SqliteQuery {
    pub(in crate::user_service::store) fn new(sql: &str) -> Self {
        Self { sql: sql.to_owned(), params: Vec::new() }
    }

    #[cfg(test)]
    pub(in crate::user_service::store) fn sql(&self) -> &str {
        &self.sql
    }

    /// The users whose rows this query selects, in order.
    fn users(&self, connection: &Connection) -> Result<Vec<User>, StoreError> {
        let mut statement = connection.prepare_cached(&self.sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(&self.params))?;
        let mut users = Vec::new();
        while let Some(row) = rows.next()? {
            users.push(StoredUser::from_row(row)?.into_user()?);
        }
        Ok(users)
    }
}

impl SqlWriter for SqliteQuery {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }
    fn push_int(&mut self, value: i64) -> &mut Self {
        self.params.push(Value::Integer(value));
        self.push("?")
    }
    fn push_text(&mut self, value: String) -> &mut Self {
        self.params.push(Value::Text(value));
        self.push("?")
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`, `sqlite:path`, `sqlite::memory:`)
    /// and applies pending migrations.
    ///
    /// Fails when the URL is malformed, the file cannot be opened or created, or a migration fails.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let path = file_path(url)?;
        let connections = {
            let path = path.clone();
            // Opening may wait out another process's lock on the file (busy timeout): not on the runtime.
            tokio::task::spawn_blocking(move || Connections::open(path.as_deref()))
                .await
                .map_err(|_| StoreError::WriterGone)??
        };
        connections.write_alone(migrate::run).await?;
        let lease_path = path.map(|path| {
            let mut path = path.into_os_string();
            path.push("-relay.lock");
            PathBuf::from(path)
        });
        Ok(Self {
            connections: Arc::new(connections),
            change_log_window: i64::from(options.change_log_window.max(1)),
            prune: if options.retain_unpublished { PRUNE_PUBLISHED } else { PRUNE },
            lease_path,
        })
    }

    /// Runs `work` in a write transaction (`BEGIN IMMEDIATE`, possibly shared with other writes of this
    /// process as a savepoint each) and returns its result once it is committed.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &LogWriter) -> Result<T, StoreError> + Send + 'static,
    {
        let log = LogWriter { window: self.change_log_window, prune: self.prune };
        self.connections.transaction(move |tx| work(tx, &log)).await
    }
}

/// The database file a `sqlite:` URL names (parsed, percent-decoding included, as sqlx always has), or `None`
/// for an in-memory database. The store always opens the file read-write and creates it if missing.
fn file_path(url: &str) -> Result<Option<PathBuf>, StoreError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// Appends change-log entries inside a write transaction.
struct LogWriter {
    window: i64,
    prune: &'static str,
}

impl LogWriter {
    /// Appends one entry and drops entries that fell out of the window; returns the revision.
    fn append(
        &self,
        tx: &Transaction<'_>,
        kind: ChangeKind,
        user: &StoredUser,
        previous: Option<&StoredUser>,
    ) -> Result<i64, StoreError> {
        let revision: i64 = tx.prepare_cached(LOG_CHANGE)?.query_row(
            params![
                kind.event_type() as i32,
                user.id,
                user.name,
                user.email,
                user.roles_json,
                user.status,
                user.created_at_ns,
                previous.map(|p| &p.name),
                previous.map(|p| &p.email),
                previous.map(|p| &p.roles_json),
                previous.map(|p| p.status),
                // The write lock is held from BEGIN IMMEDIATE to the commit, so this reading follows revision
                // order as far as the clock does.
                now_micros_as_nanos(),
            ],
            |row| row.get(0),
        )?;
        tx.prepare_cached(self.prune)?.execute([revision - self.window])?;
        Ok(revision)
    }
}

fn fetch_stored(connection: &Connection, id: i64) -> Result<Option<StoredUser>, StoreError> {
    let mut statement = connection.prepare_cached(GET_USER)?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(StoredUser::from_row).transpose()
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if failure.code == ErrorCode::ConstraintViolation && failure.extended_code == CONSTRAINT_UNIQUE)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn pool_gauges(&self) -> crate::telemetry::store::Pools {
        let (writer, reader) = self.connections.gauges();
        vec![("writer", writer), ("reader", reader)]
    }

    async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        let stored = self.connections.read(Read::Point, move |connection| fetch_stored(connection, id)).await?;
        stored.ok_or(StoreError::NotFound(id))?.into_user()
    }

    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let mut query = SqliteQuery::new(&format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        query.push_int(after_id);
        push_conditions(&mut query, filter, Dialect::Sqlite);
        query.push(" ORDER BY id LIMIT ").push_int(i64::from(limit));
        self.connections.read(Read::Scan, move |connection| query.users(connection)).await
    }

    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError> {
        let mut query = SqliteQuery::new("SELECT COUNT(*) FROM users WHERE 1 = 1");
        push_conditions(&mut query, filter, Dialect::Sqlite);
        self.connections
            .read(Read::Scan, move |connection| {
                let mut statement = connection.prepare_cached(&query.sql)?;
                Ok(statement.query_row(rusqlite::params_from_iter(&query.params), |row| row.get(0))?)
            })
            .await
    }

    async fn create_users(&self, users: Vec<NewUser>) -> Result<Vec<User>, StoreError> {
        self.write(move |tx, log| {
            let created_at_ns = now_micros_as_nanos();
            let mut created = Vec::with_capacity(users.len());
            for (index, new) in users.into_iter().enumerate() {
                let roles_json = roles_to_json(&new.roles)?;
                let status = UserStatus::Active as i32;
                let inserted = tx.prepare_cached(INSERT_USER)?.query_row(
                    params![
                        new.name,
                        fold(&new.name),
                        new.email,
                        fold(&new.email),
                        roles_json,
                        status,
                        new.password_hash,
                        created_at_ns
                    ],
                    |row| row.get::<_, i64>(0),
                );
                let id = match inserted {
                    Ok(id) => id,
                    Err(error) if is_unique_violation(&error) => {
                        return Err(StoreError::EmailTaken { email: new.email, index: Some(index) });
                    }
                    Err(error) => return Err(error.into()),
                };
                let stored = StoredUser { id, name: new.name, email: new.email, roles_json, status, created_at_ns };
                log.append(tx, ChangeKind::Created, &stored, None)?;
                created.push(stored.into_user()?);
            }
            Ok(created)
        })
        .await
    }

    async fn update_user(&self, id: i64, patch: UserPatch) -> Result<User, StoreError> {
        self.write(move |tx, log| {
            let current = fetch_stored(tx, id)?.ok_or(StoreError::NotFound(id))?;
            let updated = current.patched(patch)?;
            if updated == current {
                // Nothing changes: no write, no change-log entry, no event for watchers.
                return current.into_user();
            }
            let result = tx.prepare_cached(UPDATE_USER)?.execute(params![
                updated.name,
                fold(&updated.name),
                updated.email,
                fold(&updated.email),
                updated.roles_json,
                updated.status,
                id
            ]);
            match result {
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::EmailTaken { email: updated.email, index: None });
                }
                Err(error) => return Err(error.into()),
            }
            log.append(tx, ChangeKind::Updated, &updated, Some(&current))?;
            updated.into_user()
        })
        .await
    }

    async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |tx, log| {
            let current = fetch_stored(tx, id)?.ok_or(StoreError::NotFound(id))?;
            tx.prepare_cached(DELETE_USER)?.execute([id])?;
            log.append(tx, ChangeKind::Deleted, &current, None)?;
            Ok(())
        })
        .await
    }

    async fn head_revision(&self) -> Result<i64, StoreError> {
        self.connections
            .read(Read::Point, |connection| {
                Ok(connection.prepare_cached(HEAD_REVISION)?.query_row([], |row| row.get(0))?)
            })
            .await
    }

    async fn snapshot_page(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<SnapshotPage, StoreError> {
        let mut query = SqliteQuery::new(&format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        query.push_int(after_id);
        push_conditions(&mut query, filter, Dialect::Sqlite);
        query.push(" ORDER BY id LIMIT ").push_int(i64::from(limit));
        self.connections
            .read(Read::Scan, move |connection| {
                // One read transaction: in WAL mode it sees one consistent state for both statements.
                let tx = connection.unchecked_transaction()?;
                let revision = tx.prepare_cached(HEAD_REVISION)?.query_row([], |row| row.get(0))?;
                let users = query.users(&tx)?;
                tx.commit()?;
                Ok(SnapshotPage { users, revision })
            })
            .await
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.connections
            .read(Read::Scan, move |connection| {
                let tx = connection.unchecked_transaction()?;
                let (oldest, latest): (Option<i64>, Option<i64>) =
                    tx.prepare_cached(LOG_BOUNDS)?.query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                let latest = latest.unwrap_or(0);
                if after > latest {
                    return Err(StoreError::RevisionAhead { requested: after, latest });
                }
                if let Some(oldest) = oldest
                    && after < oldest - 1
                {
                    return Err(StoreError::RevisionCompacted { requested: after, oldest });
                }
                let mut changes = Vec::new();
                {
                    let mut statement = tx.prepare_cached(CHANGES_AFTER)?;
                    let mut rows = statement.query([after, i64::from(limit)])?;
                    while let Some(row) = rows.next()? {
                        changes.push(change_from_row(row)?);
                    }
                }
                tx.commit()?;
                Ok(changes)
            })
            .await
    }

    async fn published_revision(&self) -> Result<i64, StoreError> {
        self.connections
            .read(Read::Point, |connection| {
                Ok(connection.prepare_cached("SELECT published FROM relay_mark")?.query_row([], |row| row.get(0))?)
            })
            .await
    }

    async fn mark_published(&self, revision: i64) -> Result<(), StoreError> {
        self.connections
            .transaction(move |tx| {
                tx.prepare_cached("UPDATE relay_mark SET published = ?1 WHERE published < ?1")?.execute([revision])?;
                Ok(())
            })
            .await
    }

    async fn try_relay_lease(&self) -> Result<Option<Box<dyn RelayLease>>, StoreError> {
        let lease = FileLease::try_take(self.lease_path.as_deref()).map_err(StoreError::LeaseFile)?;
        Ok(lease.map(|lease| Box::new(lease) as Box<dyn RelayLease>))
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = self.connections.read(Read::Point, |connection| {
            connection.prepare_cached("SELECT 1")?.query_row([], |row| row.get::<_, i64>(0))?;
            Ok(())
        });
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file_path;
    use std::path::PathBuf;

    #[test]
    fn urls_name_a_file_or_memory() -> Result<(), super::StoreError> {
        let cases = [
            ("sqlite://portico.db", Some("portico.db")),
            ("sqlite:portico.db", Some("portico.db")),
            ("sqlite:///tmp/a b/users.db", Some("/tmp/a b/users.db")),
            ("sqlite://data/users.db?mode=rwc", Some("data/users.db")),
            ("sqlite::memory:", None),
            ("sqlite://:memory:", None),
            ("sqlite://shared?mode=memory&cache=shared", None),
            ("sqlite://a%20b.db", Some("a b.db")),
        ];
        for (url, path) in cases {
            assert_eq!(file_path(url)?, path.map(PathBuf::from), "{url}");
        }
        Ok(())
    }
}
