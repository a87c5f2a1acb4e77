//! `portico events tail`: prints the user events in the JetStream stream, oldest first, one JSON line each,
//! then follows new ones. It reads through an ordered consumer that the server forgets when it ends.
//!
//! `--since` starts after a revision, found by [`start::after_revision`] (a stream sequence is not a
//! revision); `--type` reads one subject. Each revision is printed at most once and in increasing order: a
//! copy that the relay re-published beyond the stream's duplicate window, or anything at or below `--since`,
//! is skipped, so a script can rely on the order whatever the stream holds.
//!
//! Gaps are reported on standard error (the log): events older than `--since` + 1 that are no longer in the
//! stream, and a stream that stopped behind the change log: when the newest event says (in its
//! [`backlog::HEADER`]) that more changes were waiting to be published, and none arrives for
//! [`STALL_WARNING`].

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::nats::{NatsConnectError, NatsTarget};
use super::start::{self, revision_of};
use super::{EventNames, backlog};
use crate::user_service::store::ChangeKind;

/// How long the stream may stay quiet, behind the change log, before `events tail` says so.
pub const STALL_WARNING: Duration = Duration::from_secs(5);
/// How long connecting to NATS may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which events `events tail` prints, and how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailOptions {
    /// Only events with revisions above this one (0: from the oldest in the stream). Like a watch's
    /// `since_revision`: pass the last revision already processed.
    pub since: i64,
    /// Only events of this kind (one subject); `None`: every kind.
    pub kind: Option<ChangeKind>,
    /// Stop after this many events; `None`: follow until interrupted.
    pub limit: Option<u64>,
}

/// Why `events tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    #[error("cannot open the JetStream stream {stream}: {source}")]
    Stream { stream: String, source: jetstream::context::GetStreamError },
    #[error("cannot read the stream: {0}")]
    Read(String),
    #[error("message {sequence} of the stream has no revision in Nats-Msg-Id: the relay did not publish it")]
    NotAnEvent { sequence: u64 },
    #[error("cannot write to standard output: {0}")]
    Output(#[from] std::io::Error),
}

/// Writes the events that `options` select from the stream `names` gives to `out`, one line per event, until
/// the connection ends or `options.limit` events were written. Fails when NATS cannot be reached or refuses the
/// credentials, the stream does not exist (no relay ran yet) or holds a message the relay did not publish, or
/// `out` cannot be written.
pub async fn tail(
    nats: &NatsTarget,
    names: &EventNames,
    options: TailOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), TailError> {
    let client = nats.connect(CONNECT_TIMEOUT).await?;
    let mut stream = jetstream::new(client)
        .get_stream(names.stream())
        .await
        .map_err(|source| TailError::Stream { stream: names.stream().to_owned(), source })?;
    let deliver_policy = if options.since > 0 {
        let start = start::after_revision(&mut stream, &names.subjects(), options.since).await?;
        if let Some(oldest) = start.oldest.filter(|oldest| *oldest > options.since + 1) {
            tracing::warn!(
                since = options.since,
                oldest,
                "events between the requested revision and the oldest one in the stream are no longer in it"
            );
        }
        consumer::DeliverPolicy::ByStartSequence { start_sequence: start.sequence }
    } else {
        consumer::DeliverPolicy::All
    };
    let config = consumer::pull::OrderedConfig {
        deliver_policy,
        filter_subject: options.kind.map(|kind| names.subject(kind)).unwrap_or_default(),
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| TailError::Read(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| TailError::Read(e.to_string()))?;
    let (mut written, mut last) = (0, options.since);
    // Set while the newest event read is the last in the stream and says more changes were waiting.
    let mut behind: Option<(i64, u64)> = None;
    while options.limit.is_none_or(|limit| written < limit) {
        let next = match behind {
            None => messages.next().await,
            Some((revision, backlog)) => match tokio::time::timeout(STALL_WARNING, messages.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!(
                        revision,
                        backlog,
                        quiet = ?STALL_WARNING,
                        "the stream is behind the change log: when the relay published this revision, this many \
                         later changes were waiting, and none arrived since (is NATS reachable from the \
                         UserService, is a relay running?)"
                    );
                    behind = None;
                    continue;
                }
            },
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| TailError::Read(e.to_string()))?;
        let info = message.info().map_err(|e| TailError::Read(e.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let revision = revision_of(sequence, message.headers.as_ref())?;
        let waiting = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(backlog::HEADER))
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .unwrap_or(0);
        behind = (pending == 0 && waiting > 0).then_some((revision, waiting));
        if revision <= last {
            continue;
        }
        out.write_all(&message.payload)?;
        out.write_all(b"\n")?;
        out.flush()?;
        (written, last) = (written + 1, revision);
    }
    Ok(())
}
