//! The gateway's data-plane threads: one single-threaded tokio runtime per worker, each serving the client
//! connections handed to it and driving its own upstream connections (its lane of every endpoint's pool).
//!
//! A request then lives on one thread from the client's socket to the upstream's and back: no wake-up
//! crosses threads, nothing is stolen mid-request, and the upstream HTTP/2 connection that carries a worker's
//! calls is written and read by the thread that made them. With one shared multi-threaded runtime, every call
//! went through a single upstream connection driven by whichever thread had it, the other thread waking it up;
//! that cost CPU on each request and gave the latency tail of one busy connection (README, "Performance").
//! It is the model Envoy and nginx use: the accept loop (on the main runtime) gives each new connection to
//! the worker serving the fewest, and the connection stays there for its life.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::upstream::pool;

/// The work for one client connection, run on a worker to its end.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The number of workers when none is configured: one per CPU the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start gateway worker thread {index}: {source}")]
pub struct StartError {
    index: usize,
    source: std::io::Error,
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections the worker is serving now.
    load: Arc<AtomicUsize>,
}

/// The running workers. Dropping this ends them: each finishes its runtime, which cancels whatever it still
/// runs (the accept loop drops it only after the drain).
pub struct Workers {
    workers: Box<[Worker]>,
    /// Where the search for the least loaded worker starts, turning so that equals take turns.
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one), named `portico-worker-N`; worker N's thread uses lane N of
    /// every upstream connection pool.
    ///
    /// # Errors
    ///
    /// A thread or runtime that cannot be created (out of memory or threads).
    pub fn start(count: usize) -> Result<Self, StartError> {
        let workers = (0..count.max(1)).map(Self::start_one).collect::<Result<Box<[_]>, _>>()?;
        Ok(Self { workers, next: AtomicUsize::new(0) })
    }

    fn start_one(index: usize) -> Result<Worker, StartError> {
        let failed = |source| StartError { index, source };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name(format!("portico-worker-{index}"))
            .spawn(move || {
                pool::assign_thread_lane(index);
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job);
                    }
                });
            })
            .map_err(failed)?;
        Ok(Worker { jobs, load: Arc::new(AtomicUsize::new(0)) })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs the job that `make` builds on the worker serving the fewest connections; the connection counts on
    /// that worker until the [`Occupancy`] given to `make` is dropped (the job moves it to wherever the
    /// connection ends up being served). Returns the worker's index.
    pub fn dispatch<F, J>(&self, make: F) -> usize
    where
        F: FnOnce(Occupancy) -> J,
        J: Future<Output = ()> + Send + 'static,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.workers.len();
        let index = (0..count)
            .map(|offset| (start + offset) % count)
            .min_by_key(|&index| self.workers[index].load.load(Ordering::Relaxed))
            .unwrap_or(0);
        let worker = &self.workers[index];
        worker.load.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::pin(make(Occupancy(Arc::clone(&worker.load))));
        // A worker's thread ends only when this sender is dropped, so the job always arrives; if the thread
        // died anyway (a panic outside any task), the connection is dropped, which closes it.
        let _ = worker.jobs.send(job);
        index
    }

    /// Connections each worker is serving now.
    pub fn loads(&self) -> Vec<usize> {
        self.workers.iter().map(|worker| worker.load.load(Ordering::Relaxed)).collect()
    }
}

/// One connection counted on its worker, until dropped.
pub struct Occupancy(Arc<AtomicUsize>);

impl Drop for Occupancy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn each_connection_goes_to_the_least_loaded_worker_and_runs_on_its_thread() {
        let workers = Workers::start(2).expect("workers start");
        let mut held = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (release, released) = oneshot::channel::<()>();
            let (report, reported) = oneshot::channel();
            let index = workers.dispatch(|occupancy| async move {
                let _ = report.send((std::thread::current().name().map(str::to_owned), pool::thread_lane()));
                let _ = released.await;
                drop(occupancy);
            });
            threads.push((index, reported.await.expect("the job ran")));
            held.push(release);
        }
        // Busy workers take turns: two connections each, each job on its worker's thread and lane.
        assert_eq!(workers.loads(), [2, 2]);
        for (index, (thread, lane)) in &threads {
            assert_eq!(thread.as_deref(), Some(format!("portico-worker-{index}").as_str()));
            assert_eq!(*lane, Some(*index));
        }
        assert_ne!(threads[0].0, threads[1].0, "the second connection goes to the idle worker");
        // Ending a connection frees its place: the next one goes where it ended.
        let (first_worker, _) = threads[0];
        drop(held.remove(0));
        for _ in 0..100 {
            if workers.loads()[first_worker] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            workers.dispatch(|occupancy| async move {
                std::future::pending::<()>().await;
                drop(occupancy)
            }),
            first_worker
        );
    }
}
