//! The UserService's settings, validated. `config.rs` builds them from flags; code embedding the service builds
//! them directly, and [`serve`](super::serve) checks them either way.

use std::time::Duration;

use crate::auth::AuthConfig;
use crate::settings::ConfigError;
use crate::user_service::password::HashCost;
use crate::user_service::relay::{EventNames, NatsAuth, NatsTls};
use crate::user_service::store::is_postgres_url;
use crate::user_service::{FeedConfig, ServiceTls};

/// The UserService's settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct UserServiceConfig {
    pub database_url: String,
    /// PostgreSQL's pool size.
    pub db_max_connections: u32,
    /// Where the outbox relay publishes; `None`: no relay.
    pub nats_url: Option<String>,
    /// How the relay logs in to NATS.
    pub nats_auth: NatsAuth,
    pub nats_tls: NatsTls,
    /// The relay's subjects and stream.
    pub events: EventNames,
    /// Warn while more changes than this wait to be published.
    pub events_backlog_warn: u64,
    pub change_log_window: u32,
    pub feed: FeedConfig,
    pub password_hash_cost: HashCost,
    pub drain_timeout: Duration,
    pub health_check_interval: Duration,
    /// NOT_SERVING while still serving, at the start of shutdown.
    pub shutdown_grace: Duration,
    /// JWT authentication and the proto's access rules; off when unset.
    pub auth: Option<AuthConfig>,
    /// Server reflection needs a token too (only with `auth`).
    pub auth_reflection: bool,
    /// gRPC over TLS (and mTLS with a client CA); plain text when unset.
    pub tls: Option<ServiceTls>,
}

impl UserServiceConfig {
    pub const DEFAULT_CHANGE_LOG_WINDOW: u32 = 10_000;
    pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 10;
    pub const DEFAULT_EVENTS_BACKLOG_WARN: u64 = 1000;

    /// Defaults, for a database URL: what the flags give when only `--db` is set.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            db_max_connections: Self::DEFAULT_DB_MAX_CONNECTIONS,
            nats_url: None,
            nats_auth: NatsAuth::None,
            nats_tls: NatsTls::default(),
            events: EventNames::default(),
            events_backlog_warn: Self::DEFAULT_EVENTS_BACKLOG_WARN,
            change_log_window: Self::DEFAULT_CHANGE_LOG_WINDOW,
            feed: FeedConfig::default(),
            password_hash_cost: HashCost::default(),
            drain_timeout: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::ZERO,
            auth: None,
            auth_reflection: false,
            tls: None,
        }
    }

    /// Checks the settings that flags' types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.database_url.starts_with("sqlite:") && !is_postgres_url(&self.database_url) {
            return Err(ConfigError {
                flag: "db",
                reason: format!("{:?} is not a SQLite URL, file path or PostgreSQL URL", self.database_url),
            });
        }
        let positive = [
            ("db-max-connections", self.db_max_connections as usize),
            ("change-log-window", self.change_log_window as usize),
            ("watch-buffer", self.feed.broadcast_capacity),
            ("password-hash-iterations", self.password_hash_cost.iterations as usize),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(ConfigError { flag, reason: "must be at least 1".into() });
            }
        }
        if self.password_hash_cost.memory_kib < 8 {
            return Err(ConfigError { flag: "password-hash-memory-kib", reason: "must be at least 8".into() });
        }
        for (flag, value) in
            [("watch-poll-interval", self.feed.poll_interval), ("health-check-interval", self.health_check_interval)]
        {
            if value.is_zero() {
                return Err(ConfigError { flag, reason: "must be longer than 0".into() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_flag() {
        let mut config = UserServiceConfig::new("mysql://localhost/test");
        assert_eq!(config.validate().map_err(|e| e.flag).err(), Some("db"));
        config.database_url = "postgres://localhost/test?sslmode=require".into();
        assert!(config.validate().is_ok());
        config.db_max_connections = 0;
        assert_eq!(config.validate().map_err(|e| e.flag).err(), Some("db-max-connections"));
        config.db_max_connections = 1;
        config.database_url = "sqlite::memory:".into();
        assert!(config.validate().is_ok());
        config.change_log_window = 0;
        assert_eq!(config.validate().map_err(|e| e.flag).err(), Some("change-log-window"));
    }
}
