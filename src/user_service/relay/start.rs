//! Where in the stream the events after a revision begin.
//!
//! A stream sequence is not a revision: the stream numbers what it stored, and what it stored can differ from
//! the change log. JetStream drops a re-published copy without giving it a sequence; changes pruned before a
//! relay ever ran were never published; a stream created anew, purged or limited by age starts at a revision
//! above 1. So `--since` cannot become a sequence by arithmetic. The stream holds the events in revision order
//! (the relay publishes one change only after the previous one was acknowledged), so a binary search over
//! sequences, reading the revision of each probed message from its `Nats-Msg-Id`, finds the first event after
//! the revision in a few dozen requests, however long the stream. A consumer then starts there.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};

use super::tail::TailError;

/// Where a tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Start {
    /// The first stream sequence to read: the first event with a revision above the requested one, or the
    /// sequence the next event will get.
    pub sequence: u64,
    /// The revision of the oldest event still in the stream, if any (to tell that older ones are gone).
    pub oldest: Option<i64>,
}

/// The revision a relay's message carries in its `Nats-Msg-Id` header.
///
/// Fails with [`TailError::NotAnEvent`] for a message without one, which the relay did not publish.
pub(super) fn revision_of(sequence: u64, headers: Option<&async_nats::HeaderMap>) -> Result<i64, TailError> {
    headers
        .and_then(|headers| headers.get("Nats-Msg-Id"))
        .and_then(|id| id.as_str().parse().ok())
        .ok_or(TailError::NotAnEvent { sequence })
}

/// The sequence and revision of the first event at or after `sequence`; `None` past the last one.
async fn event_at_or_after(stream: &Stream, subjects: &str, sequence: u64) -> Result<Option<(u64, i64)>, TailError> {
    match stream.get_first_raw_message_by_subject(subjects, sequence).await {
        Ok(StreamMessage { sequence, headers, .. }) => Ok(Some((sequence, revision_of(sequence, Some(&headers))?))),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(TailError::Read(error.to_string())),
    }
}

/// Finds where the events with revisions above `since` begin in `stream`, whose events are on `subjects`.
///
/// Fails when the stream cannot be read or holds a message without a revision.
pub(super) async fn after_revision(stream: &mut Stream, subjects: &str, since: i64) -> Result<Start, TailError> {
    let state = stream.info().await.map_err(|e| TailError::Read(e.to_string()))?.state.clone();
    let end = state.last_sequence + 1;
    if state.messages == 0 {
        return Ok(Start { sequence: end, oldest: None });
    }
    let oldest = event_at_or_after(stream, subjects, state.first_sequence).await?;
    let Some((first, oldest_revision)) = oldest else { return Ok(Start { sequence: end, oldest: None }) };
    // The smallest sequence whose next event lies after `since` (or `end`, when none does): the predicate
    // holds from some point on, because revisions grow with sequences.
    let (mut low, mut high) = (first, end);
    while low < high {
        let middle = low + (high - low) / 2;
        match event_at_or_after(stream, subjects, middle).await? {
            Some((_, revision)) if revision > since => high = middle,
            Some((sequence, _)) => low = sequence + 1,
            None => high = middle,
        }
    }
    Ok(Start { sequence: low, oldest: Some(oldest_revision) })
}
