//! The watchers: raw HTTP/1.1 keep-alive connections on `GET /v1/users:watch`, as a new user's script or a
//! fleet of browsers opens them, each reading its stream and reporting when it is open and when each created
//! event arrives.
//!
//! A watcher is open once its first event, the watch's SNAPSHOT_COMPLETE, has arrived: by then the gateway
//! holds the client connection, the rendering stream and the upstream HTTP/2 stream, and the UserService
//! holds its watcher. Events are recognised by the type name in their line, which is the same in SSE
//! (`data: {…}`) and NDJSON (`{"result": {…}}`); chunked framing puts each chunk size on a line of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

/// How the watchers ask for their stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `Accept: text/event-stream`
    Sse,
    /// No Accept header: NDJSON lines.
    Ndjson,
}

/// What a watcher tells the benchmark.
#[derive(Debug)]
pub enum Report {
    /// The stream is open (SNAPSHOT_COMPLETE arrived).
    Open,
    /// The stream could not be opened.
    Failed(String),
    /// The `ordinal`-th CREATED event (0-based) arrived at `at`.
    Created { ordinal: usize, at: Instant },
}

/// Where the watchers connect, and the request they send.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    pub addr: SocketAddr,
    pub request: Arc<[u8]>,
    /// The longest wait for a stream to open.
    pub open_timeout: Duration,
}

impl WatchTarget {
    pub fn new(addr: SocketAddr, format: Format, open_timeout: Duration) -> Self {
        let accept = match format {
            Format::Sse => "Accept: text/event-stream\r\n",
            Format::Ndjson => "",
        };
        let request = format!("GET /v1/users:watch HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n");
        Self { addr, request: request.into_bytes().into(), open_timeout }
    }
}

const SNAPSHOT_COMPLETE: &[u8] = b"USER_EVENT_TYPE_SNAPSHOT_COMPLETE";
const CREATED: &[u8] = b"USER_EVENT_TYPE_CREATED";

/// One watcher: waits for a slot in `opening` (which bounds the connections being opened at once, so the
/// accept backlog is never overrun), opens its stream, frees the slot, then reports events until the
/// connection ends or the task is aborted.
pub async fn watch(target: WatchTarget, opening: Arc<Semaphore>, reports: mpsc::UnboundedSender<Report>) {
    let Ok(slot) = opening.acquire_owned().await else { return };
    let opened = tokio::time::timeout(target.open_timeout, open(&target)).await;
    let (mut stream, mut lines) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(error)) => return drop(reports.send(Report::Failed(error))),
        Err(_) => return drop(reports.send(Report::Failed(format!("not open within {:?}", target.open_timeout)))),
    };
    drop(slot);
    let _ = reports.send(Report::Open);
    let mut ordinal = 0;
    let mut buffer = [0u8; 2048];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let at = Instant::now();
        for line in lines.push(&buffer[..read]) {
            if contains(&line, CREATED) {
                let _ = reports.send(Report::Created { ordinal, at });
                ordinal += 1;
            }
        }
    }
}

/// Connects, sends the request, checks the status and reads up to the SNAPSHOT_COMPLETE event.
async fn open(target: &WatchTarget) -> Result<(TcpStream, Lines), String> {
    let mut stream = TcpStream::connect(target.addr).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    stream.write_all(&target.request).await.map_err(|e| format!("write: {e}"))?;
    let mut lines = Lines::default();
    let mut status_checked = false;
    let mut buffer = [0u8; 2048];
    loop {
        let read = stream.read(&mut buffer).await.map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err("the gateway closed the connection before the snapshot was complete".into());
        }
        for line in lines.push(&buffer[..read]) {
            if !status_checked {
                let status = String::from_utf8_lossy(&line).trim().to_string();
                if !status.starts_with("HTTP/1.1 200") {
                    return Err(format!("answered {status:?}"));
                }
                status_checked = true;
            } else if contains(&line, SNAPSHOT_COMPLETE) {
                return Ok((stream, lines));
            }
        }
    }
}

/// Splits a byte stream into lines, keeping an incomplete last line for the next read.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.partial.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            lines.push(std::mem::replace(&mut self.partial, rest));
        }
        lines
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
