//! The store for more than one machine: PostgreSQL through sqlx, shared by any number of replicas.
//!
//! # Revisions follow commit order
//!
//! Watchers and `since_revision` resumes read the change log by revision, so a reader that has seen revision
//! N must never later see a new revision below N appear. A sequence cannot promise that: its value is taken
//! when the statement runs, and two writers may commit in the opposite order of the values they drew.
//!
//! Instead, one row (`revision_counter`) holds the latest revision. Every writing transaction first locks that
//! row (`SELECT … FOR UPDATE`), then takes each of its revisions with `UPDATE revision_counter SET revision =
//! revision + 1 RETURNING revision`. The lock is held until commit, so the next writer on any replica can only
//! read the counter once this one has committed, and its revisions are both larger and committed later:
//! revision order is commit order. A writer that rolls back also rolls back its counter increments, so no
//! revision is ever skipped or handed out twice.
//!
//! Taking the lock first, before touching `users`, serialises writers the way SQLite's single writer does.
//! That keeps read-then-write updates consistent under READ COMMITTED, and rules out deadlocks between a
//! writer holding the counter and another holding a row or a unique-index entry the first one needs.
//!
//! # Telling other replicas
//!
//! Every writing transaction also runs `pg_notify` on [`listener::CHANNEL`]; PostgreSQL delivers it at
//! commit, to every replica's listener, which wakes that replica's change feed (see [`listener`]).
//!
//! # Migrations
//!
//! sqlx's PostgreSQL migrator takes a session advisory lock (`pg_advisory_lock`, keyed by the database name)
//! before it reads or creates its bookkeeping table, so replicas starting together apply each migration once,
//! one after the other, instead of racing to create the same tables.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conditions::{Dialect, push_conditions};
use super::lease::{AdvisoryLease, RelayLease};
use super::listener::{self, CHANNEL};
use super::stored::{
    StoredUser, USER_COLUMNS, change_columns, change_from_row, is_unique_violation, now_micros_as_nanos, roles_to_json,
    user_columns,
};
use super::{Change, ChangeKind, NewUser, SnapshotPage, Store, StoreError, StoreOptions, User, UserPatch};
use crate::proto::user::UserStatus;
use crate::user_service::filter::{Filter, fold};

/// Read-only, and one snapshot for every statement: the revision and the rows read with it agree.
const BEGIN_CONSISTENT_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

const GET_USER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
const CHANGES_AFTER: &str =
    concat!("SELECT ", change_columns!(), " FROM user_changes WHERE revision > $1 ORDER BY revision LIMIT $2");
