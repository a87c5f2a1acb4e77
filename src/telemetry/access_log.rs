//! The gateway's request log line, one per request, formatted straight into the log sink.
//!
//! It reads like the other log lines (the same timestamp, level and target, text or JSON as `--log-format`
//! says, filtered by `RUST_LOG` under the `portico::gateway` target), but it is not a `tracing` event: an event
//! inside a per-request span costs a span in the registry, its fields formatted into a string, an enter and an
//! exit on every poll, and the event's own formatting, about a fifth of what the gateway spends on a small
//! request. Here a request keeps a few values it already has and formats them once, with no allocation but the
//! thread's reused line buffer; the sink writes lines in batches, off the request path.
//!
//! Text: `2026-11-30T10:13:16.807239Z  INFO portico::gateway: request method=GET path=/v1/users/7 status=200
//! duration_ms=0.412 rpc=user.UserService.GetUser request_id=… [trace_id=…]`.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digits::decimal;
use crate::telemetry::LogFormat;
use crate::telemetry::log_sink;

/// The target the line is filtered under.
pub const TARGET: &str = "portico::gateway";

struct Style {
    format: LogFormat,
    ansi: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Sets the line's format (once, when logging is set up).
pub(crate) fn configure(format: LogFormat, ansi: bool) {
    let _ = STYLE.set(Style { format, ansi });
}

/// Whether the request line is wanted: `RUST_LOG` lets `portico::gateway` through at info.
pub fn enabled() -> bool {
    STYLE.get().is_some() && tracing::enabled!(target: "portico::gateway", tracing::Level::INFO)
}

/// What the line says about one request.
#[derive(Debug)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// `package.Service.Method`, or `-` when no route matched.
    pub rpc: &'a str,
    pub request_id: Option<&'a [u8]>,
    pub trace_id: Option<&'a str>,
}

/// Formats `line` and hands it to the sink.
pub fn write(line: &RequestLine<'_>) {
    let Some(style) = STYLE.get() else { return };
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        match style.format {
            LogFormat::Text => format_text(buffer, now, line, style.ansi),
            LogFormat::Json => format_json(buffer, now, line),
        }
        log_sink::global().append(buffer, false);
    });
}

fn format_text(out: &mut Vec<u8>, now: Duration, line: &RequestLine<'_>, ansi: bool) {
    let (dim, green, reset) = if ansi { ("\x1b[2m", "\x1b[32m", "\x1b[0m") } else { ("", "", "") };
    out.extend_from_slice(dim.as_bytes());
    timestamp(out, now);
    for piece in
        [reset, " ", green, " INFO", reset, " ", dim, TARGET, ":", reset, " request method=", line.method, " path="]
    {
        out.extend_from_slice(piece.as_bytes());
    }
    // Paths are visible ASCII (hyper refuses anything else), so they need no quoting in a text line.
    out.extend_from_slice(line.path.as_bytes());
    out.extend_from_slice(b" status=");
    decimal(out, u64::from(line.status), 1);
    out.extend_from_slice(b" duration_ms=");
    milliseconds(out, line.duration);
    out.extend_from_slice(b" rpc=");
    out.extend_from_slice(line.rpc.as_bytes());
    if let Some(id) = line.request_id {
        out.extend_from_slice(b" request_id=");
        // A client may send its own id: anything but visible ASCII is replaced, so it cannot forge lines.
        out.extend(id.iter().map(|&b| if b.is_ascii_graphic() { b } else { b'?' }));
    }
    if let Some(trace_id) = line.trace_id {
        out.extend_from_slice(b" trace_id=");
        out.extend_from_slice(trace_id.as_bytes());
    }
    out.push(b'\n');
}

fn format_json(out: &mut Vec<u8>, now: Duration, line: &RequestLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_string(out, line.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_string(out, line.path.as_bytes());
    out.extend_from_slice(b",\"status\":");
    decimal(out, u64::from(line.status), 1);
    out.extend_from_slice(b",\"duration_ms\":");
    milliseconds(out, line.duration);
    out.extend_from_slice(b",\"rpc\":");
    json_string(out, line.rpc.as_bytes());
    if let Some(id) = line.request_id {
        out.extend_from_slice(b",\"request_id\":");
        json_string(out, id);
    }
    if let Some(trace_id) = line.trace_id {
        out.extend_from_slice(b",\"trace_id\":");
        json_string(out, trace_id.as_bytes());
    }
    for piece in [",\"target\":\"", TARGET, "\"}\n"] {
        out.extend_from_slice(piece.as_bytes());
    }
}

/// RFC 3339 in UTC with microseconds, as the other log lines print it: `2026-11-30T10:13:16.807239Z`.
///
/// The numbers are written digit by digit (`digits.rs`): through `write!`'s padded formatting, the line's
/// numbers were about 3k instructions of the gateway's ~118k per request.
fn timestamp(out: &mut Vec<u8>, since_epoch: Duration) {
    crate::civil_date::write_date_time(out, i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX));
    out.push(b'.');
    decimal(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push(b'Z');
}

/// Milliseconds with three decimals (microsecond precision): `12.345`.
fn milliseconds(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    decimal(out, micros / 1000, 1);
    out.push(b'.');
    decimal(out, micros % 1000, 3);
}

/// A JSON string of bytes that are text (anything that is not UTF-8 replaced), escaped by serde_json.
fn json_string(out: &mut Vec<u8>, text: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ =
        serde::Serializer::serialize_str(&mut serde_json::Serializer::new(&mut *out), &String::from_utf8_lossy(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> RequestLine<'static> {
        RequestLine {
            method: "GET",
            path: "/v1/users/7",
            status: 200,
            duration: Duration::from_micros(12_345),
            rpc: "user.UserService.GetUser",
            request_id: Some(b"id\x01\"x"),
            trace_id: None,
        }
    }

    #[test]
    fn text_lines_read_like_the_other_log_lines() {
        let mut out = Vec::new();
        format_text(&mut out, Duration::new(1_796_034_796, 807_239_123), &line(), false);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "2026-11-30T10:33:16.807239Z  INFO portico::gateway: request method=GET path=/v1/users/7 status=200 \
             duration_ms=12.345 rpc=user.UserService.GetUser request_id=id?\"x\n"
        );
    }

    #[test]
    fn durations_keep_three_decimals() {
        let mut out = Vec::new();
        milliseconds(&mut out, Duration::from_micros(1_000_007));
        assert_eq!(out, b"1000.007");
    }

    #[test]
    fn json_lines_are_json_objects() -> Result<(), serde_json::Error> {
        let mut out = Vec::new();
        let mut line = line();
        line.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736");
        format_json(&mut out, Duration::new(1_796_034_796, 0), &line);
        let record: serde_json::Value = serde_json::from_slice(&out)?;
        assert_eq!(record["timestamp"], "2026-11-30T10:33:16.000000Z");
        assert_eq!(record["status"], 200);
        assert_eq!(record["duration_ms"], 12.345);
        assert_eq!(record["request_id"], "id\u{1}\"x");
        assert_eq!(record["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(record["target"], "portico::gateway");
        assert!(out.ends_with(b"}\n"));
        Ok(())
    }
}
