//! Log lines to stderr (through the batching sink of `log_sink.rs`), as text or JSON. A request's lines carry
//! its span's fields, `trace_id` among them when tracing is on, so a line leads to its trace; the gateway's
//! request line itself is formatted by `access_log.rs` in the same format.

use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::{access_log, log_sink};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The formatting layer for `format`.
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    // Colours only for a person at a terminal; files and log shippers get plain text.
    let ansi = std::io::stderr().is_terminal();
    access_log::configure(format, ansi);
    let fmt = tracing_subscriber::fmt::layer().with_writer(log_sink::MakeSinkWriter).with_ansi(ansi);
    match format {
        LogFormat::Text => fmt.boxed(),
        // The current span and its parents go with each event, so every line of a request has its trace id.
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(true).boxed(),
    }
}
