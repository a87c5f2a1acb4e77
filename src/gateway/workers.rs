//! The gateway's data plane: worker threads of their own (a tokio runtime apart from the one running health
//! checks, discovery, reloads and trace export) that serve the client connections, each thread calling
//! upstreams over its own lane of every endpoint's connection pool.
//!
//! Before the lanes, every call went through a single upstream HTTP/2 connection (the first of an endpoint's
//! pool, until it had 64 calls outstanding), driven by whichever thread had its task: when that thread was off
//! the CPU, every call in flight waited, which made the p99 of a loaded gateway ten times its p90 (README,
//! "Performance"). Now the calls made on a thread go out on connections that the thread itself opened.
//!
//! Two ways to share the threads ([`Scheduling`]):
//! - **Shared** (the default): one work-stealing runtime. An idle thread takes work queued on a busy one, so a
//!   thread waiting for the CPU holds up nobody else's requests. Stealing has its price: a thread that queues
//!   work wakes an idle one, and a request's task, its upstream connection's task and the memory they touch
//!   move between cores (some 2–4 µs of CPU per request on two cores, README "Performance").
//! - **Pinned** (`--pin-connections`): one single-threaded runtime per thread, each new connection given to
//!   the thread serving the fewest and kept there, Envoy's and nginx's model. A request then lives on one
//!   thread from the client's socket to the upstream's and back. It is cheaper, but a thread waiting for the
//!   CPU stalls every connection it owns: on cores shared with other busy processes that tail was measured at
//!   35 ms on one machine and in one round of thirteen on another, so it is for a gateway with cores of its
//!   own. The accept loop runs on the first thread, so a stall there delays new connections too.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::upstream::pool;

/// The number of worker threads when none is configured: one per CPU the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// How the worker threads share the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// One work-stealing runtime: any thread serves any connection.
    #[default]
    Shared,
    /// One single-threaded runtime per thread: a connection stays on the thread that took it.
    Pinned,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the gateway's worker threads or listener: {0}")]
pub struct StartError(#[from] std::io::Error);

/// The running data plane. Dropping it ends it, cancelling whatever it still runs (the accept loop drops it
/// only after the drain). The accept loop holds only [`Connections`], which keeps nothing running: so dropping
/// the caller of the loop (and with it this) ends the loop too.
pub struct Workers {
    threads: Threads,
    connections: Connections,
}

/// What keeps the threads running.
enum Threads {
    Shared(Option<Runtime>),
    /// Each thread runs until its stop sender is dropped (with `self`).
    Pinned {
        _stops: Vec<oneshot::Sender<()>>,
    },
}

/// Where accepted connections go: a cheap handle to the threads, for the accept loop.
#[derive(Clone)]
pub struct Connections(Arc<Placement>);

enum Placement {
    Shared(Handle),
    Pinned { threads: Box<[PinnedThread]>, next: AtomicUsize },
}

struct PinnedThread {
    handle: Handle,
    /// Connections the thread is serving now.
    load: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `portico-worker`; the N-th thread uses lane N of
    /// every upstream connection pool.
    ///
    /// # Errors
    ///
    /// Threads that cannot be created (out of memory or threads).
    pub fn start(count: usize, scheduling: Scheduling) -> Result<Self, StartError> {
        let count = count.max(1);
        match scheduling {
            Scheduling::Shared => {
                let started = Arc::new(AtomicUsize::new(0));
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(count)
                    .thread_name("portico-worker")
                    .on_thread_start(move || {
                        // The worker threads start first, so they have one lane each.
                        pool::assign_thread_lane(started.fetch_add(1, Ordering::Relaxed) % count);
                    })
                    .enable_all()
                    .build()?;
                let connections = Connections(Arc::new(Placement::Shared(runtime.handle().clone())));
                Ok(Self { threads: Threads::Shared(Some(runtime)), connections })
            }
            Scheduling::Pinned => {
                let (mut stops, mut threads) = (Vec::with_capacity(count), Vec::with_capacity(count));
                for lane in 0..count {
                    let (stop, thread) = start_pinned(lane)?;
                    stops.push(stop);
                    threads.push(thread);
                }
                let placement = Placement::Pinned { threads: threads.into(), next: AtomicUsize::new(0) };
                Ok(Self { threads: Threads::Pinned { _stops: stops }, connections: Connections(Arc::new(placement)) })
            }
        }
    }

    /// Runs `task` (the accept loop) on the workers: pinned, on the first thread.
    pub fn spawn<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
        match &*self.connections.0 {
            Placement::Shared(handle) => handle.spawn(task),
            Placement::Pinned { threads, .. } => threads[0].handle.spawn(task),
        }
    }

    /// Where the accept loop sends the connections it accepts.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }
}