const PRUNE: &str = "DELETE FROM user_changes WHERE revision <= $1";
const PRUNE_PUBLISHED: &str =
    "DELETE FROM user_changes WHERE revision <= LEAST($1, (SELECT published FROM relay_mark))";

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    /// For sessions of their own: the relay lease's.
    options: PgConnectOptions,
    /// How many change-log entries are kept for `since_revision` resumes.
    change_log_window: i64,
    /// The pruning statement: with a relay, it also keeps what was not published yet.
    prune: &'static str,
    /// Bumped whenever any process may have committed a change.
    notifications: watch::Receiver<u64>,
    listener: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The listener holds a connection of its own; it serves nobody once the store is gone.
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db?sslmode=…`) with a pool of up to
    /// `max_connections`, applies pending migrations under an advisory lock, and starts listening for other
    /// processes' commits.
    ///
    /// Fails when the URL is malformed, the server cannot be reached or refuses the login, or a migration fails.
    pub async fn open(url: &str, store: StoreOptions) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("portico");
        let pool =
            PgPoolOptions::new().max_connections(store.max_connections.max(1)).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let (wake, notifications) = watch::channel(0);
        let listener = tokio::spawn(listener::run(options.clone().application_name(listener::APPLICATION_NAME), wake));
        Ok(Self {
            pool,
            options,
            change_log_window: i64::from(store.change_log_window.max(1)),
            prune: if store.retain_unpublished { PRUNE_PUBLISHED } else { PRUNE },
            notifications,
            listener,
        })
    }

    /// Starts a writing transaction holding the revision counter's lock (see the module comment).
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT revision FROM revision_counter FOR UPDATE").execute(&mut *tx).await?;
        Ok(tx)
    }

    /// Tells every replica's listener, then commits; PostgreSQL delivers the notification only on commit.
    async fn commit(tx: Transaction<'static, Postgres>, revision: i64) -> Result<(), StoreError> {
        let mut tx = tx;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(revision.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends one change-log entry and drops entries that fell out of the window; returns the revision.
    async fn log_change(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        kind: ChangeKind,
        user: &StoredUser,
        previous: Option<&StoredUser>,
    ) -> Result<i64, StoreError> {
        let revision: i64 =
            sqlx::query_scalar("UPDATE revision_counter SET revision = revision + 1 RETURNING revision")
                .fetch_one(&mut **tx)
                .await?;
        sqlx::query(
            "INSERT INTO user_changes (revision, kind, user_id, name, email, roles, status, created_at_ns, \
             prev_name, prev_email, prev_roles, prev_status, committed_at_ns) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             (EXTRACT(EPOCH FROM statement_timestamp()) * 1000000)::BIGINT * 1000)",
        )
        .bind(revision)
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
        .execute(&mut **tx)
        .await?;
        sqlx::query(self.prune).bind(revision - self.change_log_window).execute(&mut **tx).await?;
        Ok(revision)
    }

    async fn fetch_stored(tx: &mut Transaction<'static, Postgres>, id: i64) -> Result<StoredUser, StoreError> {
        let row = sqlx::query(GET_USER).bind(id).fetch_optional(&mut **tx).await?.ok_or(StoreError::NotFound(id))?;
        StoredUser::from_row(&row)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        let row = sqlx::query(GET_USER).bind(id).fetch_optional(&self.pool).await?.ok_or(StoreError::NotFound(id))?;
        StoredUser::from_row(&row)?.into_user()
    }

    async fn list_users(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<Vec<User>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        query.push_bind(after_id);
        push_conditions(&mut query, filter, Dialect::Postgres);
        query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(|row| StoredUser::from_row(row)?.into_user()).collect()
    }

    async fn count_users(&self, filter: &Filter) -> Result<i64, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM users WHERE 1 = 1");
        push_conditions(&mut query, filter, Dialect::Postgres);
        Ok(query.build_query_scalar::<i64>().fetch_one(&self.pool).await?)
    }

    async fn create_users(&self, users: Vec<NewUser>) -> Result<Vec<User>, StoreError> {
        let mut tx = self.begin_write().await?;
        let created_at_ns = now_micros_as_nanos();
        let mut created = Vec::with_capacity(users.len());
        let mut last_revision = 0;
        for (index, new) in users.into_iter().enumerate() {
            let roles_json = roles_to_json(&new.roles)?;
            let status = UserStatus::Active as i32;
            let inserted = sqlx::query_scalar::<_, i64>(
                "INSERT INTO users (name, name_folded, email, email_folded, roles, status, password_hash, \
                 created_at_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
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
            last_revision = self.log_change(&mut tx, ChangeKind::Created, &stored, None).await?;
            created.push(stored.into_user()?);
        }
        Self::commit(tx, last_revision).await?;
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
            "UPDATE users SET name = $1, name_folded = $2, email = $3, email_folded = $4, roles = $5, status = $6 \
             WHERE id = $7",
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
        let revision = self.log_change(&mut tx, ChangeKind::Updated, &updated, Some(&current)).await?;
        Self::commit(tx, revision).await?;
        updated.into_user()
    }

    async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let current = Self::fetch_stored(&mut tx, id).await?;
        sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let revision = self.log_change(&mut tx, ChangeKind::Deleted, &current, None).await?;
        Self::commit(tx, revision).await?;
        Ok(())
    }

    async fn head_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT revision FROM revision_counter").fetch_one(&self.pool).await?)
    }

    async fn snapshot_page(&self, filter: &Filter, after_id: i64, limit: u32) -> Result<SnapshotPage, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM revision_counter").fetch_one(&mut *tx).await?;
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        query.push_bind(after_id);
        push_conditions(&mut query, filter, Dialect::Postgres);
        query.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let users = rows.iter().map(|row| StoredUser::from_row(row)?.into_user()).collect::<Result<_, _>>()?;
        Ok(SnapshotPage { users, revision })
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_CONSISTENT_READ).await?;
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
        let rows = sqlx::query(CHANGES_AFTER).bind(after).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn published_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT published FROM relay_mark").fetch_one(&self.pool).await?)
    }

    async fn mark_published(&self, revision: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_mark SET published = $1 WHERE published < $1")
            .bind(revision)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn try_relay_lease(&self) -> Result<Option<Box<dyn RelayLease>>, StoreError> {
        let options = self.options.clone().application_name("portico-relay");
        let lease = AdvisoryLease::try_take(&options).await?;
        Ok(lease.map(|lease| Box::new(lease) as Box<dyn RelayLease>))
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    fn pool_gauges(&self) -> crate::telemetry::store::Pools {
        vec![("postgres", std::sync::Arc::new(self.pool.clone()))]
    }

    fn change_notifications(&self) -> Option<watch::Receiver<u64>> {
        Some(self.notifications.clone())
    }
}
