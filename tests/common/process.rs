//! Runs the real `portico` binary as a child process and collects what it logs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags for test servers: cheap password hashes and a short drain.
pub const FAST_FLAGS: [&str; 6] =
    ["--password-hash-memory-kib", "64", "--password-hash-iterations", "1", "--drain-timeout", "5s"];

/// A `portico` child process and every line it wrote to stderr.
pub struct Process {
    pub child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `portico args…` with `RUST_LOG=log_level` (plain-text logs unless args say otherwise).
    pub fn start(args: &[&str], log_level: &str) -> Result<Self, Error> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(args)
            .env("RUST_LOG", log_level)
            .env_remove("PORTICO_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("stderr is piped")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = collected.lock() {
                    lines.push(line);
                }
            }
        });
        Ok(Self { child, logs })
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|lines| lines.clone()).unwrap_or_default()
    }

    /// Waits until a log line satisfies `matches`, and returns it.
    pub async fn wait_for_line(&self, matches: impl Fn(&str) -> bool, limit: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.logs().into_iter().find(|line| matches(line)) {
                return Ok(line);
            }
            if Instant::now() > deadline {
                return Err(format!("no matching log line within {limit:?}; logs: {:#?}", self.logs()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `addr=` of the first text log line containing `message`.
    pub async fn address(&self, message: &str) -> Result<std::net::SocketAddr, Error> {
        let line = self
            .wait_for_line(
                |line| line.contains(message) && (line.contains("addr=") || line.contains("\"addr\":")),
                Duration::from_secs(30),
            )
            .await?;
        // A text line (`addr=127.0.0.1:4000`) or a JSON one (`"addr":"127.0.0.1:4000"`).
        if let Ok(record) = serde_json::from_str::<serde_json::Value>(line.trim()) {
            return Ok(record["addr"].as_str().ok_or("addr field")?.parse()?);
        }
        let addr = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).ok_or("addr field")?;
        Ok(addr.trim_matches('"').parse()?)
    }

    pub fn terminate(&self) -> Result<(), Error> {
        self.signal("-TERM")
    }

    /// Sends `signal` (e.g. "-STOP") with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status()?;
        if status.success() { Ok(()) } else { Err(format!("kill {signal} failed").into()) }
    }

    /// Waits for the process to exit within `limit`. Async, so the test's own connections keep running and
    /// can answer the server's graceful-close handshake.
    pub async fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("the process did not exit within {limit:?}; logs: {:#?}", self.logs()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
