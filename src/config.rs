//! Typed configuration: command-line flags, each also readable from a `PORTICO_*` environment variable, turned
//! into validated structs once in `main` and passed down.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::settings::ConfigError;

use std::path::PathBuf;

use crate::auth::{AuthConfig, KeySource};
use crate::gateway::GatewayConfig;
use crate::gateway::catalog::DescriptorSources;
use crate::gateway::clusters::ServiceUpstream;
use crate::gateway::limits::{Cidr, LimitsConfig, Rate, RateLimitConfig, RateLimitKey};
use crate::gateway::rules::RouteOptions;
use crate::gateway::tls::EdgeTlsConfig;
use crate::gateway::transcode::{TranscodeOptions, UnknownQueryParams};
use crate::telemetry::{LogFormat, TraceConfig};
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::discovery::DiscoveryConfig;
use crate::upstream::health::HealthConfig;
use crate::upstream::limit::LimitConfig;
use crate::upstream::retry::{Backoff, RetryBudgetConfig, RetryPolicy};
use crate::upstream::tls::UpstreamTls;
use crate::upstream::{PoolConfig, RetryConfig, UpstreamConfig};
use crate::user_service::ServiceTls;
use crate::user_service::password::HashCost;
use crate::user_service::relay::{EventNames, NameError, NatsAuth, NatsTarget, NatsTls, Secret, TailOptions};
use crate::user_service::store::ChangeKind;
use crate::user_service::{FeedConfig, UserServiceConfig};

/// Portico: a REST-to-gRPC gateway and the UserService behind it.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run; without one, `serve` with its defaults (the UserService and the gateway).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log line format.
    #[arg(long, global = true, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317); no tracing when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The share of new traces exported, 0 to 1; requests carrying a traceparent follow their caller's choice.
    #[arg(long, global = true, env = "PORTICO_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

impl Cli {
    /// The trace settings for `command`, when an OTLP endpoint is set and the command serves anything.
    /// `OTEL_SERVICE_NAME` overrides the program's service name.
    pub fn trace_config(&self, command: &Command) -> Option<TraceConfig> {
        let program = match command {
            Command::Serve(_) => "portico",
            Command::Gateway(_) => "portico-gateway",
            Command::UserService(_) => "portico-user-service",
            Command::Openapi | Command::Healthcheck(_) | Command::Events(_) => return None,
        };
        let endpoint = self.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())?;
        let service_name =
            std::env::var("OTEL_SERVICE_NAME").ok().filter(|name| !name.is_empty()).unwrap_or_else(|| program.into());
        let mut config = TraceConfig::new(endpoint, service_name);
        config.sample_ratio = self.trace_sample_ratio;
        Some(config)
    }
}

/// What to run.
#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start-up: boxing a variant would save nothing")]
pub enum Command {
    /// Run the UserService and the gateway in one process (the default).
    Serve(ServeArgs),
    /// Run the gateway in front of gRPC upstreams.
    Gateway(GatewayArgs),
    /// Run the UserService gRPC server (with grpc.health.v1 and server reflection).
    UserService(UserServiceArgs),
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Probe an HTTP health endpoint; exit 0 when it answers 200 (for container HEALTHCHECKs).
    Healthcheck(HealthcheckArgs),
    /// Read the user events the outbox relay published to NATS JetStream.
    Events(EventsArgs),
}

/// `portico events …`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// Print the events in the stream as CloudEvents JSON lines, oldest first (or after `--since`), then follow
    /// new ones.
    Tail(EventsTailArgs),
}

/// Flags of `portico events tail`.
#[derive(Debug, Clone, Args)]
pub struct EventsTailArgs {
    /// The NATS server the relay publishes to.
    #[arg(long, env = "PORTICO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Only events after this revision (the last one already processed, as a watch's `since_revision`);
    /// 0 starts with the oldest event in the stream.
    #[arg(long, value_name = "REVISION", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub since: i64,

    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE", value_enum)]
    pub kind: Option<EventType>,

    /// Stop after this many events (default: follow until interrupted).
    #[arg(long)]
    pub limit: Option<u64>,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub events: EventStreamArgs,
}

/// The `--type` of `events tail`: the last part of the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
}

impl EventsTailArgs {
    /// What `events tail` prints.
    pub fn options(&self) -> TailOptions {
        let kind = self.kind.map(|kind| match kind {
            EventType::Created => ChangeKind::Created,
            EventType::Updated => ChangeKind::Updated,
            EventType::Deleted => ChangeKind::Deleted,
        });
        TailOptions { since: self.since, kind, limit: self.limit }
    }

    /// The NATS server, credentials and stream to read.
    ///
    /// # Errors
    ///
    /// As [`NatsArgs::auth`], [`NatsArgs::tls`] and [`EventStreamArgs::names`].
    pub fn target(&self) -> Result<(NatsTarget, EventNames), ConfigError> {
        let target = NatsTarget { url: self.nats_url.clone(), auth: self.nats.auth()?, tls: self.nats.tls()? };
        Ok((target, self.events.names()?))
    }
}

