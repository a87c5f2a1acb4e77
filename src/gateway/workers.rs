//! The gateway's data plane: a tokio runtime of its own whose worker threads serve the client connections,
//! each thread calling upstreams over its own lane of every endpoint's connection pool.
//!
//! Before, every call went through a single upstream HTTP/2 connection (the first of an endpoint's pool, until
//! it had 64 calls outstanding), driven by whichever thread had its task: when that thread was off the CPU,
//! every call in flight waited, which made the p99 of a loaded gateway ten times its p90 (README,
//! "Performance"). Now each worker thread takes connections from its own lane, so the calls made on a thread
//! go out on connections that the thread itself opened, and a thread that stalls holds up only its own.
//!
//! The threads share one work-stealing scheduler rather than each owning its connections outright (Envoy's
//! and nginx's model). Pinned threads were measured too: cheaper per request on idle cores, but on a machine
//! whose cores are shared with other busy processes (a sidecar's normal case, and the benchmark's) a pinned
//! thread waiting for the CPU stalls all of its connections, and the p99 went back to 30 ms; with stealing, an
//! idle thread takes the waiting work.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::upstream::pool;

/// The number of worker threads when none is configured: one per CPU the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the gateway's worker threads or listener: {0}")]
pub struct StartError(#[from] std::io::Error);

/// The running data plane. Dropping it ends it, cancelling whatever it still runs (the accept loop drops it
/// only after the drain).
pub struct Workers {
    runtime: Option<Runtime>,
    /// Spawns onto the runtime for as long as it runs.
    handle: Handle,
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `portico-worker`; the N-th thread started uses
    /// lane N (modulo `count`) of every upstream connection pool, so the worker threads, which start first,
    /// have one each.
    ///
    /// # Errors
    ///
    /// Threads that cannot be created (out of memory or threads).
    pub fn start(count: usize) -> Result<Self, StartError> {
        let count = count.max(1);
        let started = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(count)
            .thread_name("portico-worker")
            .on_thread_start(move || pool::assign_thread_lane(started.fetch_add(1, Ordering::Relaxed) % count))
            .enable_all()
            .build()?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Runs `task` on the workers.
    pub fn spawn<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
        self.handle.spawn(task)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Without waiting: the caller is usually a task of another runtime, which must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Barrier;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_worker_threads_each_with_a_lane_of_its_own() {
        let workers = Workers::start(2).expect("workers start");
        // Two jobs that wait for each other (blocking their threads) must run on both worker threads at once.
        let barrier = Arc::new(Barrier::new(2));
        let mut reports = Vec::new();
        for _ in 0..2 {
            let (report, reported) = oneshot::channel();
            let barrier = Arc::clone(&barrier);
            workers.spawn(async move {
                barrier.wait();
                let _ = report.send((std::thread::current().name().map(str::to_owned), pool::thread_lane()));
            });
            reports.push(reported);
        }
        let mut lanes = HashSet::new();
        for reported in reports {
            let (thread, lane) = reported.await.expect("the job ran");
            assert_eq!(thread.as_deref(), Some("portico-worker"));
            lanes.insert(lane.expect("a worker thread has a lane"));
        }
        assert_eq!(lanes, HashSet::from([0, 1]), "each worker thread has its own lane");

        // Dropped from inside a runtime (as the accept loop drops it), it ends its jobs without blocking.
        let (_keep, never) = oneshot::channel::<()>();
        let (ended, on_end) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _ended = ended;
            let _ = never.await;
        });
        drop(workers);
        assert!(on_end.await.is_err(), "the job was dropped with the workers");
    }
}
