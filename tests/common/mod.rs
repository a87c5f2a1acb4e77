//! Starts real UserService servers on 127.0.0.1:0 with a throwaway database (a SQLite file, or a PostgreSQL
//! database of their own), and connects real clients.
#![allow(dead_code)] // each test file uses a different part of this module

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portico::proto::user::user_service_client::UserServiceClient;
use portico::proto::user::{CreateUserRequest, User};
use portico::user_service::UserServiceConfig;
use portico::user_service::password::HashCost;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub type Client = UserServiceClient<Channel>;
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Cheap hashes: the tests create thousands of users; the production cost is tested in password.rs.
pub const TEST_HASH_COST: HashCost = HashCost { memory_kib: 64, iterations: 1 };

/// The storage backends every store and service test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn NAME(backend: Backend) -> TestResult`, one test per backend:
/// `sqlite::NAME` and `postgres::NAME`. An optional leading `#[tokio::test(…)]` sets the runtime of all of them.
#[macro_export]
macro_rules! per_backend {
    (#[$test:meta] $($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[$test] async fn $name() -> $crate::common::TestResult { super::$name($crate::common::Backend::Sqlite).await })+
        }
        mod postgres {
            $(#[$test] async fn $name() -> $crate::common::TestResult { super::$name($crate::common::Backend::Postgres).await })+
        }
    };
    ($($name:ident),+ $(,)?) => {
        $crate::per_backend!(#[tokio::test] $($name),+);
    };
}

/// Where a test server keeps its data; dropping it deletes the data.
pub enum TestStorage {
    Sqlite { path: PathBuf, _dir: TempDir },
    Postgres(postgres::TestDatabase),
}

impl TestStorage {
    /// A new, empty database of `backend`.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self::Sqlite { path: dir.path().join("users.db"), _dir: dir }
            }
            Backend::Postgres => Self::Postgres(postgres::TestDatabase::create().await),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Self::Postgres(database) => database.url.clone(),
        }
    }

    /// Every stored password hash, read straight from the database.
    pub async fn password_hashes(&self) -> Result<Vec<String>, sqlx::Error> {
        self.strings("SELECT password_hash FROM users ORDER BY id").await
    }

    /// Every stored text of every user row, concatenated per row.
    pub async fn user_rows_as_text(&self) -> Result<Vec<String>, sqlx::Error> {
        self.strings("SELECT password_hash || name || email || roles FROM users").await
    }

    /// The one text column of `query`'s rows, on a connection of its own (read-only for SQLite).
    async fn strings(&self, query: &'static str) -> Result<Vec<String>, sqlx::Error> {
        use sqlx::Connection;
        match self {
            Self::Sqlite { path, .. } => {
                let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
                sqlx::query_scalar(query).fetch_all(&mut db).await
            }
            Self::Postgres(database) => {
                let mut db = sqlx::PgConnection::connect(&database.url).await?;
                sqlx::query_scalar(query).fetch_all(&mut db).await
            }
        }
    }
}

/// A running UserService; stops (and deletes its database) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), portico::user_service::ServeError>>>,
    /// Declared after `handle`: the server stops before its database is dropped.
    pub storage: TestStorage,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings every test server shares: the database at `url`, fast hashing, quick polls.
pub fn test_config(url: String) -> UserServiceConfig {
    let mut config = UserServiceConfig::new(url);
    config.password_hash_cost = TEST_HASH_COST;
    config.feed.poll_interval = Duration::from_millis(50);
    config.health_check_interval = Duration::from_millis(100);
    config.drain_timeout = Duration::from_secs(5);
    config
}

/// A UserService on a new SQLite file (for tests that are not about storage).
pub async fn start() -> TestServer {
    start_on(Backend::Sqlite).await
}

/// A UserService on a new database of `backend`.
pub async fn start_on(backend: Backend) -> TestServer {
    start_with(backend, |_| {}).await
}

pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut UserServiceConfig)) -> TestServer {
    let storage = TestStorage::create(backend).await;
    let mut config = test_config(storage.url());
    adjust(&mut config);
    config.validate().expect("valid test config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move { portico::user_service::serve(&config, listener, token).await });
    TestServer { addr, shutdown, handle: Some(handle), storage }
}

impl TestServer {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
    }

    /// A client on its own connection; retries while the server is still opening its database.
    pub async fn client(&self) -> Client {
        for _ in 0..100 {
            if let Ok(channel) = self.endpoint().connect().await {
                return UserServiceClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server at {} did not come up", self.addr);
    }
}

pub fn create_request(name: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest { name: name.into(), email: email.into(), password: "s3cret-passw0rd".into(), roles: vec![] }
}

pub async fn create(client: &mut Client, name: &str, email: &str) -> User {
    client.create_user(create_request(name, email)).await.expect("create user").into_inner()
}

/// The google.rpc.BadRequest field violations of a status, as (field, description) pairs.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| (v.field, v.description)).collect())
        .unwrap_or_default()
}

pub mod dnsmasq;
pub mod echo;
pub mod jwt;
pub mod metrics;
pub mod nats;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod python;
pub mod replicas;
pub mod rest;

/// A UserService with the gateway in front of it, both on 127.0.0.1:0 in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub upstream: TestServer,
    pub shutdown: CancellationToken,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_gateway() -> TestGateway {
    start_gateway_with(|_| {}).await
}

pub async fn start_gateway_with(adjust: impl FnOnce(&mut portico::gateway::GatewayConfig)) -> TestGateway {
    let upstream = start().await;
    let _ = upstream.client().await; // the UserService is up
    let mut config =
        portico::gateway::GatewayConfig { upstreams: vec![format!("http://{}", upstream.addr)], ..Default::default() };
    adjust(&mut config);
    let (addr, shutdown) = spawn_gateway(config).await;
    TestGateway { addr, upstream, shutdown }
}

/// Runs a gateway with `config` on 127.0.0.1:0 in this process; cancel the token to stop it.
pub async fn spawn_gateway(config: portico::gateway::GatewayConfig) -> (SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let router = portico::gateway::start(&portico::proto::DESCRIPTOR_POOL, config.clone(), shutdown.clone())
        .await
        .expect("gateway router")
        .public;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let token = shutdown.clone();
    tokio::spawn(
        async move { portico::gateway::serve(listener, router, &config, token).await.expect("workers start") },
    );
    (addr, shutdown)
}