impl Connections {
    /// Serves an accepted connection: `serve` runs on the workers with the stream registered where it will be
    /// read. Pinned, the connection goes to the thread serving the fewest, which counts it for as long as the
    /// [`Occupancy`] given to `serve` lives: `serve` moves it into whatever task ends with the connection.
    pub fn serve<F, S>(&self, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream, Occupancy) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        match &*self.0 {
            Placement::Shared(handle) => {
                handle.spawn(serve(stream, Occupancy(None)));
            }
            Placement::Pinned { threads, next } => {
                // The socket leaves the accepting thread's reactor and joins its own thread's.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => return tracing::debug!(%error, "cannot hand an accepted connection over"),
                };
                let start = next.fetch_add(1, Ordering::Relaxed);
                let index = (0..threads.len())
                    .map(|offset| (start + offset) % threads.len())
                    .min_by_key(|&index| threads[index].load.load(Ordering::Relaxed))
                    .unwrap_or(0);
                let thread = &threads[index];
                let occupancy = Occupancy::counted(&thread.load);
                thread.handle.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream, occupancy).await,
                        Err(error) => tracing::debug!(%error, "cannot register an accepted connection"),
                    }
                });
            }
        }
    }

    /// Connections each pinned thread is serving now (empty when the threads are shared).
    #[cfg(test)]
    fn loads(&self) -> Vec<usize> {
        match &*self.0 {
            Placement::Shared(_) => Vec::new(),
            Placement::Pinned { threads, .. } => threads.iter().map(|t| t.load.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// A thread with a single-threaded runtime of its own, running until the returned sender is dropped.
fn start_pinned(lane: usize) -> Result<(oneshot::Sender<()>, PinnedThread), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new().name("portico-worker".into()).spawn(move || {
        pool::assign_thread_lane(lane);
        let _ = runtime.block_on(stopped);
        // Cancels the tasks it still holds, without waiting for blocking work (a DNS lookup) to finish.
        runtime.shutdown_background();
    })?;
    Ok((stop, PinnedThread { handle, load: Arc::new(AtomicUsize::new(0)) }))
}

/// One connection counted on its pinned thread, until dropped (when the connection ends, or is cancelled with
/// the thread's runtime). Counts nothing when the threads are shared.
pub struct Occupancy(Option<Arc<AtomicUsize>>);

impl Occupancy {
    fn counted(load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        Self(Some(Arc::clone(load)))
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        if let Some(load) = &self.0 {
            load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Without waiting: the caller is usually a task of another runtime, which must not block. Pinned
        // threads end when their stop senders drop with `self`.
        if let Threads::Shared(runtime) = &mut self.threads
            && let Some(runtime) = runtime.take()
        {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Barrier;
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn shared_jobs_run_on_the_worker_threads_each_with_a_lane_of_its_own() {
        let workers = Workers::start(2, Scheduling::Shared).expect("workers start");
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

    /// Accepts `count` connections from `listener` (each opened from here) and hands them to `workers`. As the
    /// server does, each job starts the connection's own task and returns; that task reports its thread's lane
    /// and holds the connection, and its occupancy, until `release` is dropped.
    async fn serve_held(
        workers: &Workers,
        listener: &TcpListener,
        count: usize,
        release: &tokio::sync::watch::Receiver<()>,
    ) -> (Vec<TcpStream>, Vec<usize>) {
        let addr = listener.local_addr().expect("bound");
        let mut clients = Vec::new();
        let mut lanes = Vec::new();
        for _ in 0..count {
            clients.push(TcpStream::connect(addr).await.expect("connects"));
            let (stream, _) = listener.accept().await.expect("accepts");
            let (report, reported) = oneshot::channel();
            let mut release = release.clone();
            workers.connections().serve(stream, move |stream, occupancy| async move {
                tokio::spawn(async move {
                    let _ = report.send((std::thread::current().name().map(str::to_owned), pool::thread_lane()));
                    let _ = release.changed().await;
                    drop((stream, occupancy));
                });
            });
            let (thread, lane) = reported.await.expect("the connection was served");
            assert_eq!(thread.as_deref(), Some("portico-worker"));
            lanes.push(lane.expect("a worker thread has a lane"));
        }
        (clients, lanes)
    }

    #[tokio::test]
    async fn pinned_connections_go_to_the_thread_serving_the_fewest_and_count_there_until_they_end() {
        let workers = Workers::start(2, Scheduling::Pinned).expect("workers start");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let (release, held) = tokio::sync::watch::channel(());

        let (_clients, lanes) = serve_held(&workers, &listener, 4, &held).await;
        let mut by_lane = [0, 0];
        for lane in lanes {
            by_lane[lane] += 1;
        }
        assert_eq!(by_lane, [2, 2], "four connections, two on each thread");
        assert_eq!(workers.connections().loads(), [2, 2]);

        // Ended connections stop counting, so the threads take new ones again.
        drop(release);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while workers.connections().loads() != [0, 0] {
            assert!(tokio::time::Instant::now() < deadline, "loads stayed at {:?}", workers.connections().loads());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Dropped from inside a runtime, the threads end, cancelling the connections they still serve.
        let (ended, on_end) = oneshot::channel::<()>();
        let stream = TcpStream::connect(listener.local_addr().expect("bound")).await.expect("connects");
        let (accepted, _) = listener.accept().await.expect("accepts");
        let connections = workers.connections();
        connections.serve(accepted, move |_stream, _occupancy| async move {
            let _ended = ended;
            std::future::pending::<()>().await;
        });
        // The accept loop's handle on the threads keeps none of them running.
        drop(workers);
        assert!(on_end.await.is_err(), "the connection was dropped with the workers");
        drop(stream);
    }
}
