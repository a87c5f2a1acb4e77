//! The relay lease: at most one of the processes sharing a database publishes its change log at a time.
//!
//! - PostgreSQL: a session-level advisory lock, taken with `pg_try_advisory_lock` on a connection of its own.
//!   The server releases it when that session ends, so a relay that crashes or loses its connection gives the
//!   lease up by itself, and another replica's next try takes it over.
//! - SQLite: an exclusive lock on a file beside the database (`<db>-relay.lock`), which the OS releases when
//!   the process exits. (An in-memory database belongs to one process: its lease is always free.)
//!
//! A holder checks its lease before each page it publishes and stops once it is gone. Two relays can then
//! overlap only for the moment between a lost session and that check; JetStream's de-duplication by
//! `Nats-Msg-Id` (the revision) absorbs what both might publish meanwhile.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The advisory lock key of the relay ("portico" in ASCII); other keys of the database are not ours.
const ADVISORY_KEY: i64 = 0x0070_6f72_7469_636f;
/// A lease check that takes longer than this counts as lost: the session may be gone.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A held relay lease; dropping it gives the lease up.
#[async_trait::async_trait]
pub trait RelayLease: Send {
    /// Whether this process still holds the lease. `false` is final: take a new lease to relay again.
    async fn still_held(&mut self) -> bool;
}

/// PostgreSQL's lease: the advisory lock lives as long as this connection's session.
pub(super) struct AdvisoryLease {
    session: PgConnection,
}

impl AdvisoryLease {
    /// Takes the lease if no other session holds it; `None` when another one does.
    pub(super) async fn try_take(options: &PgConnectOptions) -> Result<Option<Self>, sqlx::Error> {
        let mut session = PgConnection::connect_with(options).await?;
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(ADVISORY_KEY).fetch_one(&mut session).await?;
        if taken {
            Ok(Some(Self { session }))
        } else {
            session.close().await?;
            Ok(None)
        }
    }
}

#[async_trait::async_trait]
impl RelayLease for AdvisoryLease {
    async fn still_held(&mut self) -> bool {
        // A session-level lock lasts as long as the session: if the session answers, the lock is still ours.
        let answered = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&mut self.session)).await;
        matches!(answered, Ok(Ok(_)))
    }
}

/// SQLite's lease: an exclusive lock on an open file (or nothing, for an in-memory database).
pub(super) struct FileLease {
    _file: Option<File>,
}

impl FileLease {
    /// Takes the lease on `path` (created if missing) if no other open file holds it; `None` when one does.
    /// Without a path (an in-memory database), the lease is always free.
    pub(super) fn try_take(path: Option<&Path>) -> std::io::Result<Option<Self>> {
        let Some(path) = path else { return Ok(Some(Self { _file: None })) };
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: Some(file) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

#[async_trait::async_trait]
impl RelayLease for FileLease {
    async fn still_held(&mut self) -> bool {
        // The OS keeps the lock for as long as the file is open, and this value keeps it open.
        true
    }
}
