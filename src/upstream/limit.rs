//! The per-upstream bulkhead: at most `max_in_flight` calls at once, at most `max_queue` more waiting, each for
//! at most `max_queue_wait`. When the upstream slows down, requests beyond that are refused at once (503)
//! instead of piling up in memory and making every later request slower still.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bulkhead settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub max_queue_wait: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        // Envoy's circuit-breaker defaults for max requests and max pending requests.
        Self { max_in_flight: 1024, max_queue: 1024, max_queue_wait: Duration::from_secs(1) }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("the upstream has {in_flight} calls in flight and {queued} queued, the most allowed")]
    QueueFull { in_flight: usize, queued: usize },
    #[error("the upstream had no free slot within {0:?}")]
    QueueTimeout(Duration),
}

/// A call's slot; frees it when dropped.
pub type Slot = OwnedSemaphorePermit;

pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    /// `config.max_in_flight` as the semaphore can hold it.
    slots: usize,
    queued: AtomicUsize,
    config: LimitConfig,
}

/// The limit's state for the admin view.
#[derive(Debug, Clone, Serialize)]
pub struct LimitSnapshot {
    pub in_flight: usize,
    pub queued: usize,
    pub max_in_flight: usize,
    pub max_queue: usize,
}

impl ConcurrencyLimit {
    pub fn new(config: LimitConfig) -> Self {
        let slots = config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self { permits: Arc::new(Semaphore::new(slots)), slots, queued: AtomicUsize::new(0), config }
    }

    /// A slot for one call, waiting in the queue if all are taken: for at most `max_queue_wait`, and never
    /// past `deadline`.
    ///
    /// # Errors
    ///
    /// [`Overloaded`] when the queue is full, or no slot came free in time.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Slot, Overloaded> {
        if let Ok(slot) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(slot);
        }
        // Joining the queue is a reservation: count first, then check, so that concurrent callers cannot all
        // see room for one more.
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.queued);
        if queued >= self.config.max_queue {
            return Err(Overloaded::QueueFull { in_flight: self.config.max_in_flight, queued });
        }
        let mut wait = self.config.max_queue_wait;
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        match tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Overloaded::QueueTimeout(wait)),
        }
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        LimitSnapshot {
            in_flight: self.slots - self.permits.available_permits(),
            queued: self.queued.load(Ordering::Relaxed),
            max_in_flight: self.config.max_in_flight,
            max_queue: self.config.max_queue,
        }
    }
}

struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limit(max_in_flight: usize, max_queue: usize) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(LimitConfig { max_in_flight, max_queue, max_queue_wait: 100 * MS }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_a_waiter_gets_a_freed_slot() -> Result<(), Overloaded> {
        let limit = limit(1, 1);
        let first = limit.acquire(None).await?;
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire(None).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(limit.snapshot().queued, 1);
        // The queue holds one: the next is refused without waiting.
        let started = Instant::now();
        assert!(matches!(limit.acquire(None).await, Err(Overloaded::QueueFull { .. })));
        assert_eq!(started.elapsed(), Duration::ZERO);

        tokio::time::advance(50 * MS).await;
        drop(first);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
        assert_eq!(limit.snapshot().queued, 0);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_the_queue_wait_or_the_deadline() -> Result<(), Overloaded> {
        let limit = limit(1, 10);
        let _held = limit.acquire(None).await?;
        let started = Instant::now();
        assert_eq!(limit.acquire(None).await.err(), Some(Overloaded::QueueTimeout(100 * MS)));
        assert_eq!(started.elapsed(), 100 * MS);

        let started = Instant::now();
        let deadline = started + 30 * MS;
        assert_eq!(limit.acquire(Some(deadline)).await.err(), Some(Overloaded::QueueTimeout(30 * MS)));
        assert_eq!(started.elapsed(), 30 * MS);
        assert_eq!(limit.snapshot().queued, 0);
        assert_eq!(limit.snapshot().in_flight, 1);
        Ok(())
    }
}