/// How to log in to NATS and secure the connection: for the relay and `events tail`.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsArgs {
    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "PORTICO_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,

    /// NATS user name (with --nats-password or --nats-password-file).
    #[arg(long, env = "PORTICO_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password; prefer --nats-password-file, since flags show in process listings.
    #[arg(long, env = "PORTICO_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Secret>,

    /// File holding the NATS password (one line; a trailing newline is ignored).
    #[arg(long, env = "PORTICO_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,

    /// NATS authentication token; prefer --nats-token-file.
    #[arg(long, env = "PORTICO_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Secret>,

    /// File holding the NATS token (one line; a trailing newline is ignored).
    #[arg(long, env = "PORTICO_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,

    /// PEM CA certificate to trust for the NATS server's certificate (turns TLS on).
    #[arg(long, env = "PORTICO_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with --nats-tls-client-key; turns TLS on).
    #[arg(long, env = "PORTICO_NATS_TLS_CLIENT_CERT", value_name = "FILE")]
    pub nats_tls_client_cert: Option<PathBuf>,

    /// PEM private key of --nats-tls-client-cert.
    #[arg(long, env = "PORTICO_NATS_TLS_CLIENT_KEY", value_name = "FILE")]
    pub nats_tls_client_key: Option<PathBuf>,
}

/// Where the user events go in NATS: for the relay and `events tail`.
#[derive(Debug, Clone, Args)]
pub struct EventStreamArgs {
    /// Subject prefix of the user events: they are published on PREFIX.created, PREFIX.updated, PREFIX.deleted.
    #[arg(long, env = "PORTICO_EVENTS_SUBJECT_PREFIX", value_name = "PREFIX", default_value = "users")]
    pub events_subject_prefix: String,

    /// JetStream stream of the user events (subjects PREFIX.>), created when missing.
    #[arg(long, env = "PORTICO_EVENTS_STREAM", value_name = "NAME", default_value = "USERS")]
    pub events_stream: String,
}

impl EventStreamArgs {
    /// The validated names.
    ///
    /// # Errors
    ///
    /// A prefix or stream name NATS would reject, named by its flag.
    pub fn names(&self) -> Result<EventNames, ConfigError> {
        EventNames::new(&self.events_subject_prefix, &self.events_stream).map_err(|error| {
            let flag = match error {
                NameError::SubjectPrefix { .. } => "events-subject-prefix",
                NameError::Stream { .. } => "events-stream",
            };
            ConfigError { flag, reason: error.to_string() }
        })
    }
}

impl NatsArgs {
    /// Whether any credential or TLS option is set.
    fn is_set(&self) -> bool {
        self.nats_creds.is_some()
            || self.nats_user.is_some()
            || self.nats_password.is_some()
            || self.nats_password_file.is_some()
            || self.nats_token.is_some()
            || self.nats_token_file.is_some()
            || self.nats_tls_ca.is_some()
            || self.nats_tls_client_cert.is_some()
            || self.nats_tls_client_key.is_some()
    }

    /// The one way of logging in these flags choose; reads the password or token file.
    ///
    /// # Errors
    ///
    /// Two ways at once, a user without a password or the reverse, a value given both as a flag and as a file,
    /// or a file that cannot be read (its contents never appear in the error).
    pub fn auth(&self) -> Result<NatsAuth, ConfigError> {
        let password = secret(self.nats_password.as_ref(), self.nats_password_file.as_ref(), "nats-password")?;
        let token = secret(self.nats_token.as_ref(), self.nats_token_file.as_ref(), "nats-token")?;
        match (&self.nats_creds, &self.nats_user, password, token) {
            (None, None, None, None) => Ok(NatsAuth::None),
            (Some(creds), None, None, None) => Ok(NatsAuth::Credentials(readable(creds, "nats-creds")?)),
            (None, Some(user), Some(password), None) => Ok(NatsAuth::UserPassword { user: user.clone(), password }),
            (None, None, None, Some(token)) => Ok(NatsAuth::Token(token)),
            (None, Some(_), None, None) => {
                Err(ConfigError { flag: "nats-user", reason: "needs --nats-password-file or --nats-password".into() })
            }
            (None, None, Some(_), None) => {
                Err(ConfigError { flag: "nats-password", reason: "needs --nats-user".into() })
            }
            _ => Err(ConfigError {
                flag: "nats-creds",
                reason: "choose one way to log in: --nats-creds, --nats-user with a password, or --nats-token".into(),
            }),
        }
    }

    /// The TLS settings these flags choose.
    ///
    /// # Errors
    ///
    /// A client certificate without its key or the reverse, or a file that is not there.
    pub fn tls(&self) -> Result<NatsTls, ConfigError> {
        let ca = self.nats_tls_ca.as_ref().map(|ca| readable(ca, "nats-tls-ca")).transpose()?;
        let client_certificate = match (&self.nats_tls_client_cert, &self.nats_tls_client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some((readable(cert, "nats-tls-client-cert")?, readable(key, "nats-tls-client-key")?))
            }
            (Some(_), None) => {
                return Err(ConfigError { flag: "nats-tls-client-cert", reason: "needs --nats-tls-client-key".into() });
            }
            (None, Some(_)) => {
                return Err(ConfigError { flag: "nats-tls-client-key", reason: "needs --nats-tls-client-cert".into() });
            }
        };
        Ok(NatsTls { ca, client_certificate })
    }
}

/// A secret given as a flag (`flag`) or in a file (`flag-file`), not both.
fn secret(value: Option<&Secret>, file: Option<&PathBuf>, flag: &'static str) -> Result<Option<Secret>, ConfigError> {
    let file_flag = if flag == "nats-password" { "nats-password-file" } else { "nats-token-file" };
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError { flag: file_flag, reason: format!("conflicts with --{flag}") }),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError { flag: file_flag, reason: format!("cannot read {}: {e}", path.display()) })?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(ConfigError { flag: file_flag, reason: format!("{} is empty", path.display()) });
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// `path`, when it names a file (read later, at each connection).
fn readable(path: &std::path::Path, flag: &'static str) -> Result<PathBuf, ConfigError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ConfigError { flag, reason: format!("{} is not a file", path.display()) })
    }
}

