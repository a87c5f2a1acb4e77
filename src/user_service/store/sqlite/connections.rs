//! Where SQLite statements run: one writer thread that owns the only write connection, and a pool of read-only
//! connections that point reads borrow right on the calling thread.
//!
//! Why not the async runtime's usual "send it to a worker thread": a primary-key read in WAL mode takes a few
//! microseconds, while handing it to another thread and back costs two wake-ups, several times the read itself.
//! So a point read (one indexed row, or an aggregate over an index) runs inline, on a connection whose busy
//! handler is off: it can never wait on a lock there. If SQLite does report the database busy (another process
//! recovering the WAL, say), the read is retried on the blocking pool, where waiting is harmless. Reads that
//! scan (lists, counts, snapshot pages, change-log pages) always go to the blocking pool, so a long query never
//! stalls the runtime's threads.
//!
//! Writes (with `synchronous=FULL`, an fsync per commit) go to one dedicated thread, which commits what is
//! queued in groups (see `writer`). SQLite allows one writer at a time anyway; a queue in front of it means no
//! writer ever waits on a lock inside this process.
//!
//! An in-memory database has no file for a second connection to open: the writer's connection is the only one,
//! and reads go to the writer thread too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction};
use tokio::sync::Semaphore;

use super::super::StoreError;
use super::writer::Writer;

/// How long a blocking read or a write waits for another process's lock before failing with SQLITE_BUSY.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads on the blocking pool at once; WAL readers do not block each other or the writer.
const BLOCKING_READS: usize = 4;
/// Idle read connections kept open; more are opened while more reads run at once, and closed after.
const IDLE_READERS: usize = 8;
/// Prepared statements kept per connection (rusqlite's cache, keyed by SQL text).
const STATEMENT_CACHE: usize = 32;

/// How a read runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// One row by key, or an aggregate an index answers: inline, unless the database is busy.
    Point,
    /// Anything that may visit many rows: on the blocking pool.
    Scan,
}

/// The writer and the readers of one database.
pub(super) struct Connections {
    writer: Writer,
    /// `None` for an in-memory database.
    readers: Option<Readers>,
}

impl Connections {
    /// Opens the write connection (creating the file, in WAL mode) and prepares read connections for `path`;
    /// `None`: a private in-memory database.
    pub(super) fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let Some(path) = path else {
            let connection = Connection::open_in_memory()?;
            configure(&connection, true)?;
            return Ok(Self { writer: Writer::spawn(connection)?, readers: None });
        };
        let connection = open_writer(path)?;
        Ok(Self { writer: Writer::spawn(connection)?, readers: Some(Readers::new(path.to_path_buf())) })
    }

    /// Runs `work` on the write connection, on the writer thread, outside any transaction.
    pub(super) async fn write_alone<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.alone(work).await
    }

    /// Runs `work` in a write transaction, committed (durably) together with the others queued (see `writer`).
    pub(super) async fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.transaction(work).await
    }

    /// Runs `work` on a read connection, as `how` says.
    pub(super) async fn read<T, F>(&self, how: Read, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(readers) = &self.readers else { return self.writer.alone(move |connection| work(connection)).await };
        if how == Read::Point {
            match readers.inline(&work) {
                Err(error) if is_busy(&error) => {}
                done => return done,
            }
        }
        readers.blocking(work).await
    }

    /// (in use, idle) of the writer and of the read connections, for the pool gauges.
    pub(super) fn gauges(
        &self,
    ) -> (Arc<dyn crate::telemetry::store::PoolGauge>, Arc<dyn crate::telemetry::store::PoolGauge>) {
        let readers: Arc<dyn crate::telemetry::store::PoolGauge> = match &self.readers {
            Some(readers) => Arc::clone(&readers.pool) as _,
            None => Arc::new(ReadPool::default()),
        };
        (Arc::clone(&self.writer.gauge) as _, readers)
    }
}

/// Whether SQLite reported a lock held by another connection.
pub(super) fn is_busy(error: &StoreError) -> bool {
    matches!(error, StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
        if matches!(failure.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// The write connection: creates the file if missing and sets WAL mode. Another process creating the same file
/// at the same moment can make this fail at once with "database is locked", whatever the busy timeout (seen
/// with three replicas started together), so that case is retried until the busy timeout.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(StoreError::from)
        .and_then(|connection| {
            connection.busy_timeout(BUSY_TIMEOUT)?;
            // FULL: in WAL mode, NORMAL may lose the last commits on power loss, and a commit the client was
            // told about must survive. The cost is one fsync of the WAL per commit.
            connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
            configure(&connection, true)?;
            Ok(connection)
        });
        match opened {
            Err(error) if is_busy(&error) && started.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

fn configure(connection: &Connection, write: bool) -> Result<(), StoreError> {
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if write {
        connection.execute_batch("PRAGMA foreign_keys = ON;")?;
    } else {
        // rusqlite opens with a 5 s busy timeout; inline reads must never wait (see the module comment).
        connection.busy_timeout(Duration::ZERO)?;
    }
    Ok(())
}

/// Read-only connections to one file, opened on demand and kept while idle (up to [`IDLE_READERS`]).
struct Readers {
    pool: Arc<ReadPool>,
    path: PathBuf,
    blocking: Arc<Semaphore>,
}

/// The idle read connections, and how many are lent out.
#[derive(Default)]
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    in_use: AtomicU32,
}

impl crate::telemetry::store::PoolGauge for ReadPool {
    fn connections(&self) -> (u32, u32) {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).len();
        (self.in_use.load(Ordering::Relaxed), u32::try_from(idle).unwrap_or(u32::MAX))
    }
}

impl Readers {
    fn new(path: PathBuf) -> Self {
        Self { pool: Arc::new(ReadPool::default()), path, blocking: Arc::new(Semaphore::new(BLOCKING_READS)) }
    }

    /// Runs `work` here and now, on a connection that never waits for a lock.
    fn inline<T>(&self, work: &impl Fn(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let connection = Lent::take(&self.pool, &self.path)?;
        work(connection.get()?)
    }

    /// Runs `work` on the blocking pool, on a connection that waits up to [`BUSY_TIMEOUT`] for a lock.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.blocking).acquire_owned().await.map_err(|_| StoreError::WriterGone)?;
        let (pool, path) = (Arc::clone(&self.pool), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let lent = Lent::take(&pool, &path)?;
            let connection = lent.get()?;
            connection.busy_timeout(BUSY_TIMEOUT)?;
            let result = work(connection);
            connection.busy_timeout(Duration::ZERO)?;
            result
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }
}

/// A read connection lent out of the pool; it goes back when dropped, unless it is still inside a transaction
/// (a failed statement left it there) or enough others are idle already.
struct Lent<'a> {
    connection: Option<Connection>,
    pool: &'a ReadPool,
}

impl<'a> Lent<'a> {
    fn take(pool: &'a ReadPool, path: &Path) -> Result<Self, StoreError> {
        let idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let connection = Connection::open_with_flags(path, flags)?;
                configure(&connection, false)?;
                connection
            }
        };
        pool.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(Self { connection: Some(connection), pool })
    }

    fn get(&self) -> Result<&Connection, StoreError> {
        self.connection.as_ref().ok_or(StoreError::WriterGone)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        let Some(connection) = self.connection.take() else { return };
        if !connection.is_autocommit() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_READERS {
            idle.push(connection);
        }
    }
}
