//! The UserService: the backing gRPC service, with durable storage, validation, pagination, filters and a live
//! change feed. [`serve`] runs it with grpc.health.v1 and server reflection on one listener.

mod auth;
mod config;
mod error;
mod events;
pub mod filter;
mod layers;
pub mod page_token;
pub mod password;
pub mod relay;
mod service;
pub mod store;
mod stream_reset;
mod tls;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use config::UserServiceConfig;
pub use events::FeedConfig;
pub use layers::{CallLog, CallLogLayer, LoggedBody, code_name};
pub use service::{DEFAULT_PAGE_SIZE, MAX_BATCH_ITEMS, MAX_PAGE_SIZE, UserServiceImpl};
pub use tls::ServiceTls;

use crate::auth::policy::Policy;
use crate::proto::user::user_service_server::UserServiceServer;
use crate::proto::{DESCRIPTOR_POOL, FILE_DESCRIPTOR_SET};
use crate::telemetry::store::ObservedStore;
use password::PasswordHasher;
use store::{Store, StoreError, StoreOptions};

/// The name the service reports under in grpc.health.v1.
pub const SERVICE_NAME: &str = "user.UserService";
/// No UserService message comes near this (a CreateUserRequest at its limits is under 8 KiB); a smaller cap
/// keeps a 1000-item batch from holding gigabytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::settings::ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("invalid password hashing parameters: {0}")]
    Hash(#[from] password::HashError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error(transparent)]
    Policy(#[from] crate::auth::policy::RuleError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the store and serves the UserService on `listener` until `shutdown` is cancelled, then drains
/// in-flight calls for at most `config.drain_timeout` (watches end at once with UNAVAILABLE).
///
/// Shutdown starts with `config.shutdown_grace` of "lame duck" service: health turns NOT_SERVING at once, but
/// calls are still served, so that load balancers (the gateway's health checks, a Kubernetes endpoint update)
/// stop sending work before the listener closes. Only then does the server stop accepting and drain.
///
/// Fails when the settings are invalid, the database cannot be opened or migrated, or the server cannot run.
pub async fn serve(
    config: &UserServiceConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    config.validate()?;
    let options = StoreOptions {
        change_log_window: config.change_log_window,
        max_connections: config.db_max_connections,
        retain_unpublished: config.nats_url.is_some(),
    };
    let store = store::open(&config.database_url, options).await?;
    crate::telemetry::store::observe_pools(store.pool_gauges());
    let system = if store::is_postgres_url(&config.database_url) { "postgresql" } else { "sqlite" };
    let store: Arc<dyn Store> = Arc::new(ObservedStore::new(store, system));
    let hasher = PasswordHasher::new(config.password_hash_cost)?;
    // Health follows `shutdown`; everything else stops only after the grace period.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (shutdown, stop, grace) = (shutdown.clone(), stop.clone(), config.shutdown_grace);
        async move {
            shutdown.cancelled().await;
            if !grace.is_zero() {
                tracing::info!(?grace, "shutting down: NOT_SERVING, still serving calls for the grace period");
                tokio::time::sleep(grace).await;
            }
            stop.cancel();
        }
    });
    let feed = events::ChangeFeed::start(Arc::clone(&store), config.feed, stop.clone()).await?;
    observe_change_log(&feed, config.change_log_window, config.nats_url.is_none());
    if let Some(nats_url) = &config.nats_url {
        let relay = relay::RelayConfig {
            nats: relay::NatsTarget {
                url: nats_url.clone(),
                auth: config.nats_auth.clone(),
                tls: config.nats_tls.clone(),
            },
            names: config.events.clone(),
            poll_interval: config.feed.poll_interval,
            backlog: relay::BacklogConfig {
                warn_above: config.events_backlog_warn,
                check_interval: config.health_check_interval,
            },
        };
        tokio::spawn(relay::run(Arc::clone(&store), relay, stop.clone()));
    }
    let service = UserServiceImpl::new(Arc::clone(&store), hasher, feed);
    let (service, authenticate) = match &config.auth {
        Some(auth) => {
            let verifier = crate::auth::Verifier::start(auth).await?;
            let policy = Arc::new(Policy::from_pool(&DESCRIPTOR_POOL)?);
            let layer = auth::AuthenticateLayer::new(verifier, config.auth_reflection);
            (auth::Authorized::new(service, Some(policy)), Some(layer))
        }
        None => {
            tracing::info!("JWT authentication is off: every call is allowed (see --jwt-jwks)");
            (auth::Authorized::new(service, None), None)
        }
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Known before the first call arrives: health clients never see "service not registered".
    let initial = database_status(store.as_ref(), config.health_check_interval).await;
    set_health(&reporter, initial).await;
    tokio::spawn(report_database_health(store, reporter, initial, config.health_check_interval, shutdown.clone()));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let server = builder
        .layer(CallLogLayer)
        // Inside the call log, so refused calls are logged too.
        .layer(tower::util::option_layer(authenticate))
        .layer(stream_reset::ResetFailsStreamLayer::for_pool(&DESCRIPTOR_POOL))
        .add_service(
            UserServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(accepted_without_nagle(listener), stop.clone().cancelled_owned());

    let drain_deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(config.drain_timeout).await;
    };
    tokio::select! {
        result = server => Ok(result?),
        () = drain_deadline => {
            tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; closing remaining calls");
            Ok(())
        }
    }
}

/// The listener's connections with Nagle's algorithm off. tonic sets TCP_NODELAY only on listeners it binds
/// itself; on an accepted socket left with Nagle on, the second small write of a response (the trailers after
/// the headers and the message, when they go out in two writes) waits for the client's delayed ACK, and a call
/// now and then took 20–40 ms instead of well under one.
fn accepted_without_nagle(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The change log's head and size as gauges. Without a relay every write prunes the log to the last `window`
/// revisions, and revisions have no gaps, so its size follows from the head; with a relay the log also keeps
/// what is not published yet, and the relay reports that backlog instead.
fn observe_change_log(feed: &Arc<events::ChangeFeed>, window: u32, pruned_to_window: bool) {
    use crate::telemetry::metrics::gauge_fn;
    let head = Arc::downgrade(feed);
    gauge_fn("user_service_change_log_revision", "The latest committed revision", move || {
        head.upgrade().map(|feed| feed.head_revision())
    });
    if !pruned_to_window {
        return;
    }
    let size = Arc::downgrade(feed);
    gauge_fn("user_service_change_log_entries", "Changes kept in the change log for resumes", move || {
        size.upgrade().map(|feed| feed.head_revision().min(i64::from(window)))
    });
}

/// Keeps grpc.health.v1 in step with the database: SERVING while it answers, NOT_SERVING otherwise and from
/// the moment shutdown starts (so load balancers stop sending work during the drain).
async fn report_database_health(
    store: Arc<dyn Store>,
    reporter: HealthReporter,
    mut last: ServingStatus,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        let status = database_status(store.as_ref(), interval).await;
        if status != last {
            set_health(&reporter, status).await;
            last = status;
        }
    }
    set_health(&reporter, ServingStatus::NotServing).await;
}

async fn database_status(store: &dyn Store, interval: Duration) -> ServingStatus {
    match store.ping(interval.max(Duration::from_secs(1))).await {
        Ok(()) => ServingStatus::Serving,
        Err(error) => {
            tracing::warn!(%error, "database health check failed");
            ServingStatus::NotServing
        }
    }
}

/// The whole server ("") and the UserService share one status: the database is all they depend on.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let mut incoming = accepted_without_nagle(listener);
        let _client = tokio::net::TcpStream::connect(address).await?;
        let accepted = incoming.next().await.ok_or("the listener ended")??;
        assert!(accepted.nodelay()?, "TCP_NODELAY is set on the accepted socket");
        // What the listener would have given without it: Nagle on, the default this guards against.
        let plain = TcpListener::bind("127.0.0.1:0").await?;
        let _other = tokio::net::TcpStream::connect(plain.local_addr()?).await?;
        assert!(!plain.accept().await?.0.nodelay()?, "a plainly accepted socket starts with Nagle on");
        Ok(())
    }
}