/// Flags of `portico healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The URL to probe (plain HTTP).
    #[arg(long, env = "PORTICO_HEALTHCHECK_URL", default_value = "http://127.0.0.1:8080/healthz")]
    pub url: String,

    /// How long to wait for the answer.
    #[arg(long, env = "PORTICO_HEALTHCHECK_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `portico serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for HTTP/JSON (host:port).
    #[arg(long, env = "PORTICO_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address for the UserService's gRPC.
    #[arg(long, env = "PORTICO_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,

    #[command(flatten)]
    pub gateway: GatewayOptions,

    #[command(flatten)]
    pub user_service: UserServiceOptions,

    /// One set of JWT settings for both the gateway and the UserService.
    #[command(flatten)]
    pub auth: AuthOptions,

    /// HTTPS at the gateway; the loopback hop to the UserService stays plain.
    #[command(flatten)]
    pub tls: EdgeTlsOptions,
}

/// Flags of `portico gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address for HTTP/JSON (host:port).
    #[arg(long, env = "PORTICO_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// gRPC upstream(s), comma-separated: http://host:port, dns://name:port (every A/AAAA record, re-resolved)
    /// or file://path.json (a JSON list of URLs, re-read on change).
    #[arg(long, env = "PORTICO_UPSTREAM", value_delimiter = ',', required = true)]
    pub upstream: Vec<String>,

    /// How long in-flight requests may finish after SIGTERM/SIGINT before the process exits.
    #[arg(long, env = "PORTICO_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// One service's calls go to upstream targets of their own: package.Service=TARGETS (targets as for
    /// --upstream, comma-separated). Repeatable; in the environment, entries are separated by ';'.
    #[arg(long, env = "PORTICO_SERVICE_UPSTREAM", value_delimiter = ';')]
    pub service_upstream: Vec<ServiceUpstream>,

    /// Binary FileDescriptorSet(s) to serve (protoc --include_imports --descriptor_set_out, buf build -o);
    /// repeatable or comma-separated. Watched: a change reloads them.
    #[arg(long, env = "PORTICO_DESCRIPTOR_SET", value_delimiter = ',')]
    pub descriptor_set: Vec<PathBuf>,

    /// .proto file(s) to compile and serve (no protoc needed); repeatable or comma-separated. Watched.
    #[arg(long, env = "PORTICO_PROTO", value_delimiter = ',')]
    pub proto: Vec<PathBuf>,

    /// Include path(s) for --proto imports; google/api and the well-known types are built in.
    #[arg(long, env = "PORTICO_PROTO_PATH", value_delimiter = ',')]
    pub proto_path: Vec<PathBuf>,

    /// Read the descriptors from each upstream cluster's gRPC server reflection (v1, else v1alpha).
    #[arg(long, env = "PORTICO_REFLECTION")]
    pub reflection: bool,

    /// How often reflection is read again (also whenever a cluster's endpoints change).
    #[arg(long, env = "PORTICO_REFLECTION_REFRESH", default_value = "60s", value_parser = parse_duration)]
    pub reflection_refresh: Duration,

    /// Serve only these services (package.Service), comma-separated; all annotated services when unset.
    #[arg(long, env = "PORTICO_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,

    /// Serve services without google.api.http rules at POST /package.Service/Method, the whole request
    /// message as the JSON body (unary and server-streaming methods).
    #[arg(long, env = "PORTICO_AUTO_ROUTES")]
    pub auto_routes: bool,

    #[command(flatten)]
    pub gateway: GatewayOptions,

    #[command(flatten)]
    pub auth: AuthOptions,

    #[command(flatten)]
    pub tls: EdgeTlsOptions,
}

impl GatewayArgs {
    /// The gateway config of `portico gateway`.
    ///
    /// # Errors
    ///
    /// The first setting that cannot work, named by its flag.
    pub fn config(&self) -> Result<GatewayConfig, ConfigError> {
        let mut config = self.gateway.config(self.upstream.clone(), self.drain_timeout)?;
        if self.reflection_refresh.is_zero() {
            return Err(ConfigError { flag: "reflection-refresh", reason: "must be longer than 0".into() });
        }
        if !self.proto_path.is_empty() && self.proto.is_empty() {
            return Err(ConfigError { flag: "proto-path", reason: "is only used with --proto".into() });
        }
        config.service_upstreams.clone_from(&self.service_upstream);
        config.auth = self.auth.config()?;
        config.tls = self.tls.config()?;
        config.descriptors = DescriptorSources {
            descriptor_sets: self.descriptor_set.clone(),
            protos: self.proto.clone(),
            proto_paths: self.proto_path.clone(),
            reflection: self.reflection,
            reflection_refresh: self.reflection_refresh,
            reflection_timeout: self.gateway.upstream_connect_timeout,
        };
        config.routes = RouteOptions {
            services: self.services.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            auto_routes: self.auto_routes,
        };
        Ok(config)
    }
}

