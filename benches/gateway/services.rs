//! The outside servers of the PostgreSQL phase: a database the benchmark creates and drops, and a NATS server
//! with JetStream that it starts on a free port and stops.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::BoxError;

/// A database that exists while this value does; dropped `WITH (FORCE)`, which also ends the connections the
/// servers still hold.
pub struct BenchDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl BenchDatabase {
    /// Creates `portico_bench_<pid>_<nanos>` on the server of `admin_url`. Fails when the server cannot be
    /// reached or refuses.
    pub async fn create(admin_url: &str) -> Result<Self, BoxError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
        let name = format!("portico_bench_{}_{nanos}", std::process::id());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .map_err(|e| format!("PostgreSQL is not reachable at {admin_url}: {e}"))?;
        // Digits and this prefix only: quoting is enough.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await?;
        admin.close().await?;
        Ok(Self { url: url_for(admin_url, &name)?, name, admin_url: admin_url.to_owned() })
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        // Drop runs inside the benchmark's runtime, which must not block: a thread with a runtime of its own can.
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await?;
                admin.close().await
            })?;
            Ok::<_, BoxError>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("gateway bench: could not drop database {}; drop it by hand", self.name);
        }
    }
}

/// `admin_url` with its database path replaced by `database`.
fn url_for(admin_url: &str, database: &str) -> Result<String, BoxError> {
    let (base, query) = admin_url.split_once('?').map_or((admin_url, None), |(base, query)| (base, Some(query)));
    let authority = base.find("://").map(|scheme| scheme + 3).ok_or("the PostgreSQL URL has no scheme")?;
    let path = base[authority..].find('/').map_or(base.len(), |slash| authority + slash);
    let mut url = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

/// A `nats-server -js` child process, killed on drop.
pub struct NatsServer {
    pub url: String,
    child: Child,
}

impl NatsServer {
    /// Starts `binary` (or, if that is not found, /usr/sbin/nats-server, where Debian puts it) on a free port of
    /// 127.0.0.1 with its store in `dir`, and waits until it accepts connections. `Ok(None)` when there is no
    /// such binary.
    pub async fn start(binary: &str, dir: &Path) -> Result<Option<Self>, BoxError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let spawn = |binary: &str| {
            Command::new(binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = match spawn(binary) {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => match spawn("/usr/sbin/nats-server") {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(error.into()),
            },
            Err(error) => return Err(error.into()),
        };
        let server = Self { url: format!("nats://127.0.0.1:{port}"), child };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("nats-server did not listen on {addr} within 10 s").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(server))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
