//! `portico events tail`: prints the user events in the JetStream stream, oldest first, one JSON line each,
//! then follows new ones. It reads through an ordered consumer that the server forgets when it ends.

use std::io::Write;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::STREAM;

/// Why `events tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot open the JetStream stream {STREAM}: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot read the stream: {0}")]
    Consumer(String),
    #[error("cannot write to standard output: {0}")]
    Output(#[from] std::io::Error),
}

/// Writes every event of the stream to `out`, one line per event, until the connection ends or `limit`
/// events were written. Fails when NATS cannot be reached or the stream does not exist (no relay ran yet).
pub async fn tail(nats_url: &str, limit: Option<u64>, out: &mut (dyn Write + Send)) -> Result<(), TailError> {
    let client = async_nats::connect(nats_url).await?;
    let stream = jetstream::new(client).get_stream(STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| TailError::Consumer(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| TailError::Consumer(e.to_string()))?;
    let mut written = 0;
    while limit.is_none_or(|limit| written < limit) {
        let Some(message) = messages.next().await else { break };
        let message = message.map_err(|e| TailError::Consumer(e.to_string()))?;
        out.write_all(&message.payload)?;
        out.write_all(b"\n")?;
        out.flush()?;
        written += 1;
    }
    Ok(())
}
