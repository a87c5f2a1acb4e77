//! LISTEN/NOTIFY wake-ups for the change feed: how a replica learns, within milliseconds, that another
//! replica committed a change.
//!
//! One task per store holds one dedicated connection that `LISTEN`s on [`CHANNEL`]; every writing transaction
//! runs `pg_notify` on it, which PostgreSQL delivers at commit. A notification carries no data the feed relies
//! on: it only says "read the change log after the last revision you read". That makes a lost connection
//! harmless. Notifications sent while it was down are gone, so after every (re)connection, once `LISTEN` is in
//! effect again, the task wakes the feed once more: that read finds whatever was committed in between, and
//! anything committed later is notified. The feed never skips a revision; at worst it reads once for nothing.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;

/// The notification channel every writer notifies and every replica listens on.
pub(super) const CHANNEL: &str = "portico_user_changes";
/// The listener's connection shows under this name in `pg_stat_activity`.
pub(super) const APPLICATION_NAME: &str = "portico-listener";

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(5);

/// Listens until aborted, bumping `wake` on every notification and after every (re)connection.
pub(super) async fn run(options: PgConnectOptions, wake: watch::Sender<u64>) {
    let mut retry = FIRST_RETRY;
    loop {
        match subscribe(&options).await {
            Ok(mut listener) => {
                retry = FIRST_RETRY;
                bump(&wake);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => bump(&wake),
                        // sqlx has already reconnected and listens again ("eager reconnect"): catch up.
                        Ok(None) => {
                            tracing::warn!("change listener lost its connection and reconnected; catching up");
                            bump(&wake);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "change listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, ?retry, "change listener cannot connect; retrying"),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(LONGEST_RETRY);
    }
}

/// A listener on a pool of its own, so it never takes a connection from the store's queries.
async fn subscribe(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn bump(wake: &watch::Sender<u64>) {
    wake.send_modify(|count| *count = count.wrapping_add(1));
}
