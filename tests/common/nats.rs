//! A NATS server with JetStream that a test starts on a free port, in a directory of its own, and stops when
//! the value is dropped; optionally with a config of the test's own (users, TLS), and with a CA and
//! certificates made for it by the `openssl` command. Uses `nats-server` from PATH (or /usr/sbin), or the
//! binary `NATS_SERVER` names.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use portico::user_service::relay::DEFAULT_STREAM;
use tempfile::TempDir;

type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct NatsServer {
    pub url: String,
    pub port: u16,
    child: Child,
    dir: TempDir,
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
        Self::start_configured(port, tempfile::tempdir().expect("temp dir"), "").await
    }

    /// Starts a server on a free port with `extra` added to its config file (e.g. an `authorization` or `tls`
    /// block), in `dir` (where the test may have put certificates).
    pub async fn start_configured(port: u16, dir: TempDir, extra: &str) -> Self {
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            dir.path().join("jetstream").display()
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config).expect("write nats.conf");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start nats-server ({error}); install Debian's nats-server or set NATS_SERVER")
            });
        let server = Self { url: format!("nats://127.0.0.1:{port}"), port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with the
/// `openssl` command.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let output = Command::new("openssl").current_dir(dir).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into())
    }
}

impl Certificates {
    /// Makes the CA and both certificates in `dir` (P-256 keys, valid for a day).
    pub fn generate(dir: &Path) -> Result<Self, Error> {
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca = ["req", "-x509", "-days", "1", "-subj", "/CN=portico test CA", "-keyout", "ca.key", "-out", "ca.pem"];
        let ca_extensions =
            ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"];
        openssl(dir, &[&ca[..], &key[..], &ca_extensions[..]].concat())?;
        for (name, extensions) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (csr, pem, keyfile, ext) =
                (format!("{name}.csr"), format!("{name}.pem"), format!("{name}.key"), format!("{name}.ext"));
            std::fs::write(dir.join(&ext), extensions)?;
            let subject = format!("/CN={name}");
            openssl(dir, &[&["req", "-subj", &subject, "-keyout", &keyfile, "-out", &csr][..], &key[..]].concat())?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-extfile",
                    &ext,
                    "-out",
                    &pem,
                ],
            )?;
        }
        Ok(Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }
}

/// One message of the user events stream: subject, `Nats-Msg-Id`, the relay's backlog header, payload.
#[derive(Debug)]
pub struct Published {
    pub subject: String,
    pub message_id: String,
    pub backlog: Option<u64>,
    pub event: serde_json::Value,
}

/// Reads the first `count` messages of the default stream (waiting for the stream to exist and fill up), and
/// fails if a message more follows within half a second: a duplicate would show up there.
pub async fn read_stream(nats_url: &str, count: usize) -> Result<Vec<Published>, Error> {
    read_stream_of(async_nats::connect(nats_url).await?, DEFAULT_STREAM, count).await
}

/// As [`read_stream`], through `options` (credentials, TLS) and from `stream`.
pub async fn read_stream_with(
    options: ConnectOptions,
    nats_url: &str,
    stream: &str,
    count: usize,
) -> Result<Vec<Published>, Error> {
    read_stream_of(options.connect(nats_url).await?, stream, count).await
}

async fn read_stream_of(client: async_nats::Client, stream: &str, count: usize) -> Result<Vec<Published>, Error> {
    let jetstream = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match jetstream.get_stream(stream).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => return Err(format!("the relay never created the stream {stream}: {error}").into()),
        }
    };
    let mut messages = stream.create_consumer(consumer::pull::OrderedConfig::default()).await?.messages().await?;
    let mut published = Vec::new();
    while published.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .map_err(|_| format!("only {} of {count} messages arrived within 20 s: {published:#?}", published.len()))?;
        let message = next.ok_or("stream ended")??;
        let header =
            |name: &str| message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.to_string());
        published.push(Published {
            subject: message.subject.to_string(),
            message_id: header("Nats-Msg-Id").unwrap_or_default(),
            backlog: header("Portico-Backlog").and_then(|value| value.parse().ok()),
            event: serde_json::from_slice(&message.payload)?,
        });
    }
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        return Err(format!("an extra message: {:?}", extra.map(|m| m.payload.clone())).into());
    }
    Ok(published)
}