/// Gateway settings shared by `serve` and `gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayOptions {
    /// Threads serving client connections, each with its own upstream connections (default: one per CPU).
    #[arg(long, env = "PORTICO_WORKERS", default_value_t = crate::gateway::workers::default_count())]
    pub workers: usize,

    /// Keep each connection on the worker thread that took it (Envoy's model): cheaper per request, but a
    /// thread waiting for the CPU stalls all its connections, so for a gateway with cores of its own.
    #[arg(long, env = "PORTICO_PIN_CONNECTIONS")]
    pub pin_connections: bool,

    /// HTTP/2 connections per upstream endpoint and worker (each worker opens its own on first use).
    #[arg(long, env = "PORTICO_UPSTREAM_CONNECTIONS", default_value_t = PoolConfig::default().connections_per_endpoint)]
    pub upstream_connections: usize,

    /// Deadline for unary and client-streaming calls (a shorter Grpc-Timeout from the client wins).
    #[arg(long, env = "PORTICO_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, env = "PORTICO_MAX_BODY_BYTES", default_value_t = GatewayConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,

    /// Deepest JSON nesting accepted in a request body.
    #[arg(long, env = "PORTICO_MAX_JSON_DEPTH", default_value_t = TranscodeOptions::default().max_json_depth)]
    pub max_json_depth: usize,

    /// What to do with query parameters that match no field: reject (400) or ignore.
    #[arg(long, env = "PORTICO_UNKNOWN_QUERY_PARAMS", value_enum, default_value_t = TranscodeOptions::default().unknown_query_params)]
    pub unknown_query_params: UnknownQueryParams,

    /// Time a client has to send its request headers.
    #[arg(long, env = "PORTICO_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a client has to send a request body (for streamed bodies: the longest pause between pieces).
    #[arg(long, env = "PORTICO_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Origins allowed by CORS, comma-separated, or * for any; CORS is off when unset.
    #[arg(long, env = "PORTICO_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "PORTICO_SSE_KEEP_ALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keep_alive: Duration,

    /// Serve the admin view (GET /admin/upstreams) on this address; off when unset. Keep it private.
    #[arg(long, env = "PORTICO_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Time to open a connection to an upstream endpoint.
    #[arg(long, env = "PORTICO_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// How often dns:// upstreams are re-resolved (also soon after an endpoint turns unhealthy).
    #[arg(long, env = "PORTICO_UPSTREAM_DNS_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub upstream_dns_refresh: Duration,

    /// DNS server (ip:port) for dns:// upstreams; the system's resolver configuration when unset.
    #[arg(long, env = "PORTICO_UPSTREAM_DNS_SERVER")]
    pub upstream_dns_server: Option<SocketAddr>,

    /// Time one DNS query may take.
    #[arg(long, env = "PORTICO_UPSTREAM_DNS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub upstream_dns_timeout: Duration,

    /// How often file:// upstreams are checked for changes.
    #[arg(long, env = "PORTICO_UPSTREAM_FILE_POLL", default_value = "1s", value_parser = parse_duration)]
    pub upstream_file_poll: Duration,

    /// Active grpc.health.v1 checks of every upstream endpoint (true or false).
    #[arg(long, env = "PORTICO_UPSTREAM_HEALTH_CHECKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub upstream_health_checks: bool,

    /// The service name health checks ask about; empty asks about the whole server.
    #[arg(long, env = "PORTICO_UPSTREAM_HEALTH_SERVICE", default_value = "")]
    pub upstream_health_service: String,

    /// Health check keep-alive and Check polling interval; also the longest reconnection backoff.
    #[arg(long, env = "PORTICO_UPSTREAM_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub upstream_health_interval: Duration,

    /// Time a health check (connect, first answer, keep-alive ping) may take before the endpoint is unreachable.
    #[arg(long, env = "PORTICO_UPSTREAM_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub upstream_health_timeout: Duration,

    /// Consecutive failures (unreachable, UNAVAILABLE, timeouts) that eject an endpoint.
    #[arg(long, env = "PORTICO_BREAKER_FAILURES", default_value_t = BreakerConfig::default().consecutive_failures)]
    pub breaker_failures: u32,

    /// The first ejection; each further one in a row doubles it.
    #[arg(long, env = "PORTICO_BREAKER_BASE_EJECTION", default_value = "1s", value_parser = parse_duration)]
    pub breaker_base_ejection: Duration,

    /// The longest ejection.
    #[arg(long, env = "PORTICO_BREAKER_MAX_EJECTION", default_value = "30s", value_parser = parse_duration)]
    pub breaker_max_ejection: Duration,

    /// Attempts per call in all, the first included (1 turns retries off).
    #[arg(long, env = "PORTICO_RETRY_MAX_ATTEMPTS", default_value_t = RetryPolicy::default().max_attempts)]
    pub retry_max_attempts: u32,

    /// Backoff ceiling before the first retry (full jitter); it doubles for each further one.
    #[arg(long, env = "PORTICO_RETRY_BACKOFF_BASE", default_value = "25ms", value_parser = parse_duration)]
    pub retry_backoff_base: Duration,

    /// The longest backoff before a retry.
    #[arg(long, env = "PORTICO_RETRY_BACKOFF_MAX", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retries allowed as a share of recent requests (0.2: retries add at most 20% load).
    #[arg(long, env = "PORTICO_RETRY_BUDGET_RATIO", default_value_t = RetryBudgetConfig::default().ratio)]
    pub retry_budget_ratio: f64,

    /// Retries allowed per second whatever the traffic, so a quiet upstream can still retry.
    #[arg(long, env = "PORTICO_RETRY_BUDGET_MIN_PER_SECOND", default_value_t = RetryBudgetConfig::default().min_retries_per_second)]
    pub retry_budget_min_per_second: u32,

    /// RPCs (package.Service.Method) safe to retry after reaching a server, besides GET routes, comma-separated.
    #[arg(long, env = "PORTICO_IDEMPOTENT_RPCS", value_delimiter = ',')]
    pub idempotent_rpcs: Vec<String>,

    /// RPCs never retried after reaching a server, even on GET routes, comma-separated.
    #[arg(long, env = "PORTICO_NON_IDEMPOTENT_RPCS", value_delimiter = ',')]
    pub non_idempotent_rpcs: Vec<String>,

    /// Calls in flight to the upstream at once; more wait in a queue.
    #[arg(long, env = "PORTICO_UPSTREAM_MAX_IN_FLIGHT", default_value_t = LimitConfig::default().max_in_flight)]
    pub upstream_max_in_flight: usize,

    /// Calls that may wait for a slot; beyond that they get 503 at once.
    #[arg(long, env = "PORTICO_UPSTREAM_MAX_QUEUE", default_value_t = LimitConfig::default().max_queue)]
    pub upstream_max_queue: usize,

    /// The longest a call waits for a slot before it gets 503.
    #[arg(long, env = "PORTICO_UPSTREAM_MAX_QUEUE_WAIT", default_value = "1s", value_parser = parse_duration)]
    pub upstream_max_queue_wait: Duration,

    /// Requests per client: COUNT/s, COUNT/min or COUNT/h; beyond it 429 with Retry-After. Off when unset.
    #[arg(long, env = "PORTICO_RATE_LIMIT", value_name = "RATE")]
    pub rate_limit: Option<Rate>,

    /// Requests a client may make at once after a quiet spell (default: the rate's count).
    #[arg(long, env = "PORTICO_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<NonZeroU32>,

    /// What a client is for --rate-limit: ip, subject (the token's sub) or header:NAME.
    #[arg(long, env = "PORTICO_RATE_LIMIT_KEY", default_value = "ip")]
    pub rate_limit_key: RateLimitKey,

    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For names the client for --rate-limit-key ip.
    #[arg(long, env = "PORTICO_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Requests served at once, counted before their bodies are read; beyond it 503 at once. Off when unset.
    #[arg(long, env = "PORTICO_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,

    /// Open server streams (SSE, NDJSON) at once; beyond it 503 at once. Off when unset.
    #[arg(long, env = "PORTICO_MAX_STREAMS")]
    pub max_streams: Option<usize>,

    /// CA certificate(s) (PEM) that sign https:// upstreams' certificates; the system's roots when unset.
    #[arg(long, env = "PORTICO_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Client certificate (PEM chain) the gateway presents to https:// upstreams that require one.
    #[arg(long, env = "PORTICO_UPSTREAM_CLIENT_CERT", value_name = "FILE", requires = "upstream_client_key")]
    pub upstream_client_cert: Option<PathBuf>,

    /// The private key (PEM) of --upstream-client-cert.
    #[arg(long, env = "PORTICO_UPSTREAM_CLIENT_KEY", value_name = "FILE", requires = "upstream_client_cert")]
    pub upstream_client_key: Option<PathBuf>,
}

