//! The outbox relay: publishes the change log to NATS JetStream, in revision order, as CloudEvents.
//!
//! The change log is the outbox: a change and its log row commit together, and the relay reads the log by
//! revision, like watchers do. Each change is published to `<prefix>.created|updated|deleted` (see
//! [`EventNames`]) with `Nats-Msg-Id` = its revision, and the relay waits for JetStream's acknowledgement
//! before it publishes the next one, so the stream holds the changes in revision order. Only then does the
//! published mark in the database move forward. A relay that stops between an acknowledgement and the mark publishes that change
//! again when it (or another) resumes; JetStream drops the copy, since the stream de-duplicates by message id
//! within its duplicate window.
//!
//! One relay runs at a time among the processes sharing a database: each process's relay tries to take the
//! store's lease ([`crate::user_service::store::RelayLease`]), publishes while it holds it, and the others
//! retry every few seconds, so a relay whose process dies is replaced.
//!
//! Every process with a relay also watches the unpublished backlog ([`backlog`]), lease or not.

pub mod backlog;
mod cloudevent;
mod names;
mod nats;
mod start;
mod tail;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tokio_util::sync::CancellationToken;

pub use backlog::BacklogConfig;
pub use cloudevent::{CloudEvent, SOURCE, event_type};
pub use names::{DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, EventNames, NameError};
pub use nats::{NatsAuth, NatsConnectError, NatsTarget, NatsTls, Secret};
pub use tail::{STALL_WARNING, TailError, TailOptions, tail};

use crate::user_service::store::{Store, StoreError, poll_interval, wait_for_commit};
/// How long JetStream remembers message ids to drop duplicates: longer than any stop between an
/// acknowledgement and the mark.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How often a relay without the lease tries to take it, and how long it waits after a failure.
const RETRY: Duration = Duration::from_secs(2);
/// Changes read from the log per query.
const PAGE: u32 = 500;
/// How long one publish may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to NATS may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how often the relay publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The NATS server (with JetStream enabled) and how to log in.
    pub nats: NatsTarget,
    /// The subjects and the stream.
    pub names: EventNames,
    /// How often to look for new changes when the store cannot notify (SQLite).
    pub poll_interval: Duration,
    pub backlog: BacklogConfig,
}

/// Why a relay stopped publishing (it retries after [`RETRY`]).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("cannot read or mark the change log: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    #[error("cannot create the JetStream stream: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("cannot publish revision {revision}: {reason}")]
    Publish { revision: i64, reason: String },
    #[error("cannot encode revision {revision}: {source}")]
    Encode { revision: i64, source: serde_json::Error },
    #[error("the relay lease was lost")]
    LeaseLost,
}

/// Runs the relay until `shutdown` is cancelled: takes the lease when it is free and publishes while it holds
/// it; failures are logged and retried. Watches the backlog meanwhile.
pub async fn run(store: Arc<dyn Store>, config: RelayConfig, shutdown: CancellationToken) {
    tokio::join!(
        backlog::monitor(Arc::clone(&store), config.backlog, shutdown.clone()),
        relay(store, config, shutdown)
    );
}

async fn relay(store: Arc<dyn Store>, config: RelayConfig, shutdown: CancellationToken) {
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = lead(store.as_ref(), &config) => outcome,
        };
        match outcome {
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "outbox relay stopped; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Publishes for as long as this process holds the lease. `Ok` when another process holds it.
async fn lead(store: &dyn Store, config: &RelayConfig) -> Result<(), RelayError> {
    let Some(mut lease) = store.try_relay_lease().await? else { return Ok(()) };
    let client = config.nats.connect(CONNECT_TIMEOUT).await?;
    let jetstream = jetstream::new(client);
    jetstream
        .get_or_create_stream(stream::Config {
            name: config.names.stream().to_owned(),
            subjects: vec![config.names.subjects()],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
    let mut notifications = store.change_notifications();
    let poll_interval = poll_interval(notifications.as_ref(), config.poll_interval);
    let mut published = store.published_revision().await?;
    let metrics = crate::telemetry::metrics::relay();
    metrics.published_revision.set(published);
    tracing::info!(
        published,
        nats = %config.nats.redacted_url(),
        stream = config.names.stream(),
        "outbox relay holds the lease; publishing"
    );
    loop {
        if !lease.still_held().await {
            return Err(RelayError::LeaseLost);
        }
        let changes = match store.changes_after(published, PAGE).await {
            Ok(changes) => changes,
            Err(StoreError::RevisionCompacted { oldest, .. }) => {
                // Only changes from before a relay was ever configured can be pruned unpublished (the log keeps
                // unpublished changes while one is): they are gone, and saying so is all that is left.
                tracing::error!(published, oldest, "changes before the relay was configured were never published");
                published = oldest - 1;
                store.mark_published(published).await?;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        // Read after the page, so it is at least the page's last revision.
        let head = store.head_revision().await?;
        if changes.is_empty() {
            tokio::select! {
                () = wait_for_commit(&mut notifications) => {}
                () = tokio::time::sleep(poll_interval) => {}
            }
            continue;
        }
        for change in &changes {
            let revision = change.revision;
            let payload = cloudevent::encode(change).map_err(|source| RelayError::Encode { revision, source })?;
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(revision.to_string())
                .header(backlog::HEADER, (head.max(revision) - revision).to_string());
            let acknowledged = async {
                let subject = config.names.subject(change.kind);
                let ack = jetstream.send_publish(subject, message).await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(ACK_TIMEOUT, ack.into_future()).await {
                    Ok(result) => result.map(drop).map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no acknowledgement within {ACK_TIMEOUT:?}")),
                }
            };
            if let Err(reason) = acknowledged.await {
                metrics.failed.inc();
                // What was acknowledged stays acknowledged: keep it, so the next relay starts after it.
                store.mark_published(published).await?;
                metrics.published_revision.set(published);
                return Err(RelayError::Publish { revision, reason });
            }
            published = revision;
            metrics.published.inc();
        }
        store.mark_published(published).await?;
        metrics.published_revision.set(published);
    }
}
