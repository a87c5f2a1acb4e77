//! A NATS server with JetStream that a test starts on a free port, in a directory of its own, and stops when
//! the value is dropped. Uses `nats-server` from PATH (or /usr/sbin), or the binary `NATS_SERVER` names.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use portico::user_service::relay::STREAM;
use tempfile::TempDir;

type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct NatsServer {
    pub url: String,
    child: Child,
    _dir: TempDir,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn binary() -> String {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return path;
    }
    let on_path = Command::new("nats-server").arg("--version").stdout(Stdio::null()).status().is_ok();
    if on_path { "nats-server".into() } else { "/usr/sbin/nats-server".into() }
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port` and waits until it accepts connections.
    pub async fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start nats-server ({error}); install Debian's nats-server or set NATS_SERVER")
            });
        let server = Self { url: format!("nats://127.0.0.1:{port}"), child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message of the user events stream: subject, `Nats-Msg-Id`, payload.
#[derive(Debug)]
pub struct Published {
    pub subject: String,
    pub message_id: String,
    pub event: serde_json::Value,
}

/// Reads the first `count` messages of the stream (waiting for the stream to exist and fill up), and fails if
/// a message more follows within half a second: a duplicate would show up there.
pub async fn read_stream(nats_url: &str, count: usize) -> Result<Vec<Published>, Error> {
    let jetstream = jetstream::new(async_nats::connect(nats_url).await?);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match jetstream.get_stream(STREAM).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => return Err(format!("the relay never created the stream: {error}").into()),
        }
    };
    let mut messages = stream.create_consumer(consumer::pull::OrderedConfig::default()).await?.messages().await?;
    let mut published = Vec::new();
    while published.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .map_err(|_| format!("only {} of {count} messages arrived within 20 s: {published:#?}", published.len()))?;
        let message = next.ok_or("stream ended")??;
        let message_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .map(|id| id.to_string())
            .unwrap_or_default();
        published.push(Published {
            subject: message.subject.to_string(),
            message_id,
            event: serde_json::from_slice(&message.payload)?,
        });
    }
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        return Err(format!("an extra message: {:?}", extra.map(|m| m.payload.clone())).into());
    }
    Ok(published)
}