/// HTTPS at the gateway's edge (`gateway` and `serve`).
#[derive(Debug, Clone, Args)]
pub struct EdgeTlsOptions {
    /// Certificate chain (PEM) to serve HTTPS with (HTTP/2 by ALPN and HTTP/1.1); reloaded when the file
    /// changes. Plain HTTP when unset.
    #[arg(long, env = "PORTICO_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert; reloaded with it.
    #[arg(long, env = "PORTICO_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl EdgeTlsOptions {
    /// The edge's TLS settings, after checking that the pair loads.
    ///
    /// # Errors
    ///
    /// The files cannot be read or do not hold a certificate and its key.
    pub fn config(&self) -> Result<Option<EdgeTlsConfig>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        crate::tls::certified_key(cert, key).map_err(|e| ConfigError { flag: "tls-cert", reason: e.to_string() })?;
        Ok(Some(EdgeTlsConfig { cert: cert.clone(), key: key.clone() }))
    }
}

/// TLS of `user-service`: its certificate, and the CA of client certificates it then requires (mTLS).
#[derive(Debug, Clone, Args)]
pub struct ServiceTlsOptions {
    /// Certificate chain (PEM) to serve gRPC over TLS with. Plain text when unset.
    #[arg(long, env = "PORTICO_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PORTICO_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM): clients must present a certificate signed by it (mTLS).
    #[arg(long, env = "PORTICO_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServiceTlsOptions {
    /// The service's TLS settings, with the files read and checked.
    ///
    /// # Errors
    ///
    /// A file cannot be read, or holds no certificate or key.
    pub fn config(&self) -> Result<Option<ServiceTls>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        crate::tls::certified_key(cert, key).map_err(|e| ConfigError { flag: "tls-cert", reason: e.to_string() })?;
        let read = |flag: &'static str, path: &PathBuf| {
            crate::tls::read_pem(path).map_err(|e| ConfigError { flag, reason: e.to_string() })
        };
        let client_ca = match &self.tls_client_ca {
            Some(ca) => {
                crate::tls::certificates(ca)
                    .map_err(|e| ConfigError { flag: "tls-client-ca", reason: e.to_string() })?;
                Some(read("tls-client-ca", ca)?)
            }
            None => None,
        };
        Ok(Some(ServiceTls { cert: read("tls-cert", cert)?, key: read("tls-key", key)?, client_ca }))
    }
}

