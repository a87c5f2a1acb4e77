//! A minimal HTTP/1.1 client for tests: one connection per request, over hyper's connection API.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and returns the response head with its body still streaming.
pub async fn open(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<http::Response<Incoming>, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into()))?;
    Ok(sender.send_request(request).await?)
}

/// Sends one request and reads the whole response (within 30 s).
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, Error> {
    let response = open(addr, method, path, headers, body).await?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect()).await??.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, Error> {
    send(addr, Method::GET, path, &[], Bytes::new()).await
}

pub async fn post_json(addr: SocketAddr, path: &str, json: &serde_json::Value) -> Result<Reply, Error> {
    send(addr, Method::POST, path, &[("content-type", "application/json")], json.to_string()).await
}

/// Reads a streaming body line by line.
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn new(body: Incoming) -> Self {
        Self { body, buffer: Vec::new() }
    }

    /// The next line (without its newline), `None` at the end of the body; fails after 10 s of silence.
    pub async fn next(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r').to_string()));
            }
            match tokio::time::timeout(Duration::from_secs(10), self.body.frame()).await? {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                None if self.buffer.is_empty() => return Ok(None),
                None => return Ok(Some(String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).into_owned())),
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Parses SSE from a line reader; comment lines (keep-alives) are counted, not returned.
pub struct Events {
    pub lines: Lines,
    pub comments: usize,
}

impl Events {
    pub fn new(body: Incoming) -> Self {
        Self { lines: Lines::new(body), comments: 0 }
    }

    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        let mut event = Event::default();
        let mut has_fields = false;
        while let Some(line) = self.lines.next().await? {
            if line.is_empty() {
                if has_fields {
                    return Ok(Some(event));
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            has_fields = true;
            let (field, value) =
                line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((&line, ""));
            match field {
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                "id" => event.id = Some(value.to_string()),
                "event" => event.event = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(if has_fields { Some(event) } else { None })
    }
}
