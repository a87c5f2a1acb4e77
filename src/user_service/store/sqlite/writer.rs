//! The writer thread: owns the one write connection and commits transactions in groups.
//!
//! With `synchronous=FULL` every commit costs an fsync of the WAL, far more than the statements of a create. So
//! the writer takes every transaction waiting in its queue (up to [`MAX_GROUP`]) and runs them in one
//! `BEGIN IMMEDIATE` transaction, each inside a savepoint of its own: a transaction that fails (an email
//! already taken) is rolled back to its savepoint and fails alone, the others commit together with one fsync.
//! Nobody is answered before that commit returns, so a success still means durable, and a failed commit fails
//! every transaction of the group. Revisions are taken in queue order inside the group, so they still follow
//! commit order.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::super::StoreError;

/// Transactions committed together at most.
const MAX_GROUP: usize = 64;

/// A value a transaction returned, on its way back to the caller that knows its type.
type Output = Box<dyn Any + Send>;
/// A transaction's statements.
type Work = Box<dyn FnOnce(&Transaction<'_>) -> Result<Output, StoreError> + Send>;
/// Work that needs the connection to itself (migrations, a statement outside any transaction).
type Alone = Box<dyn FnOnce(&mut Connection) + Send>;

enum Job {
    Grouped(Grouped),
    Alone(Alone),
}

/// A transaction's work, run inside the group's transaction in a savepoint of its own, and where its answer
/// goes once the group has committed or failed.
struct Grouped {
    work: Work,
    done: oneshot::Sender<Result<Output, StoreError>>,
}

/// The writer thread's queue. The thread ends, closing the connection, when the last handle is dropped.
pub(super) struct Writer {
    jobs: Sender<Job>,
    pub(super) gauge: Arc<WriterGauge>,
}

impl Writer {
    pub(super) fn spawn(connection: Connection) -> Result<Self, StoreError> {
        let (jobs, queue) = channel::<Job>();
        let gauge = Arc::new(WriterGauge::default());
        let busy = Arc::clone(&gauge);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(connection, &queue, &busy))
            .map_err(StoreError::Thread)?;
        Ok(Self { jobs, gauge })
    }

    /// Runs `work` in a write transaction (committed with whatever else is queued) and returns its result once
    /// the commit is durable.
    pub(super) async fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let work: Work = Box::new(move |tx: &Transaction<'_>| work(tx).map(|value| Box::new(value) as Output));
        self.jobs.send(Job::Grouped(Grouped { work, done })).map_err(|_| StoreError::WriterGone)?;
        let output = result.await.map_err(|_| StoreError::WriterGone)??;
        // The output is the value `work` returned: a T.
        output
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| StoreError::Corrupt("writer returned another type".into()))
    }

    /// Runs `work` on the connection, outside any group.
    pub(super) async fn alone<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Alone = Box::new(move |connection| {
            let _ = done.send(work(connection));
        });
        self.jobs.send(Job::Alone(job)).map_err(|_| StoreError::WriterGone)?;
        result.await.map_err(|_| StoreError::WriterGone)?
    }
}

fn run(mut connection: Connection, queue: &Receiver<Job>, busy: &WriterGauge) {
    let mut next = queue.recv().ok();
    while let Some(job) = next.take() {
        busy.0.store(1, Ordering::Relaxed);
        match job {
            Job::Alone(work) => work(&mut connection),
            Job::Grouped(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Grouped(work)) => group.push(work),
                        Ok(alone) => {
                            next = Some(alone);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                commit_group(&mut connection, group);
            }
        }
        busy.0.store(0, Ordering::Relaxed);
        if next.is_none() {
            next = queue.recv().ok();
        }
    }
}

fn commit_group(connection: &mut Connection, group: Vec<Grouped>) {
    let mut staged = Vec::with_capacity(group.len());
    let mut unreached = group.into_iter();
    let committed = (|| {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for Grouped { work, done } in unreached.by_ref() {
            tx.execute_batch("SAVEPOINT job")?;
            let result = work(&tx);
            let failed = result.is_err();
            // Answered after the commit, so that a success is durable when the caller hears of it.
            staged.push((result, done));
            if failed {
                tx.execute_batch("ROLLBACK TO job")?;
            }
            tx.execute_batch("RELEASE job")?;
        }
        tx.commit()
    })();
    let committed = committed.map_err(Arc::new);
    // The caller may have gone (its call was cancelled); the work is done either way.
    for (result, done) in staged {
        let _ = done.send(match (&committed, result) {
            (Ok(()), result) | (Err(_), result @ Err(_)) => result,
            (Err(error), Ok(_)) => Err(StoreError::Commit(Arc::clone(error))),
        });
    }
    for Grouped { done, .. } in unreached {
        if let Err(error) = &committed {
            let _ = done.send(Err(StoreError::Commit(Arc::clone(error))));
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct WriterGauge(AtomicU32);

impl crate::telemetry::store::PoolGauge for WriterGauge {
    fn connections(&self) -> (u32, u32) {
        let busy = self.0.load(Ordering::Relaxed);
        (busy, 1 - busy)
    }
}