impl GatewayOptions {
    /// The upstream settings of these options.
    fn upstream_config(&self) -> UpstreamConfig {
        UpstreamConfig {
            pool: PoolConfig {
                connections_per_endpoint: self.upstream_connections,
                connect_timeout: self.upstream_connect_timeout,
                ..PoolConfig::default()
            },
            discovery: DiscoveryConfig {
                dns_refresh: self.upstream_dns_refresh,
                dns_server: self.upstream_dns_server,
                dns_timeout: self.upstream_dns_timeout,
                file_poll: self.upstream_file_poll,
            },
            health: HealthConfig {
                enabled: self.upstream_health_checks,
                service: self.upstream_health_service.clone(),
                interval: self.upstream_health_interval,
                timeout: self.upstream_health_timeout,
            },
            breaker: BreakerConfig {
                consecutive_failures: self.breaker_failures,
                base_ejection: self.breaker_base_ejection,
                max_ejection: self.breaker_max_ejection,
                ..BreakerConfig::default()
            },
            retry: RetryConfig {
                policy: RetryPolicy { max_attempts: self.retry_max_attempts },
                backoff: Backoff { base: self.retry_backoff_base, max: self.retry_backoff_max, ..Backoff::default() },
                budget: RetryBudgetConfig {
                    ratio: self.retry_budget_ratio,
                    min_retries_per_second: self.retry_budget_min_per_second,
                    ..RetryBudgetConfig::default()
                },
            },
            limit: LimitConfig {
                max_in_flight: self.upstream_max_in_flight,
                max_queue: self.upstream_max_queue,
                max_queue_wait: self.upstream_max_queue_wait,
            },
        }
    }

    /// The limits of these options.
    fn limits(&self) -> Result<LimitsConfig, ConfigError> {
        let rate_limit = match self.rate_limit {
            Some(rate) => Some(RateLimitConfig {
                rate,
                burst: self.rate_limit_burst,
                key: self.rate_limit_key.clone(),
                trusted_proxies: self.trusted_proxies.clone(),
            }),
            None if self.rate_limit_burst.is_some() => {
                return Err(ConfigError { flag: "rate-limit-burst", reason: "needs --rate-limit".into() });
            }
            None => None,
        };
        Ok(LimitsConfig {
            rate_limit,
            max_concurrent_requests: self.max_concurrent_requests,
            max_streams: self.max_streams,
        })
    }

    /// TLS to https:// upstreams, with the files read and checked.
    fn upstream_tls(&self) -> Result<UpstreamTls, ConfigError> {
        let read = |flag: &'static str, path: &PathBuf| {
            crate::tls::read_pem(path).map_err(|e| ConfigError { flag, reason: e.to_string() })
        };
        let ca = match &self.upstream_ca {
            Some(ca) => {
                crate::tls::certificates(ca).map_err(|e| ConfigError { flag: "upstream-ca", reason: e.to_string() })?;
                Some(read("upstream-ca", ca)?)
            }
            None => None,
        };
        let identity = match (&self.upstream_client_cert, &self.upstream_client_key) {
            (Some(cert), Some(key)) => {
                crate::tls::certified_key(cert, key)
                    .map_err(|e| ConfigError { flag: "upstream-client-cert", reason: e.to_string() })?;
                Some((read("upstream-client-cert", cert)?, read("upstream-client-key", key)?))
            }
            _ => None,
        };
        Ok(UpstreamTls { ca, identity })
    }

    /// The gateway config for these options, `upstreams` and `drain_timeout`.
    pub fn config(&self, upstreams: Vec<String>, drain_timeout: Duration) -> Result<GatewayConfig, ConfigError> {
        let mut upstream = self.upstream_config();
        upstream.pool.tls = self.upstream_tls()?;
        let config = GatewayConfig {
            upstreams,
            upstream,
            descriptors: DescriptorSources::default(),
            routes: RouteOptions::default(),
            service_upstreams: Vec::new(),
            idempotent_rpcs: self.idempotent_rpcs.clone(),
            non_idempotent_rpcs: self.non_idempotent_rpcs.clone(),
            max_body_bytes: self.max_body_bytes,
            transcode: TranscodeOptions {
                max_json_depth: self.max_json_depth,
                unknown_query_params: self.unknown_query_params,
            },
            default_timeout: Some(self.upstream_timeout).filter(|t| !t.is_zero()),
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            cors_allowed_origins: self.cors_allowed_origins.clone(),
            sse_keep_alive: self.sse_keep_alive,
            drain_timeout,
            auth: None,
            limits: self.limits()?,
            tls: None,
            workers: self.workers,
            pin_connections: self.pin_connections,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Flags of `portico user-service`.
#[derive(Debug, Clone, Args)]
pub struct UserServiceArgs {
    /// Address for gRPC (host:port; port 0 picks a free port).
    #[arg(long, env = "PORTICO_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics (GET /metrics) on this address; off when unset. Keep it private.
    #[arg(long, env = "PORTICO_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub options: UserServiceOptions,

    #[command(flatten)]
    pub auth: AuthOptions,

    #[command(flatten)]
    pub tls: ServiceTlsOptions,
}

/// UserService settings shared by `serve` and `user-service`.
#[derive(Debug, Clone, Args)]
pub struct UserServiceOptions {
    /// Database: a SQLite URL (`sqlite://portico.db`, `sqlite::memory:`), a plain file path, or a PostgreSQL
    /// URL (`postgres://user@host:5432/db?sslmode=require`).
    #[arg(long, env = "PORTICO_DB", default_value = "portico.db")]
    pub db: String,

    /// NATS server with JetStream (`nats://host:4222`): publish every change there, through the outbox relay.
    #[arg(long, env = "PORTICO_NATS_URL")]
    pub nats_url: Option<String>,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub events: EventStreamArgs,

    /// Warn in the log (every minute) while more than this many committed changes wait to be published to NATS;
    /// checked every --health-check-interval.
    #[arg(long, env = "PORTICO_EVENTS_BACKLOG_WARN", default_value_t = UserServiceConfig::DEFAULT_EVENTS_BACKLOG_WARN)]
    pub events_backlog_warn: u64,

    /// PostgreSQL connection pool size per process (SQLite ignores it).
    #[arg(long, env = "PORTICO_DB_MAX_CONNECTIONS", default_value_t = UserServiceConfig::DEFAULT_DB_MAX_CONNECTIONS)]
    pub db_max_connections: u32,

    /// Changes kept in the change log for WatchUsers' since_revision resumes.
    #[arg(long, env = "PORTICO_CHANGE_LOG_WINDOW", default_value_t = UserServiceConfig::DEFAULT_CHANGE_LOG_WINDOW)]
    pub change_log_window: u32,

    /// Changes buffered in memory for watchers; a watcher further behind catches up from the database.
    #[arg(long, env = "PORTICO_WATCH_BUFFER", default_value_t = FeedConfig::default().broadcast_capacity)]
    pub watch_buffer: usize,

    /// How often to look for changes committed by other processes sharing the database (on PostgreSQL, where
    /// commits are notified, only a safety net: at least 30s).
    #[arg(long, env = "PORTICO_WATCH_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub watch_poll_interval: Duration,

    /// Argon2id memory cost in KiB for password hashes.
    #[arg(long, env = "PORTICO_PASSWORD_HASH_MEMORY_KIB", default_value_t = HashCost::default().memory_kib)]
    pub password_hash_memory_kib: u32,

    /// Argon2id iterations for password hashes.
    #[arg(long, env = "PORTICO_PASSWORD_HASH_ITERATIONS", default_value_t = HashCost::default().iterations)]
    pub password_hash_iterations: u32,

    /// How long in-flight calls may finish after SIGTERM/SIGINT before the process exits.
    #[arg(long, env = "PORTICO_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How often the database is checked for grpc.health.v1.
    #[arg(long, env = "PORTICO_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// After SIGTERM/SIGINT: how long to report NOT_SERVING while still serving calls, so load balancers stop
    /// sending work before the listener closes (e.g. a few seconds behind a gateway or Kubernetes Service).
    #[arg(long, env = "PORTICO_SHUTDOWN_GRACE", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// The flags' defaults, with `PORTICO_*` environment variables applied: what bare `portico` runs.
    pub fn default_from_env() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            args: ServeArgs,
        }
        Defaults::parse_from(["portico"]).args
    }
}

