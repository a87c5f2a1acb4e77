//! `portico events tail`: prints the user events in the JetStream stream, oldest first, one JSON line each,
//! then follows new ones. It reads through an ordered consumer that the server forgets when it ends.
//!
//! `--since` starts after a revision, found by [`start::after_revision`] (a stream sequence is not a
//! revision); `--type` reads one subject. Each revision is printed at most once and in increasing order: a
//! copy that the relay re-published beyond the stream's duplicate window, or anything at or below `--since`,
//! is skipped, so a script can rely on the order whatever the stream holds.

use std::io::Write;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::start::{self, revision_of};
use super::{STREAM, subject};
use crate::user_service::store::ChangeKind;

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
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot open the JetStream stream {STREAM}: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot read the stream: {0}")]
    Read(String),
    #[error("message {sequence} of the stream has no revision in Nats-Msg-Id: the relay did not publish it")]
    NotAnEvent { sequence: u64 },
    #[error("cannot write to standard output: {0}")]
    Output(#[from] std::io::Error),
}

/// Writes the events that `options` select to `out`, one line per event, until the connection ends or
/// `options.limit` events were written. Fails when NATS cannot be reached, the stream does not exist (no relay
/// ran yet) or holds a message the relay did not publish, or `out` cannot be written.
pub async fn tail(nats_url: &str, options: TailOptions, out: &mut (dyn Write + Send)) -> Result<(), TailError> {
    let client = async_nats::connect(nats_url).await?;
    let mut stream = jetstream::new(client).get_stream(STREAM).await?;
    let deliver_policy = if options.since > 0 {
        let start = start::after_revision(&mut stream, options.since).await?;
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
        filter_subject: options.kind.map(subject).unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| TailError::Read(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| TailError::Read(e.to_string()))?;
    let (mut written, mut last) = (0, options.since);
    while options.limit.is_none_or(|limit| written < limit) {
        let Some(message) = messages.next().await else { break };
        let message = message.map_err(|e| TailError::Read(e.to_string()))?;
        let sequence = message.info().map_err(|e| TailError::Read(e.to_string()))?.stream_sequence;
        let revision = revision_of(sequence, message.headers.as_ref())?;
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
