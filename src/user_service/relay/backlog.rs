//! The unpublished backlog: changes committed but not yet acknowledged by JetStream (the head revision minus
//! the published mark). grpc.health.v1 cannot carry details and the UserService has no status endpoint, so it
//! shows in two places:
//!
//! - the log of every process with a relay configured (whether or not it holds the lease): a warning when the
//!   backlog grows past `--events-backlog-warn`, repeated every minute while it stays there, and a note when it
//!   is back under;
//! - each published event's [`HEADER`]: how many changes were still waiting behind it, which `events tail`
//!   reports when the stream then stops growing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::user_service::store::{Store, StoreError};

/// Header of each published event: changes committed after it that were not published yet when it was.
pub const HEADER: &str = "Portico-Backlog";
/// How often the warning repeats while the backlog stays above the threshold.
const REPEAT: Duration = Duration::from_secs(60);

/// When and how often the backlog is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogConfig {
    /// Warn while more than this many changes wait.
    pub warn_above: u64,
    /// How often to read the head revision and the mark.
    pub check_interval: Duration,
}

/// The backlog as the store sees it now.
///
/// Fails when the head revision or the mark cannot be read.
pub async fn backlog(store: &dyn Store) -> Result<u64, StoreError> {
    let head = store.head_revision().await?;
    let published = store.published_revision().await?;
    Ok(u64::try_from(head - published).unwrap_or(0))
}

/// Checks the backlog every `config.check_interval` until `shutdown`, logging as the module comment says.
pub async fn monitor(store: Arc<dyn Store>, config: BacklogConfig, shutdown: CancellationToken) {
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.check_interval) => {}
        }
        let backlog = match backlog(store.as_ref()).await {
            Ok(backlog) => backlog,
            Err(error) => {
                tracing::warn!(%error, "cannot read the outbox backlog");
                continue;
            }
        };
        if backlog > config.warn_above {
            if warned.is_none_or(|at| at.elapsed() >= REPEAT) {
                tracing::warn!(
                    backlog,
                    threshold = config.warn_above,
                    "outbox backlog: committed changes not yet published to NATS"
                );
                warned = Some(Instant::now());
            }
        } else if warned.take().is_some() {
            tracing::info!(backlog, threshold = config.warn_above, "outbox backlog back under the threshold");
        }
    }
}