impl TryFrom<&UserServiceOptions> for UserServiceConfig {
    type Error = ConfigError;

    fn try_from(args: &UserServiceOptions) -> Result<Self, ConfigError> {
        if args.nats_url.is_none() && args.nats.is_set() {
            return Err(ConfigError { flag: "nats-url", reason: "is needed by the --nats-* options".into() });
        }
        let config = Self {
            database_url: database_url(&args.db),
            db_max_connections: args.db_max_connections,
            nats_url: args.nats_url.clone(),
            nats_auth: args.nats.auth()?,
            nats_tls: args.nats.tls()?,
            events: args.events.names()?,
            events_backlog_warn: args.events_backlog_warn,
            change_log_window: args.change_log_window,
            feed: FeedConfig {
                broadcast_capacity: args.watch_buffer,
                poll_interval: args.watch_poll_interval,
                ..FeedConfig::default()
            },
            password_hash_cost: HashCost {
                memory_kib: args.password_hash_memory_kib,
                iterations: args.password_hash_iterations,
            },
            drain_timeout: args.drain_timeout,
            health_check_interval: args.health_check_interval,
            shutdown_grace: args.shutdown_grace,
            auth: None,
            auth_reflection: false,
            tls: None,
        };
        config.validate()?;
        Ok(config)
    }
}

/// JWT settings, the same on `serve`, `gateway` and `user-service`. Any key source turns auth on.
#[derive(Debug, Clone, Args)]
pub struct AuthOptions {
    /// JWKS with the token signing keys (RS256, ES256, EdDSA): a file, or an http(s) URL such as an OIDC
    /// provider's jwks_uri (re-fetched periodically and when a token names an unknown key id).
    #[arg(long, env = "PORTICO_JWT_JWKS", value_name = "FILE_OR_URL")]
    pub jwt_jwks: Option<String>,

    /// File holding a shared HS256 secret (at least 32 bytes), instead of a JWKS.
    #[arg(long, env = "PORTICO_JWT_HS256_SECRET_FILE", value_name = "FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// The issuer (iss) tokens must carry.
    #[arg(long, env = "PORTICO_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The audience (aud) tokens must carry; required with --jwt-jwks.
    #[arg(long, env = "PORTICO_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on exp and nbf.
    #[arg(long, env = "PORTICO_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// The claim holding the caller's roles; a dotted path reaches into objects (realm_access.roles).
    #[arg(long, env = "PORTICO_JWT_ROLES_CLAIM", default_value = AuthConfig::DEFAULT_ROLES_CLAIM)]
    pub jwt_roles_claim: String,

    /// How often the JWKS is read again.
    #[arg(long, env = "PORTICO_JWT_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// The UserService's server reflection needs a token too (health checks never do).
    #[arg(long, env = "PORTICO_JWT_PROTECT_REFLECTION")]
    pub jwt_protect_reflection: bool,
}

