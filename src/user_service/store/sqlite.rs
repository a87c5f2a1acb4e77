//! The embedded default store: SQLite through sqlx, file-backed in WAL mode (or `sqlite::memory:`).
//!
//! Writes go through one connection and open with `BEGIN IMMEDIATE`: SQLite allows one writer at a time
//! anyway, and taking the write lock up front means a read-then-write transaction can never fail to upgrade
//! its lock (SQLITE_BUSY_SNAPSHOT), even when other processes share the file. Reads use a pool of read-only
//! connections, which WAL lets run concurrently with the writer.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments, Row, Sqlite, SqlitePool, Transaction};

use super::{Change, ChangeKind, NewUser, Snapshot, Store, StoreError, User, UserPatch};
use crate::proto::user::{UserEventType, UserStatus};
use crate::user_service::filter::{Condition, Filter, fold};

/// How long a connection waits for another process's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections; WAL readers do not block each other or the writer.
const READ_CONNECTIONS: u32 = 4;

const USER_COLUMNS: &str = "id, name, email, roles, status, created_at_ns";
const CHANGE_COLUMNS: &str = "revision, kind, user_id, name, email, roles, status, created_at_ns, \
                              prev_name, prev_email, prev_roles, prev_status";

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// How many change-log entries are kept for `since_revision` resumes.
    change_log_window: i64,
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
    pub async fn open(url: &str, change_log_window: u32) -> Result<Self, StoreError> {
        let base =
            SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(BUSY_TIMEOUT).foreign_keys(true);
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
        Ok(Self { writer, reader, change_log_window: i64::from(change_log_window.max(1)) })
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
             prev_name, prev_email, prev_roles, prev_status) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING revision",
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
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM user_changes WHERE revision <= ?")
            .bind(revision - self.change_log_window)
            .execute(&mut **tx)
            .await?;
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
    async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        StoredUser::from_row(&row)?.into_user()
    }

    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let mut args = SqliteArguments::default();
        bind(&mut args, after_id)?;
        let conditions = where_clause(filter, &mut args)?;
        bind(&mut args, i64::from(limit))?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > ?{conditions} ORDER BY id LIMIT ?");
        let rows = sqlx::query_with(audited(sql), args).fetch_all(&self.reader).await?;
        rows.iter().map(|row| StoredUser::from_row(row)?.into_user()).collect()
    }

    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError> {
        let mut args = SqliteArguments::default();
        let conditions = where_clause(filter, &mut args)?;
        let sql = format!("SELECT COUNT(*) FROM users WHERE 1 = 1{conditions}");
        Ok(sqlx::query_scalar_with::<_, i64, _>(audited(sql), args).fetch_one(&self.reader).await?)
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
        let mut updated = current.clone();
        if let Some(name) = patch.name {
            updated.name = name;
        }
        if let Some(email) = patch.email {
            updated.email = email;
        }
        if let Some(roles) = patch.roles {
            updated.roles_json = roles_to_json(&roles)?;
        }
        if let Some(status) = patch.status {
            updated.status = status as i32;
        }
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
        let mut args = SqliteArguments::default();
        let conditions = where_clause(filter, &mut args)?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE 1 = 1{conditions} ORDER BY id");
        let rows = sqlx::query_with(audited(sql), args).fetch_all(&mut *tx).await?;
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

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&self.reader);
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }
}

/// A user row as stored (roles still JSON), used to compare and log without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredUser {
    id: i64,
    name: String,
    email: String,
    roles_json: String,
    status: i32,
    created_at_ns: i64,
}

impl StoredUser {
    /// Reads a `users` row; change-log rows keep the user's id in `user_id`.
    fn from_row(row: &SqliteRow) -> Result<Self, StoreError> {
        Self::from_row_with_id(row, "id")
    }

    fn from_row_with_id(row: &SqliteRow, id_column: &str) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get(id_column)?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            roles_json: row.try_get("roles")?,
            status: row.try_get("status")?,
            created_at_ns: row.try_get("created_at_ns")?,
        })
    }

    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            id: self.id,
            name: self.name,
            email: self.email,
            roles: roles_from_json(&self.roles_json)?,
            status: self.status,
            created_at: Some(timestamp_from_nanos(self.created_at_ns)),
        })
    }
}

fn change_from_row(row: &SqliteRow) -> Result<Change, StoreError> {
    let kind: i32 = row.try_get("kind")?;
    let kind = match UserEventType::try_from(kind) {
        Ok(UserEventType::Created) => ChangeKind::Created,
        Ok(UserEventType::Updated) => ChangeKind::Updated,
        Ok(UserEventType::Deleted) => ChangeKind::Deleted,
        _ => return Err(StoreError::Corrupt(format!("change kind {kind} is not a change"))),
    };
    let user = StoredUser::from_row_with_id(row, "user_id")?;
    let previous = match row.try_get::<Option<String>, _>("prev_name")? {
        Some(name) => Some(StoredUser {
            name,
            email: row.try_get("prev_email")?,
            roles_json: row.try_get("prev_roles")?,
            status: row.try_get("prev_status")?,
            ..user.clone()
        }),
        None => None,
    };
    Ok(Change {
        revision: row.try_get("revision")?,
        kind,
        user: user.into_user()?,
        previous: previous.map(StoredUser::into_user).transpose()?,
    })
}

/// Translates a filter into ` AND …` conditions on `users`, appending their values to `args` in order.
///
/// Text values are always bound, never spliced into the SQL.
fn where_clause(filter: &Filter, args: &mut SqliteArguments) -> Result<String, StoreError> {
    let mut sql = String::new();
    for condition in filter.conditions() {
        let clause = match condition {
            Condition::StatusEq(status) => bind(args, *status as i64).map(|()| "status = ?"),
            Condition::StatusNe(status) => bind(args, *status as i64).map(|()| "status != ?"),
            Condition::NameEq(name) => bind(args, name.clone()).map(|()| "name = ?"),
            Condition::NameNe(name) => bind(args, name.clone()).map(|()| "name != ?"),
            Condition::NameContains(part) => bind(args, part.clone()).map(|()| "instr(name_folded, ?) > 0"),
            Condition::EmailEq(email) => bind(args, email.clone()).map(|()| "email_folded = ?"),
            Condition::EmailNe(email) => bind(args, email.clone()).map(|()| "email_folded != ?"),
            Condition::EmailContains(part) => bind(args, part.clone()).map(|()| "instr(email_folded, ?) > 0"),
            Condition::HasRole(role) => bind(args, role.clone())
                .map(|()| "EXISTS (SELECT 1 FROM json_each(users.roles) WHERE json_each.value = ?)"),
        }?;
        sql.push_str(" AND ");
        sql.push_str(clause);
    }
    Ok(sql)
}

/// Appends one bound value; encoding an i64 or a String cannot fail in practice, but the API says it may.
fn bind<T>(args: &mut SqliteArguments, value: T) -> Result<(), StoreError>
where
    T: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send + 'static,
{
    args.add(value).map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))
}

/// Marks SQL built with `format!` as safe. Every caller formats only this module's constants and the clauses
/// of [`where_clause`]; values from requests are always bound as parameters.
fn audited(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn roles_to_json(roles: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(roles).map_err(|e| StoreError::Corrupt(format!("cannot encode roles: {e}")))
}

fn roles_from_json(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("roles column {json:?}: {e}")))
}

/// Now, truncated to microseconds: the precision clients see in RFC 3339 timestamps.
fn now_micros_as_nanos() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX / 1000) * 1000
}

fn timestamp_from_nanos(nanos: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        // rem_euclid of 1e9 always fits in i32.
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}
