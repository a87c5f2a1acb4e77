//! Throwaway PostgreSQL databases: one per test, with a unique name, dropped `WITH (FORCE)` when the guard is
//! dropped, which also happens when the test panics. Tests therefore run in parallel and leave nothing behind.
//!
//! The server is the one at `PORTICO_TEST_POSTGRES` (an admin URL), by default
//! `postgres://root@127.0.0.1:5432/postgres` (trust auth). Without a reachable server the test fails and says
//! how to start one; it is never skipped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

const DEFAULT_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";
const HOW_TO_START: &str = "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                            (trust auth for 127.0.0.1), or point PORTICO_TEST_POSTGRES at an admin URL";

/// A database that exists while this value does.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connects to this database.
    pub url: String,
    name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("PORTICO_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `admin_url` with its database path replaced by `database`.
fn url_for(admin_url: &str, database: &str) -> String {
    let (base, query) = admin_url.split_once('?').map_or((admin_url, None), |(base, query)| (base, Some(query)));
    let authority_end = base.find("://").map_or(0, |scheme| scheme + 3);
    let path_start = base[authority_end..].find('/').map_or(base.len(), |slash| authority_end + slash);
    let mut url = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    match PgConnection::connect(admin_url).await {
        Ok(connection) => connection,
        Err(error) => panic!("PostgreSQL is not reachable at {admin_url}: {error}; {HOW_TO_START}"),
    }
}

impl TestDatabase {
    /// Creates a new, empty database. Panics (failing the test) when the server cannot be reached.
    pub async fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
        let name = format!("portico_test_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin_url = admin_url();
        let mut admin = admin_connection(&admin_url).await;
        // The name is made of digits and this prefix only, so quoting it is enough.
        let create = format!("CREATE DATABASE \"{name}\"");
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await {
            panic!("cannot create test database {name}: {error}");
        }
        let _ = admin.close().await;
        Self { url: url_for(&admin_url, &name), name, admin_url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime (which must not block) or while panicking: a thread with a runtime of
        // its own can always wait for the drop to finish. FORCE ends the connections a server still holds.
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await?;
                admin.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cannot drop test database {}: {error}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}