impl AuthOptions {
    /// The auth settings, or None when no key source is given (auth off).
    ///
    /// # Errors
    ///
    /// Both key sources at once, issuer or audience without keys, a JWKS without an audience, or a malformed
    /// roles claim.
    pub fn config(&self) -> Result<Option<AuthConfig>, ConfigError> {
        let keys = match (&self.jwt_jwks, &self.jwt_hs256_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    flag: "jwt-hs256-secret-file",
                    reason: "cannot be used with --jwt-jwks".into(),
                });
            }
            (Some(jwks), None) if jwks.starts_with("http://") || jwks.starts_with("https://") => {
                KeySource::JwksUrl(jwks.clone())
            }
            (Some(jwks), None) => KeySource::JwksFile(PathBuf::from(jwks)),
            (None, Some(secret)) => KeySource::Hs256SecretFile(secret.clone()),
            (None, None) => {
                let stray = [("jwt-issuer", self.jwt_issuer.is_some()), ("jwt-audience", self.jwt_audience.is_some())];
                if let Some((flag, _)) = stray.into_iter().find(|(_, set)| *set) {
                    return Err(ConfigError { flag, reason: "needs --jwt-jwks or --jwt-hs256-secret-file".into() });
                }
                if self.jwt_protect_reflection {
                    return Err(ConfigError {
                        flag: "jwt-protect-reflection",
                        reason: "needs --jwt-jwks or --jwt-hs256-secret-file".into(),
                    });
                }
                return Ok(None);
            }
        };
        if matches!(keys, KeySource::JwksFile(_) | KeySource::JwksUrl(_)) && self.jwt_audience.is_none() {
            return Err(ConfigError {
                flag: "jwt-audience",
                reason: "is required with --jwt-jwks: a provider's keys sign tokens for all of its clients".into(),
            });
        }
        if self.jwt_roles_claim.split('.').any(str::is_empty) {
            return Err(ConfigError {
                flag: "jwt-roles-claim",
                reason: "must be a claim name or a dotted path".into(),
            });
        }
        if self.jwt_jwks_refresh.is_zero() {
            return Err(ConfigError { flag: "jwt-jwks-refresh", reason: "must be longer than 0".into() });
        }
        Ok(Some(AuthConfig {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            roles_claim: self.jwt_roles_claim.clone(),
            jwks_refresh: self.jwt_jwks_refresh,
            ..AuthConfig::new(keys)
        }))
    }
}

/// A plain path becomes a SQLite URL; URLs pass through.
fn database_url(db: &str) -> String {
    if db.contains("://") || db.starts_with("sqlite:") || db.starts_with("postgres") {
        db.to_string()
    } else {
        format!("sqlite://{db}")
    }
}

/// Parses a duration flag: `250ms`, `30s`, `5m`, `1h`, or combinations such as `1h 30m` (humantime's
/// format, which refuses values that overflow rather than wrapping).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 250ms, 30s, 5m or 1h: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "30", "s", "-1s", "10 parsecs", "99999999999999999999h", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(database_url("portico.db"), "sqlite://portico.db");
        assert_eq!(database_url("/var/lib/portico/users.db"), "sqlite:///var/lib/portico/users.db");
        assert_eq!(database_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(database_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }

    /// Durations can only be given to clap as text, so their defaults are written twice; this keeps the flags'
    /// defaults and the structs' defaults the same.
    #[test]
    fn flag_defaults_are_the_config_defaults() -> Result<(), ConfigError> {
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            gateway: GatewayOptions,
            #[command(flatten)]
            user_service: UserServiceOptions,
        }
        let flags = Flags::parse_from(["portico"]);
        let defaults = GatewayConfig::default();
        let gateway = flags.gateway.config(defaults.upstreams.clone(), defaults.drain_timeout)?;
        assert_eq!(gateway, defaults);
        let user_service = UserServiceConfig::try_from(&flags.user_service)?;
        assert_eq!(user_service, UserServiceConfig::new("sqlite://portico.db"));

        let flags = Flags::parse_from(["portico", "--workers", "3", "--pin-connections"]);
        let gateway = flags.gateway.config(defaults.upstreams.clone(), defaults.drain_timeout)?;
        assert_eq!((gateway.workers, gateway.pin_connections), (3, true));
        Ok(())
    }

    #[test]
    fn nats_login_is_one_way_at_a_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "s3cret\n")?;
        let user = NatsArgs { nats_user: Some("relay".into()), ..NatsArgs::default() };
        let with_file = NatsArgs { nats_password_file: Some(password_file.clone()), ..user.clone() };
        let expected = NatsAuth::UserPassword { user: "relay".into(), password: Secret::new("s3cret") };
        assert_eq!(with_file.auth()?, expected, "the file's trailing newline is not part of the password");
        let failures = [
            (user.clone(), "nats-user"),
            (NatsArgs { nats_password: Some(Secret::new("pw")), ..NatsArgs::default() }, "nats-password"),
            (NatsArgs { nats_password: Some(Secret::new("pw")), ..with_file.clone() }, "nats-password-file"),
            (NatsArgs { nats_token: Some(Secret::new("t")), ..with_file }, "nats-creds"),
            (NatsArgs { nats_creds: Some(dir.path().join("missing.creds")), ..NatsArgs::default() }, "nats-creds"),
        ];
        for (args, flag) in failures {
            let error = args.auth().err().ok_or(format!("{args:?} was accepted"))?;
            assert_eq!(error.flag, flag, "{args:?}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
        let key_only = NatsArgs { nats_tls_client_key: Some(password_file), ..NatsArgs::default() };
        assert_eq!(key_only.tls().err().map(|e| e.flag), Some("nats-tls-client-key"));
        Ok(())
    }
}
